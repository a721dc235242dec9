"""Variable-step linear multistep (Adams-Bashforth) sampler on the noise prediction, order 1-4,
with weights from the actual steps of the grid (k-diffusion's ``sample_lms`` generalised).

In ``y = x/alpha`` and ``s = sigma/alpha = e^{-lambda}`` the probability-flow ODE of every process
is ``dy/ds = eps_theta(alpha y, t(s))`` (:mod:`sdediff.bench.problems`). Step ``i`` from ``s_i`` to
``s_{i+1}`` replaces ``eps`` by the Lagrange polynomial through the last ``p`` predictions
``eps_i, eps_{i-1}, ..., eps_{i-p+1}`` at their own grid points and integrates it exactly:

    y_{i+1} = y_i + int_{s_i}^{s_{i+1}} P(s) ds,
    x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} sum_j c_{ij} eps_{i-j}.

With the nodes ``r_j = (u_{i-j} - u_i)/h`` of the interpolation variable ``u`` in units of the step
``h = u_{i+1} - u_i`` (``r_0 = 0``, the history ``r_j < 0``), the weights ``w`` solve the moment
equations ``sum_j r_j^k w_j = g_k``, ``k < p`` (:func:`~sdediff.samplers.expint.weights_from_moments`),
so the step integrates every polynomial of degree ``< p`` in ``u`` exactly, whatever the step ratios.
``variable`` chooses ``u``:

- ``"logsnr"`` (default): ``u = lambda = -log s``. Then ``ds = -e^{-lambda} d lambda`` and the
  weight ``e^{-lambda}`` is integrated exactly (an exponential integrator of the noise prediction,
  DPM-Solver's ``eps`` form, generalised to order 4 with varying step ratios):
  ``g_k = int_0^h e^{-tau} (tau/h)^k dtau = k! h e^{-h} phi_{k+1}(h)`` (:func:`noise_moments`) and
  ``c_j = -s_i w_j``;
- ``"sigma"``: ``u = s``, ``g_k = int_0^1 v^k dv = 1/(k + 1)`` and ``c_j = (s_{i+1} - s_i) w_j``:
  exactly k-diffusion's ``sample_lms``, whose ``linear_multistep_coeff`` integrates the same
  Lagrange basis by ``scipy.integrate.quad``: with ``order=4, lower_order_final=False`` on
  k-diffusion's ``karras`` grid the endpoints agree with k-diffusion 0.1.1's to 1e-12.

Order 1 in either variable is DDIM (``c_0 = s_{i+1} - s_i``). Warm-up: step ``i`` has order
``min(order, i + 1)``. ``lower_order_final`` (default on) runs the last ``order - 1`` steps one
order lower (:func:`step_orders`): the final steps of the default grid are its largest in
log-SNR, where extrapolating four predictions is unstable at few steps, and ``order - 1`` (local
error ``O(h^order)``) keeps the global order, where lowering to 1 as ``dpm_solver++`` and
``unipc`` do would cap it at 2 for the noise prediction (which, unlike ``x0``, still moves at
``t_end``). Unlike ``ipndm``'s constant-step weights (first order on a grid whose steps alternate
``h, 2h``, second order on smooth non-uniform grids), these weights keep the order on any grid.

**Defaults, by measurement**: RMS error to the exact probability-flow endpoint on ``gmm2d`` and
``gmm64`` (:mod:`sdediff.bench.problems`; 256 prior draws, seed 0, float64, ``t_end = 1e-3``,
``denoise=False``), at 10 / 20 / 50 NFE:

- noise prediction polynomial in ``lambda`` (this sampler), against the same in ``s``
  (k-diffusion's) and against the exponential integrator of the data prediction (DPM-Solver++
  generalised to order 4): over the 6 (problem, NFE) points, the geometric-mean error of each
  formulation's best order, grid and final steps (full order or first order) is 1.1e-2,
  1.8e-2 and 1.8e-2;
- ``order=3`` and grid ``auto`` (``quadratic`` on VP): the lowest score over gmm2d, gmm64 and
  the digits model at 5, 10 and 20 NFE (``benchmarks/bench_defaults.py``: 1.80, against 2.14 for
  order 4 on the same grid); ``order=4`` is the most accurate at 50 NFE (order 3: 7.7e-4 and
  4.4e-3 against 1.0e-4 and 2.0e-3), so pass it for budgets of 50 and more;
- grids, order 4: at 20 / 50 NFE ``quadratic`` gives gmm2d 1.0e-2 / 1.0e-4 and gmm64
  2.8e-2 / 2.0e-3; ``logsnr`` 9.4e-3 / 6.4e-4 and 3.1e-2 / 5.2e-3, ``karras`` 1.9e-2 / 1.3e-3 and
  0.15 / 5.2e-3. On ``uniform`` (``t``) the last step is ~4x the one before in log-SNR and order
  4 is unstable at few steps (gmm2d 0.50 at 10 NFE): use ``order <= 3`` or another grid there;
- ``lower_order_final=True``: gmm2d 2.6e-2 / 1.0e-2 / 1.0e-4 and gmm64 0.57 / 2.8e-2 / 2.0e-3;
  without lowering 0.11 / 4.8e-3 / 8.2e-5 and 1.0 / 1.9e-2 / 2.0e-3 (unstable at 10 NFE);
  lowering to first order 3.8e-2 / 8.6e-3 / 1.8e-4 and 0.59 / 2.0e-2 / 2.1e-3.

Against the other samplers' defaults and k-diffusion's LMS: ``benchmarks/results/fast_solvers.md``
(``docs/fast_solvers.md``).

Order: ``order`` on the ``logsnr`` grid on the VP, cosine VP and VE processes
(``tests/test_lms.py``: 1-3 within 0.3; for order 4 the error falls faster than ``h^4`` before it
settles, local slopes 3.9, 4.5, 4.4, 4.2 from 20 to 640 steps). On the ``quadratic`` grid the
order shows later (3.5 on the VP from 40-320 steps), and on the cosine VP, whose ``lambda(t)`` is
singular at ``T``, it stays near 2 for orders 2-4 up to 160 steps. One network call per
step, the first at ``T``. ``x``: ``(B, ...)``, any dtype; coefficients float64. The update holds
for either direction of time, so the sampler also encodes.
"""

from __future__ import annotations

import math

from ..checks import check_bool, check_choice, check_int
from . import register
from .base import Sampler
from .expint import phi, weights_from_moments

#: The variable in which the noise predictions are interpolated (module docstring).
VARIABLES = ("logsnr", "sigma")
#: Highest order: four predictions (classical AB4, as k-diffusion's and diffusers' LMS).
MAX_ORDER = 4


def noise_moments(h: float, p: int) -> list[float]:
    """``g_k = int_0^h e^{-tau} (tau/h)^k dtau = k! h e^{-h} phi_{k+1}(h)``, ``k = 0 .. p - 1``:
    the moments of ``int e^{-lambda} eps d lambda`` over a log-SNR step ``h`` (either sign;
    ``g_0 = 1 - e^{-h}``). From ``phi_{k+1}(h) = int_0^1 e^{(1 - v) h} v^k dv / k!``."""
    return [math.factorial(k) * h * math.exp(-h) * phi(k + 1, h) for k in range(p)]


def lms_weights(h: float, r, variable: str) -> list[float]:
    """Weights ``w`` on ``eps_i, eps_{i-1}, ...`` for a step ``h`` of the interpolation variable
    with history nodes ``r`` (``r[0] = 0``, ``r[j] = (u_{i-j} - u_i)/h``): the step integrates
    ``int_0^h K(tau) P(tau) dtau = sum_j w_j P(r_j h)`` for every polynomial ``P`` of degree
    ``< len(r)``, with the kernel ``K = e^{-tau}`` for ``logsnr`` and ``K = 1/h`` for ``sigma``."""
    check_choice("variable", variable, VARIABLES)
    p = len(r)
    g = noise_moments(h, p) if variable == "logsnr" else [1.0 / (k + 1) for k in range(p)]
    return weights_from_moments(r, g)


def step_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each step: warm-up ``min(order, i + 1)`` (only ``i + 1`` predictions exist) and,
    with ``lower_order_final``, also ``<= max(order - 1, steps - i)``: the last ``order - 1``
    steps one order lower. A bounded number of steps of order ``order - 1`` (local error
    ``O(h^order)``) keeps the global order ``order``; lowering to 1 as
    :func:`~sdediff.samplers.expint.step_orders` does for ``dpm_solver++`` and ``unipc`` would
    cap it at 2 for the noise prediction (module docstring)."""
    check_int("steps", steps, minimum=1)
    floor = max(order - 1, 1)
    return [min(order, i + 1, max(floor, steps - i) if lower_order_final else order)
            for i in range(steps)]


def lms_coefficients(sde, ts, order: int, variable: str, lower_order_final: bool):
    """Per step ``i``: ``(a_i, [c_0, c_1, ...])`` as float64 numbers with
    ``x_{i+1} = a_i x_i + sum_j c_j eps_{i-j}``."""
    s = sde.sigma_over_alpha(ts).tolist()                       # s_i = sigma_i / alpha_i
    alpha = sde.alpha(ts).tolist()
    u = sde.log_snr(ts).tolist() if variable == "logsnr" else s
    coefficients = []
    for i, p in enumerate(step_orders(len(u) - 1, order, lower_order_final)):
        h = u[i + 1] - u[i]
        r = [(u[i - j] - u[i]) / h for j in range(p)]
        # int_{s_i}^{s_{i+1}} ds = -s_i int_0^h e^{-tau} dtau (logsnr) or h int_0^1 dv (sigma)
        scale = -s[i] if variable == "logsnr" else h
        w = lms_weights(h, r, variable)
        coefficients.append((alpha[i + 1] / alpha[i], [alpha[i + 1] * scale * w_j for w_j in w]))
    return coefficients


@register("lms")
class LMS(Sampler):
    family = "lms"
    reversible = True            # the update holds for either direction of time: encodes
    order = 3                     # of the default; instances declare their own
    default_steps = 20
    defaults = {"schedule": "auto", "order": 3, "variable": "logsnr",
                "lower_order_final": True}

    def __init__(self, **options):
        super().__init__(**options)
        self.order = self.options["order"]

    def check_options(self):
        check_int("order", self.options["order"], minimum=1, maximum=MAX_ORDER)
        check_choice("variable", self.options["variable"], VARIABLES)
        check_bool("lower_order_final", self.options["lower_order_final"])

    def run(self, model, x, ts, noise, observe):
        coefficients = lms_coefficients(model.sde, ts, self.options["order"],
                                        self.options["variable"],
                                        self.options["lower_order_final"])
        keep = self.options["order"]
        eps = []                                            # eps_i, eps_{i-1}, ... newest first
        for i, (a, c) in enumerate(coefficients):
            eps = ([model.eps(x, ts[i])] + eps)[:keep]      # eps_i = eps_theta(x_i, t_i)
            x = a * x                                       # (alpha_{i+1}/alpha_i) x_i
            for c_j, e_j in zip(c, eps, strict=False):      # + sum_j c_j eps_{i-j}; len(c) <= len(eps)
                x = x.add(e_j, alpha=c_j)                   # one fused op per term, no temporary
            observe(i + 1, x)
        return x

"""Adaptive-step DPM-Solver-12 / DPM-Solver-23 (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver
for Diffusion Probabilistic Model Sampling in Around 10 Steps", section 4 and Algorithm 4),
written with the data prediction of DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++", eq. 9-10).

The probability-flow ODE in the half log-SNR ``lambda = log(alpha/sigma)``, for the data
prediction ``D(x, t) = x0_theta(x, t)``, has the exact solution from ``s`` to ``t``

    x_t = (sigma_t/sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} D(x_lambda) dlambda,

and the singlestep solvers below integrate the linear part exactly and ``D`` by a Taylor
expansion. With ``h = lambda_t - lambda_s > 0``, ``a_1(h) = h phi_1(-h) = 1 - e^{-h}`` and
``a_2(h) = h phi_2(-h) = (e^{-h} - 1 + h)/h`` (the moments ``g_0``, ``g_1`` of
:func:`sdediff.samplers.expint.moments`) and the stage times
``s_i = t(lambda_s + r_i h)``, one **attempt** of a step of size ``h`` is:

- **DPM-Solver-12** (``order=2``, ``r_1 = 1/2``):

  - ``x_L = (sigma_t/sigma_s) x + alpha_t a_1(h) D_s``                      (DPM-Solver++(1))
  - ``u_1 = (sigma_{s_1}/sigma_s) x + alpha_{s_1} a_1(r_1 h) D_s``,  ``D_1 = D(u_1, s_1)``
  - ``x_H = x_L + alpha_t a_1(h) (D_1 - D_s) / (2 r_1)``                    (DPM-Solver++(2S))

- **DPM-Solver-23** (``order=3``, ``r_1 = 1/3``, ``r_2 = 2/3``):

  - ``u_1``, ``D_1`` as above; ``x_L = (sigma_t/sigma_s) x + alpha_t a_1(h) (D_s + (D_1 - D_s) / (2 r_1))``
  - ``u_2 = (sigma_{s_2}/sigma_s) x + alpha_{s_2} a_1(r_2 h) D_s
    + (r_2/r_1) alpha_{s_2} a_2(r_2 h) (D_1 - D_s)``, ``D_2 = D(u_2, s_2)``
  - ``x_H = (sigma_t/sigma_s) x + alpha_t a_1(h) D_s + alpha_t a_2(h) (D_2 - D_s) / r_2``  (DPM-Solver++(3S))

  (the 3S data form is dpm-solver's ``singlestep_dpm_solver_third_update`` with
  ``algorithm_type="dpmsolver++"``; ``r_2 = 2/3`` is what makes it third order).

The two share their evaluations, so an attempt costs ``order`` network calls; ``D_s`` is kept
across rejected attempts (k-diffusion's ``eps_cache``), so a retry costs ``order - 1``.

**Error control** (Algorithm 4; dpm-solver ``dpm_solver_adaptive``): per element
``delta = max(atol, rtol * max(|x_L|, |x_s|))``; per sample ``E_b = ||(x_H - x_L)/delta||_2 /
sqrt(D)`` (``D`` elements per sample) and ``E = max_b E_b`` (every sample of the batch meets the
tolerance, as dpm-solver's code does). The attempt is accepted if ``E <= 1`` and the solver
continues from ``x_H`` (local extrapolation); either way the next step is

    h <- min(theta * h * E^{-1/order}, lambda(t_end) - lambda_s),

so the last step lands on ``t_end`` exactly. Constants (module-level, with sources):
``theta = 0.9`` (:data:`SAFETY`), ``h_init = 0.05`` (:data:`H_INIT`), ``rtol = 0.05``,
``atol = 0.0078`` (:data:`RTOL`, :data:`ATOL`): Lu et al.'s values (Algorithm 4 and appendix; the
dpm-solver code's defaults), chosen for data scaled to ``[-1, 1]``, where ``0.0078 ~ 2/256`` is one
8-bit level. They are loose: on the 2-D and 64-D mixture problems of ``benchmarks/`` a small
error needs tighter tolerances (measurements: ``docs/fast_solvers.md``, 'Measured behaviour of
dpm_adaptive').

**Why data prediction**: ``D`` stays in the data range along the whole path, so the mixed
tolerance refers to one scale from ``T`` to ``t_end`` (DPM-Solver++'s argument for bounded
predictions), and on the VP mixture problems it needed fewer calls for the same error than the
noise-prediction form (measurements: ``docs/fast_solvers.md``, same section). Every
process works: only ``sde.alpha_sigma``, ``sde.log_snr`` and ``sde.t_of_log_snr`` are used.

Shapes: ``x`` is ``(B, ...)``, any event shape; coefficients are float64 Python numbers, the state
keeps its dtype. Steps are internal: the sampler refuses ``steps``, ``nfe(steps)`` is ``None`` (the count is
measured) and ``result.times`` is ``[T, t_end]``. Tolerances below ``base.TOLERANCE_EPS`` (10) machine
epsilons of the sample dtype raise ``ValueError``; a step size that still collapses raises
:class:`~sdediff.checks.NumericalError`.
"""

from __future__ import annotations

import math

import torch

from ..checks import NumericalError, check_float, check_int
from . import register
from .base import Sampler, check_resolvable, check_tolerances
from .expint import moments

#: Step-size safety factor theta (Lu et al. 2022, Algorithm 4; dpm-solver ``theta=0.9``).
SAFETY = 0.9
#: Initial step in lambda (Lu et al. 2022, appendix; dpm-solver ``h_init=0.05``).
H_INIT = 0.05
#: Default tolerances (Lu et al. 2022, appendix; dpm-solver ``rtol=0.05``, ``atol=0.0078``).
RTOL, ATOL = 0.05, 0.0078
#: Stage fractions ``r_i`` of the step in lambda per order: DPM-Solver-2 ``r_1 = 1/2``,
#: DPM-Solver-3 ``r_1 = 1/3``, ``r_2 = 2/3`` (Lu et al. 2022, Algorithms 1-2 and section 3.3).
STAGES = {2: (1 / 2,), 3: (1 / 3, 2 / 3)}
#: A step below this fraction of the whole lambda span is a breakdown, not a step.
H_MIN_FRACTION = 1e-9
#: Floor of the error ratio E, so that an exact step (E = 0) still gives a finite next step.
E_FLOOR = 1e-12


@register("dpm_adaptive")
class DPMSolverAdaptive(Sampler):
    family = "dpm_solver"
    order = 3                     # of the default; instances declare their own
    adaptive = True
    default_steps = 1             # unused: the steps are chosen by the error control
    defaults = {"order": 3, "rtol": RTOL, "atol": ATOL, "h_init": H_INIT}

    def __init__(self, **options):
        super().__init__(**options)
        self.order = self.options["order"]

    def check_options(self):
        check_int("order", self.options["order"], minimum=2, maximum=3)
        check_tolerances(self.options)
        check_float("h_init", self.options["h_init"], 0.0, None, low_open=True)

    def nfe(self, steps):
        return None

    def run(self, model, x, ts, noise, observe):
        sde = model.sde
        order, rtol, atol = self.order, self.options["rtol"], self.options["atol"]
        r = STAGES[order]
        check_resolvable("dpm_adaptive", rtol, atol, x.dtype)
        t_end = float(ts[-1])
        lam_end = float(sde.log_snr(ts[-1]))

        def lam_of(t):
            return float(sde.log_snr(torch.tensor(t, dtype=torch.float64)))

        def time_of(lam):
            return float(sde.t_of_log_snr(torch.tensor(lam, dtype=torch.float64)))

        def alpha_sigma(t):
            alpha, sigma = sde.alpha_sigma(torch.tensor(t, dtype=torch.float64))
            return float(alpha), float(sigma)

        s = float(ts[0])
        lam_s = lam_of(s)
        h_min = H_MIN_FRACTION * (lam_end - lam_s)
        h = min(self.options["h_init"], lam_end - lam_s)
        D_s = None                                       # D(x_s, s), kept across rejections
        while True:
            last = h >= lam_end - lam_s
            t = t_end if last else time_of(lam_s + h)
            h = lam_of(t) - lam_s                        # the step actually taken
            _, sigma_s = alpha_sigma(s)
            alpha_t, sigma_t = alpha_sigma(t)
            a_1, a_2 = moments(h, 2)                     # h phi_1(-h), h phi_2(-h)
            if D_s is None:
                D_s = model.x0(x, s)                     # D_s = x0_theta(x_s, s)
            # stage 1: DPM-Solver++(1) from s to s_1 = t(lambda_s + r_1 h)
            s_1 = time_of(lam_s + r[0] * h)
            alpha_1, sigma_1 = alpha_sigma(s_1)
            u_1 = (sigma_1 / sigma_s) * x + (alpha_1 * moments(r[0] * h, 1)[0]) * D_s
            D_1 = model.x0(u_1, s_1)
            x_1st = (sigma_t / sigma_s) * x + (alpha_t * a_1) * D_s
            x_2nd = x_1st + (alpha_t * a_1 / (2 * r[0])) * (D_1 - D_s)   # DPM-Solver++(2S)
            if order == 2:
                x_L, x_H = x_1st, x_2nd
            else:
                # stage 2: second-order step from s to s_2 = t(lambda_s + r_2 h)
                s_2 = time_of(lam_s + r[1] * h)
                alpha_2, sigma_2 = alpha_sigma(s_2)
                b_1, b_2 = moments(r[1] * h, 2)          # a_1(r_2 h), a_2(r_2 h)
                u_2 = ((sigma_2 / sigma_s) * x + (alpha_2 * b_1) * D_s
                       + (r[1] / r[0] * alpha_2 * b_2) * (D_1 - D_s))
                D_2 = model.x0(u_2, s_2)
                x_L = x_2nd
                x_H = ((sigma_t / sigma_s) * x + (alpha_t * a_1) * D_s
                       + (alpha_t * a_2 / r[1]) * (D_2 - D_s))              # DPM-Solver++(3S)
            # Algorithm 4: mixed tolerance per element, RMS per sample, worst sample of the batch
            delta = torch.clamp(rtol * torch.maximum(x_L.abs(), x.abs()), min=atol)
            E = float(((x_H - x_L) / delta).flatten(1).pow(2).mean(1).sqrt().max())
            if not math.isfinite(E):
                raise NumericalError(
                    f"dpm_adaptive: non-finite error estimate at t = {s:.6g} (the model returned "
                    "NaN or inf, or the state overflowed); check the model's output")
            if E <= 1:                                   # accept: continue from x_H
                x, s, lam_s, D_s = x_H, t, lam_of(t), None
                if last:
                    break
            h = min(SAFETY * h * max(E, E_FLOOR) ** (-1 / order), lam_end - lam_s)
            if h < h_min:
                raise NumericalError(
                    f"dpm_adaptive: the step in log-SNR fell to {h:.3g} at t = {s:.6g}; rtol = "
                    f"{rtol:g}, atol = {atol:g} are below what {x.dtype} resolves. Loosen them or "
                    "sample in float64")
        observe(1, x)
        return x

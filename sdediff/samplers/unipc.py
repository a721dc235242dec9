"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", sec. 3), multistep predictor-corrector with data prediction ``D = x0_theta``.

Step ``i`` from ``t_i`` to ``t_{i+1}`` (``h = lambda_{i+1} - lambda_i > 0``) with order ``p``:

1. **UniP-p** (predictor) from the corrected ``x_i`` and ``D_i, D_{i-1}, ..., D_{i-p+1}``:
   ``x~_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (1 - e^{-h}) D_i
   - alpha_{i+1} B(h) sum_k rho_k (D_{i-k} - D_i)/r_k``;
2. evaluate ``D_{i+1} = x0_theta(x~_{i+1}, t_{i+1})`` (the step's only network call);
3. **UniC-p** (corrector): the same formula with the node ``r = 1`` and ``D_{i+1}`` added and
   ``rho^c`` from the ``p x p`` system, giving ``x_{i+1}``. ``D_{i+1}`` (made at the uncorrected
   point) is reused by the next predictor, so the corrector costs no network call.

``r_k = (lambda_{i-k} - lambda_i)/h``; ``rho`` solves ``sum_k r_k^{j-1} rho_k = b_j`` with
``b_j = -h phi_{j+1}(-h) j! / B(h)``; ``B(h)`` is the ``variant``: bh1 ``-h``, bh2
``e^{-h} - 1`` (:data:`~sdediff.samplers.expint.UNIPC_B`). As in the reference code, the
order-2 predictor and order-1 corrector use ``rho = 1/2`` (UniP-2 with bh2 is DPM-Solver++(2M));
elsewhere ``B(h)`` cancels. All weights are precomputed in float64 by
:func:`sdediff.samplers.expint.unipc_weights`, so the sampler is stable in float32 at every order
and variant (the reference code builds the system in the sample's dtype, where the ``h_phi_k``
recursion cancels for small ``h``; a peer's order 3 bh1 returns NaN in float32).

Warm-up ``p = min(order, i + 1)``; ``lower_order_final`` (default on, as in the reference code)
also caps it at ``steps - i`` (:func:`~sdediff.samplers.expint.step_orders`). No corrector on
the last step (it would cost one more call): the result is the last predictor's ``x~_N``.

Order: UniC raises UniP-p's order to ``p + 1`` (Zhao et al. 2023, sec. 3), so the sampler's
declared global order is ``order + 1``. It shows once ``h`` is small: before that, the
corrector's input comes from the lower-order predictor, whose error enters at full weight near
``t_end``, and the observed order is lower. For ``order=3`` the first-order warm-up step
(UniP-1 + UniC-1, local error ``O(h^3)``) and the first-order last step take over at many steps,
so its order shows only at moderate step counts, with ``lower_order_final=False``.
``tests/test_fast_solvers.py`` asserts the observed order on the VP, cosine VP and VE processes:
within 0.3 of 3 for ``order=2`` from 80-320 steps, and between 3.7 and 4.7 for ``order=3``
without lower-order final steps from 20-80 steps (measurements: ``docs/samplers.md``, 'Observed
orders of the fast solvers'). One network call per step, the first at ``T``. ``x``:
``(B, ...)``, any dtype. Defaults ``order=2``, ``variant="bh2"`` on the ``auto`` grid
(``quadratic`` on VP, ``logsnr`` on VE): the lowest score of every candidate of every fast
solver over gmm2d, gmm64 and the digits model at 5, 10 and 20 NFE
(``benchmarks/bench_defaults.py``), and so the default sampler of ``sd.sample``.
"""

from __future__ import annotations

from ..checks import check_bool, check_choice, check_int
from . import register
from .base import Sampler
from .expint import UNIPC_B, step_orders, unipc_weights


def unipc_coefficients(sde, ts, order: int, variant: str, lower_order_final: bool):
    """Per step ``i``: ``(a_i, predictor, corrector)`` as float64 numbers with
    ``x~_{i+1} = a_i x_i + sum_j predictor[j] D_{i-j}`` and
    ``x_{i+1} = a_i x_i + corrector[0] D_{i+1} + sum_j corrector[j+1] D_{i-j}``
    (``corrector`` is ``None`` on the last step)."""
    lam = sde.log_snr(ts).tolist()
    alpha, sigma = (v.tolist() for v in sde.alpha_sigma(ts))
    N = len(lam) - 1
    coefficients = []
    for i, p in enumerate(step_orders(N, order, lower_order_final)):
        h = lam[i + 1] - lam[i]
        r = [(lam[i - j] - lam[i]) / h for j in range(p)]
        predictor = [alpha[i + 1] * w for w in unipc_weights(h, r, variant, corrector=False)]
        corrector = None
        if i < N - 1:
            w = unipc_weights(h, r + [1.0], variant, corrector=True)
            corrector = [alpha[i + 1] * w[-1]] + [alpha[i + 1] * w_j for w_j in w[:-1]]
        coefficients.append((sigma[i + 1] / sigma[i], predictor, corrector))
    return coefficients


@register("unipc")
class UniPC(Sampler):
    family = "unipc"
    reversible = True            # the update holds for either direction of time: encodes
    order = 3                     # of the default (order=2): UniC adds one; instances declare their own
    default_steps = 20
    defaults = {"schedule": "auto", "order": 2, "variant": "bh2", "lower_order_final": True}

    def __init__(self, **options):
        super().__init__(**options)
        self.order = self.options["order"] + 1

    def check_options(self):
        check_int("order", self.options["order"], minimum=1, maximum=3)
        check_choice("variant", self.options["variant"], UNIPC_B)
        check_bool("lower_order_final", self.options["lower_order_final"])

    def run(self, model, x, ts, noise, observe):
        coefficients = unipc_coefficients(model.sde, ts, self.options["order"],
                                          self.options["variant"],
                                          self.options["lower_order_final"])
        keep = self.options["order"]
        D = [model.x0(x, ts[0])]                            # D_0 = x0_theta(x_T, T)
        for i, (a, predictor, corrector) in enumerate(coefficients):
            a_x = a * x                                     # shared by UniP and UniC
            x_pred = a_x
            for c, D_j in zip(predictor, D, strict=False):  # one fused op per term, no temporary
                x_pred = x_pred.add(D_j, alpha=c)           # UniP
            if corrector is None:                           # last step: no corrector
                x = x_pred
            else:
                D_next = model.x0(x_pred, ts[i + 1])        # D_{i+1} at the predicted point
                x = a_x.add(D_next, alpha=corrector[0])
                for c, D_j in zip(corrector[1:], D, strict=False):
                    x = x.add(D_j, alpha=c)                 # UniC
                D = ([D_next] + D)[:keep]
            observe(i + 1, x)
        return x

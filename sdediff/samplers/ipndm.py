"""iPNDM, the improved pseudo-numerical multistep method (Zhang & Chen 2023, "Fast Sampling of
Diffusion Models with Exponential Integrator", appendix on PNDM; the ``ipndm`` of the DEIS repo
``th_deis``; Liu et al. 2022's PNDM with lower-order warm-up steps instead of Runge-Kutta ones).

In ``y = x/alpha`` and ``s = sigma/alpha = e^{-lambda}`` the probability-flow ODE is
``dy/ds = eps_theta(alpha y, t(s))``. iPNDM integrates it with the constant-step Adams-Bashforth
weights of order ``k_i = min(order, i + 1)`` (:data:`~sdediff.samplers.expint.IPNDM_AB`):

    eps_i = eps_theta(x_i, t_i)
    y_{i+1} = y_i + (s_{i+1} - s_i) sum_j w^{(k_i)}_j eps_{i-j}

i.e. ``x_{i+1} = (alpha_{i+1}/alpha_i) x_i + alpha_{i+1} (s_{i+1} - s_i) sum_j w_j eps_{i-j}``,
the DDIM coefficient times the AB combination (the form used here, so the state keeps its scale).
The weights ignore the grid's varying step, as in the reference: on a non-uniform grid the
method is formally second order for ``order >= 2`` (the step-size variation enters the local
error at ``O(h^3)``; ``tests/test_fast_solvers.py`` asserts order 2 on ``karras`` from 160-640
steps), though ``order = 3`` (the default) and 4 are much more accurate than the second-order
solvers at few calls (measurements: ``docs/samplers.md``, 'Observed orders of the fast solvers' and
'Accuracy at few steps').

Defaults ``order=3`` on the ``auto`` grid (``quadratic`` on VP, ``logsnr`` on VE), by measurement
(``benchmarks/bench_defaults.py``, score over gmm2d, gmm64 and the digits model at 5, 10 and 20
NFE: 1.61, against 2.31 for order 4 on the same grid and 4.36 for the former default, order 4 on
``karras``, which gave a Fréchet distance of 166 against 24 at 10 NFE on the digits). Zhou et
al. 2024 ("Fast ODE-based Sampling for Diffusion Models in Around 5 Steps") run iPNDM on EDM's
rho = 7 grid; DEIS itself uses uniform ``t`` for its VP models. At 5 NFE on the digits this
default is poor (5.96x the best Fréchet distance of the candidates): use ``unipc`` there.

One network call per step, the first at ``T``. ``x``: ``(B, ...)``, any dtype; coefficients
float64.
"""

from __future__ import annotations

from ..checks import check_int
from . import register
from .base import Sampler
from .expint import IPNDM_AB


@register("ipndm")
class IPNDM(Sampler):
    family = "ipndm"
    reversible = True            # the update holds for either direction of time: encodes
    order = 2                     # formal order on the non-uniform grids it is used with
    default_steps = 10
    defaults = {"schedule": "auto", "order": 3}

    def __init__(self, **options):
        super().__init__(**options)
        self.order = min(self.options["order"], 2)     # AB-k, k >= 2, is second order here

    def check_options(self):
        check_int("order", self.options["order"], minimum=1, maximum=max(IPNDM_AB))

    def run(self, model, x, ts, noise, observe):
        s = model.sde.sigma_over_alpha(ts).tolist()                # s_i = sigma_i / alpha_i
        alpha = model.sde.alpha(ts).tolist()
        order = self.options["order"]
        eps = []                                               # eps_i, eps_{i-1}, ... newest first
        for i in range(ts.numel() - 1):
            eps = ([model.eps(x, ts[i])] + eps)[:order]        # eps_i = eps_theta(x_i, t_i)
            w = IPNDM_AB[len(eps)]                             # warm-up: order min(order, i + 1)
            d = sum(w_j * e_j for w_j, e_j in zip(w, eps, strict=True))
            x = (alpha[i + 1] / alpha[i]) * x + (alpha[i + 1] * (s[i + 1] - s[i])) * d
            observe(i + 1, x)
        return x

"""EDM's Heun sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2; with ``s_churn = 0`` it is Algorithm 1's deterministic Heun).

In ``y = x/alpha`` and ``s = sigma/alpha = e^{-lambda}`` (EDM's ``x`` and ``sigma`` for any
process) the probability-flow ODE is ``dy/ds = eps_theta(alpha y, t(s))``. With the grid
``s_0 > s_1 > ... > s_N`` (``s_i = sigma(t_i)/alpha(t_i)``), step ``i``:

    gamma_i = min(s_churn/N, sqrt(2) - 1)  if s_tmin <= s_i <= s_tmax, else 0
    s^ = s_i (1 + gamma_i)                                  # raise the noise level ...
    y^ = y_i + sqrt(s^2 - s_i^2) s_noise z,   z ~ N(0, I)   # ... by adding noise
    d = eps_theta(alpha(t^) y^, t^)                         # dy/ds at (y^, s^)
    y_{i+1} = y^ + (s_{i+1} - s^) d                         # Euler step
    if i < N - 1:                                           # second-order correction
        d' = eps_theta(alpha_{i+1} y_{i+1}, t_{i+1})
        y_{i+1} = y^ + (s_{i+1} - s^) (d + d')/2

``t(s)`` is ``sde.t_of_log_snr(-log s)``. The last step is Euler, as in EDM, whose last step
goes to ``sigma = 0``; here it ends at ``t_end`` and keeps the same count: NFE = ``2N - 1``.
One deviation: ``s^`` is capped at ``s(T)`` so the network is never asked about ``t > T``
(EDM's ``sigma_max`` plays that role there). The noise ``z`` of step ``i`` is the seeded Brownian
path's normalised increment over ``[t_{i+1}, t_i]`` (a stochastic configuration only, i.e.
``s_churn > 0``). ``s_tmin``, ``s_tmax`` are in ``s = sigma/alpha`` units, like EDM's.

Order 2 (deterministic; the final Euler step's ``O(h^2)`` error matches it), asserted on the
VP, cosine VP and VE processes by ``tests/test_fast_solvers.py`` (measurements:
``docs/samplers.md``, 'Observed orders of the fast solvers'). Default grid ``karras`` (rho = 7
in ``s``, EDM's eq. 5). ``x``: ``(B, ...)``, any dtype; coefficients float64.
"""

from __future__ import annotations

import math

import torch

from ..checks import check_float
from . import register
from .base import Sampler

#: EDM's cap on the churn per step, ``gamma_i <= sqrt(2) - 1`` (Karras et al. 2022, Algorithm 2):
#: at most doubles the variance.
MAX_GAMMA = math.sqrt(2.0) - 1.0


@register("heun")
class Heun(Sampler):
    family = "edm"
    order = 2
    default_steps = 18            # EDM's CIFAR-10 setting (NFE 35)
    defaults = {"schedule": "karras", "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf,
                "s_noise": 1.0}

    def check_options(self):
        check_float("s_churn", self.options["s_churn"], 0.0, None)
        check_float("s_tmin", self.options["s_tmin"], 0.0, None)
        s_tmax = self.options["s_tmax"]
        if not (isinstance(s_tmax, float) and s_tmax == math.inf):
            check_float("s_tmax", s_tmax, self.options["s_tmin"], None)
        check_float("s_noise", self.options["s_noise"], 0.0, None)

    def is_stochastic(self):
        return self.options["s_churn"] > 0

    def nfe(self, steps):
        return 2 * steps - 1

    def run(self, model, x, ts, noise, observe):
        sde = model.sde
        o = self.options
        N = ts.numel() - 1
        alpha, s = sde.alpha(ts), sde.sigma_over_alpha(ts)         # s_i = sigma_i / alpha_i
        in_range = (s >= o["s_tmin"]) & (s <= o["s_tmax"])
        gamma = torch.where(in_range, min(o["s_churn"] / N, MAX_GAMMA), 0.0)
        s_hat = torch.minimum(s * (1 + gamma), s[0])               # capped at s(T)
        t_hat = torch.where(s_hat > s, sde.t_of_log_snr(-torch.log(s_hat)), ts)
        alpha_hat = sde.alpha(t_hat)
        churn = torch.sqrt(s_hat**2 - s**2) * o["s_noise"]
        times, s, s_hat, churn = ts.tolist(), s.tolist(), s_hat.tolist(), churn.tolist()
        alpha, alpha_hat = alpha.tolist(), alpha_hat.tolist()

        y = x / alpha[0]
        for i in range(N):
            y_hat = y
            if churn[i] > 0:
                y_hat = y + churn[i] * noise.normal(times[i], times[i + 1])   # y^ = y_i + ... z
            d = model.eps(alpha_hat[i] * y_hat, t_hat[i])                   # d_i
            y = y_hat + (s[i + 1] - s_hat[i]) * d                           # Euler step
            if i < N - 1:
                d_prime = model.eps(alpha[i + 1] * y, ts[i + 1])            # d'_i
                y = y_hat + (s[i + 1] - s_hat[i]) * (0.5 * d + 0.5 * d_prime)   # Heun
            observe(i + 1, alpha[i + 1] * y)
        return alpha[N] * y

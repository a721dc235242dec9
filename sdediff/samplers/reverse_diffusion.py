"""Reverse-diffusion predictor (Song et al. 2021, sec. 4.2 and app. E "reverse diffusion
sampling"; score_sde's ``ReverseDiffusionPredictor``).

Discretise the forward process on the grid step ``t_{i+1} < t_i`` as one Gaussian transition
``x_i = x_{i+1} + f_i x_{i+1} + G_i z`` and run it backwards with the score replacing the unknown
reverse mean:

    x_{i+1} = x_i - f_i x_i + G_i^2 score(x_i, t_i) + G_i z_i.

The transition is the forward process's exact one, from ``alpha`` and ``sigma`` alone
(``h = lambda(t_{i+1}) - lambda(t_i) > 0``):

    1 + f_i = alpha(t_i) / alpha(t_{i+1}),
    G_i^2   = sigma(t_i)^2 - (1 + f_i)^2 sigma(t_{i+1})^2 = sigma(t_i)^2 (1 - e^{-2h}),

computed with ``expm1`` in float64. This is exactly score_sde's discretisations where it has them
(VP: DDPM's ``f_i = sqrt(1 - beta_i) - 1``, ``G_i^2 = beta_i``; VE: SMLD's
``G_i^2 = sigma_i^2 - sigma_{i-1}^2``), and gives the same rule for the cosine VP and sub-VP
(score_sde falls back to Euler–Maruyama there, ``f_i = f dt``, ``G_i^2 = g^2 dt``, which would make
this sampler ``euler_maruyama`` again). ``z_i`` is the step's Brownian increment over its standard
deviation; the last step adds no noise.

:func:`reverse_diffusion_step` is the one home of this rule; ``pc`` uses it as its predictor.
Weak order 1, one network call per step.
"""

from __future__ import annotations

import torch

from . import register
from .base import Sampler


def reverse_diffusion_coefficients(sde, ts: torch.Tensor):
    """Per-step ``(f_i, G_i)`` of the forward transitions on the grid ``ts`` (float64, length N)."""
    log_alpha = torch.log(sde.alpha(ts))
    f = torch.expm1(log_alpha[:-1] - log_alpha[1:])                 # alpha_i / alpha_{i+1} - 1
    G = sde.transition_stds(ts)[0]                                  # the forward transition's std
    return f, G


def reverse_diffusion_step(x: torch.Tensor, score: torch.Tensor, f_i: float, G_i: float,
                           z: torch.Tensor | None) -> torch.Tensor:
    """The reverse-diffusion step ``x - f_i x + G_i^2 score + G_i z`` (``z=None``: the noise-free mean)."""
    x_mean = x - f_i * x + G_i**2 * score
    return x_mean if z is None else x_mean + G_i * z


@register("reverse_diffusion")
class ReverseDiffusion(Sampler):
    family = "pc"
    order = 1
    stochastic = True
    default_steps = 500
    defaults = {"schedule": "uniform"}

    def run(self, model, x, ts, noise, observe):
        f, G = (c.tolist() for c in reverse_diffusion_coefficients(model.sde, ts))
        times = ts.tolist()
        last = len(f) - 1
        for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            score = model.score(x, ts[i])                                    # s_theta(x_i, t_i)
            z = noise.normal(t_cur, t_next) if i < last else None            # no noise at the end
            x = reverse_diffusion_step(x, score, f[i], G[i], z)              # x - f x + G^2 s + G z
            observe(i + 1, x)
        return x

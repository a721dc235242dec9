"""Independent reference answers for the sampler tests (scipy, not sdediff's solvers)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp

import sdediff as sd
from sdediff.metrics import energy_distance  # noqa: F401  (re-exported for the tests)


def ring_mixture(dim=2, components=8, std=0.15, seed=0) -> sd.GaussianMixture:
    """``components`` Gaussians with means spread over [-1.5, 1.5]^dim (a ring in 2-D)."""
    if dim == 2:
        angles = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
        means = 1.5 * torch.stack([angles.cos(), angles.sin()], dim=1)
    else:
        g = torch.Generator().manual_seed(seed)
        means = 3 * torch.rand(components, dim, generator=g, dtype=torch.float64) - 1.5
    weights = torch.linspace(1.0, 2.0, components, dtype=torch.float64)
    return sd.GaussianMixture(means, std, weights)


def exact_pf_endpoint(gmm: sd.GaussianMixture, sde, x_T: torch.Tensor, t_end: float,
                      rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
    """The probability-flow ODE solution at ``t_end`` from ``x_T`` at ``T``, by scipy DOP853 in
    ``y = x / alpha`` and ``s = sigma / alpha`` where ``dy/ds = eps(alpha y, t(s))``."""
    shape = x_T.shape
    s_T, s_end = (math.exp(-float(sde.log_snr(torch.tensor(t, dtype=torch.float64))))
                  for t in (sde.T, t_end))

    def rhs(s, y):
        t = sde.t_of_log_snr(torch.tensor(-math.log(s), dtype=torch.float64))
        alpha = float(sde.alpha(t))
        x = torch.from_numpy(alpha * y).reshape(shape)
        sigma = float(sde.alpha_sigma(t)[1])
        eps = -sigma * gmm.score(x, t, sde)
        return eps.reshape(-1).numpy()

    alpha_T = float(sde.alpha(torch.tensor(sde.T, dtype=torch.float64)))
    y_T = x_T.double().reshape(-1).numpy() / alpha_T
    sol = solve_ivp(rhs, (s_T, s_end), y_T, method="DOP853", rtol=rtol, atol=atol)
    assert sol.success, sol.message
    alpha_end = float(sde.alpha(torch.tensor(t_end, dtype=torch.float64)))
    return torch.from_numpy(alpha_end * sol.y[:, -1]).reshape(shape)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square distance per sample: sqrt(mean_b ||a_b - b_b||^2)."""
    diff = (a.double() - b.double()).reshape(a.shape[0], -1)
    return float(diff.pow(2).sum(1).mean().sqrt())


def slope(steps, errors) -> float:
    """Least-squares slope of log(error) against log(1/steps): the observed order."""
    return float(np.polyfit(np.log(1 / np.asarray(steps, float)), np.log(errors), 1)[0])

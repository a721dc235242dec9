"""Benchmark problems with exact answers: Gaussian mixtures and their exact probability flow.

A :class:`~sdediff.score.GaussianMixture` has the exact score of every noised marginal, so a
sampler driven by it has no model error: what remains is the solver's own. This module is the one
home of the problems the tests and the benchmarks share (``tests/exact.py``,
``benchmarks/bench_fast_solvers.py``, ``benchmarks/sampler_quality.py``, the sweeps of
:mod:`sdediff.bench.sweep`) and of the scipy reference solution.

Problems (:data:`PROBLEMS`, name -> constructor; all float64, weights ``linspace(1, 2)``):

- ``gmm2d``: 8 components of std 0.15 on the ring of radius 1.5;
- ``gmm64``: 64-D, 10 components of std 0.15 with means uniform in ``[-1.5, 1.5]^64`` drawn
  with seed :data:`GMM64_SEED`.

:func:`ring_means` alone gives the ring for mixtures with other weights (equal ones in
``benchmarks/sampler_quality.py``).

**The exact probability flow.** In ``y = x / alpha`` and ``s = sigma / alpha`` (EDM's
``x~`` and ``sigma~``; Karras et al. 2022, sec. 4) the probability-flow ODE of every Gaussian
forward process ``x_t = alpha x_0 + sigma eps`` is the same ODE,

    dy/ds = eps_s(y),

where ``eps_s`` is the noise prediction of the data convolved with ``N(0, s^2 I)``: from
``f = d log alpha/dt`` and ``g^2 = 2 sigma^2 d log s/dt``, ``dy/dt = -g^2 score / (2 alpha) =
(ds/dt) eps``, and the marginal of ``x / alpha`` is ``p_0 * N(0, s^2)`` whatever the process.
A process enters only through the end points ``s(t)`` and the factor ``alpha``. So one function,
:func:`pf_flow`, gives the continuous processes' reference (:func:`exact_pf_solve`,
:func:`exact_pf_endpoint`) and the reference of a discrete-schedule solver that runs in ``s``
down to ``s = 0`` (diffusers' schedulers, in :mod:`sdediff.bench.peers`). It is integrated by scipy's
DOP853, independent of sdediff's own solvers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ..checks import check_choice, check_float, check_int
from ..data import ring_means as data_ring_means
from ..score import GaussianMixture
from ..sde import ForwardProcess

#: Radius of the ring of means in 2-D and half-width of the cube of means in higher dimension.
SPREAD = 1.5
#: Standard deviation of every mixture component.
STD = 0.15
#: Seed of the 64-D problem's means.
GMM64_SEED = 1
#: Tolerances of the scipy reference (rtol = atol).
REFERENCE_TOL = 1e-10


def ring_means(components: int = 8, radius: float = SPREAD) -> torch.Tensor:
    """``(components, 2)`` float64 means evenly spaced on the circle of ``radius``, the first at
    angle 0: ``radius * (cos 2 pi k/K, sin 2 pi k/K)``."""
    check_int("components", components, minimum=1)
    return data_ring_means(components, radius, dtype=torch.float64)


def ring_mixture(dim: int = 2, components: int = 8, std: float = STD, seed: int = 0
                 ) -> GaussianMixture:
    """``components`` Gaussians of std ``std``, weights ``linspace(1, 2)``: on the ring of radius
    1.5 in 2-D, else with means uniform in ``[-1.5, 1.5]^dim`` drawn with ``seed``."""
    check_int("dim", dim, minimum=1)
    check_int("components", components, minimum=1)
    if dim == 2:
        means = ring_means(components)
    else:
        g = torch.Generator().manual_seed(seed)
        means = 2 * SPREAD * torch.rand(components, dim, generator=g, dtype=torch.float64) - SPREAD
    weights = torch.linspace(1.0, 2.0, components, dtype=torch.float64)
    return GaussianMixture(means, std, weights)


def gmm2d() -> GaussianMixture:
    """2-D, 8 components of std 0.15 on the ring of radius 1.5."""
    return ring_mixture(2, 8, STD)


def gmm64() -> GaussianMixture:
    """64-D, 10 components of std 0.15, means uniform in ``[-1.5, 1.5]^64`` (seed 1)."""
    return ring_mixture(64, 10, STD, seed=GMM64_SEED)


#: Exact problems by name.
PROBLEMS = {"gmm2d": gmm2d, "gmm64": gmm64}


def get_problem(name: str) -> GaussianMixture:
    """The mixture called ``name`` (see :data:`PROBLEMS`)."""
    return PROBLEMS[check_choice("problem", name, PROBLEMS)]()


class _NoiseLevel:
    """The marginal ``p_0 * N(0, s^2)`` seen as a process (``alpha = 1``, ``sigma = s``), so that
    :meth:`GaussianMixture.score` evaluates it; ``s = 0`` is allowed."""

    def __init__(self, s: float):
        self.s = s

    def alpha_sigma(self, t: torch.Tensor):
        return torch.ones_like(t), torch.full_like(t, self.s)


def noise_eps(gmm: GaussianMixture, y: torch.Tensor, s: float) -> torch.Tensor:
    """Exact ``eps_s(y) = -s grad log (p_0 * N(0, s^2))(y)``, shape of ``y``; 0 at ``s = 0``."""
    return -s * gmm.score(y, 0.0, _NoiseLevel(float(s)))


def pf_flow(gmm: GaussianMixture, y: torch.Tensor, s_from: float, s_to: float,
            rtol: float = REFERENCE_TOL, atol: float = REFERENCE_TOL) -> torch.Tensor:
    """Solve ``dy/ds = eps_s(y)`` from ``y`` at noise level ``s_from`` to ``s_to`` (either
    direction; ``s_to = 0`` allowed) by scipy DOP853. ``y``: ``(B, ...)``; returns float64."""
    check_float("s_from", s_from, 0.0, None)
    check_float("s_to", s_to, 0.0, None)
    shape = y.shape

    def rhs(s, flat):
        return noise_eps(gmm, torch.from_numpy(flat).reshape(shape), max(s, 0.0)).reshape(-1).numpy()

    y0 = y.detach().double().reshape(-1).cpu().numpy()
    if s_from == s_to:
        return torch.from_numpy(y0.copy()).reshape(shape)
    sol = solve_ivp(rhs, (s_from, s_to), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference probability-flow solve failed: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).reshape(shape)


def _s_alpha(sde: ForwardProcess, t: float) -> tuple[float, float]:
    """``(sigma/alpha, alpha)`` at time ``t`` in float64."""
    t = torch.tensor(t, dtype=torch.float64)
    return math.exp(-float(sde.log_snr(t))), float(sde.alpha(t))


def exact_pf_solve(gmm: GaussianMixture, sde: ForwardProcess, x: torch.Tensor, t_from: float,
                   t_to: float, rtol: float = REFERENCE_TOL, atol: float = REFERENCE_TOL
                   ) -> torch.Tensor:
    """The probability-flow ODE of ``sde`` carried from ``x`` at ``t_from`` to ``t_to`` (either
    direction: forward in time is encoding), by :func:`pf_flow` in ``y = x/alpha``,
    ``s = sigma/alpha``. Returns float64 of ``x``'s shape."""
    (s_from, a_from), (s_to, a_to) = _s_alpha(sde, t_from), _s_alpha(sde, t_to)
    y = pf_flow(gmm, x.double() / a_from, s_from, s_to, rtol=rtol, atol=atol)
    return a_to * y


def exact_pf_endpoint(gmm: GaussianMixture, sde: ForwardProcess, x_T: torch.Tensor, t_end: float,
                      rtol: float = REFERENCE_TOL, atol: float = REFERENCE_TOL) -> torch.Tensor:
    """The probability-flow ODE solution at ``t_end`` from ``x_T`` at ``T`` (what a deterministic
    sampler with ``denoise=False`` approximates)."""
    return exact_pf_solve(gmm, sde, x_T, sde.T, t_end, rtol=rtol, atol=atol)


def noisy_sample(gmm: GaussianMixture, n: int, s: float, scale: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` exact samples of ``scale * (x_0 + s eps)``: the marginal at time ``t`` of a process
    is ``scale = alpha(t)``, ``s = sigma(t)/alpha(t)``."""
    x0 = gmm.sample(n, generator=generator)
    return scale * (x0 + s * torch.randn(x0.shape, generator=generator, dtype=x0.dtype))


def marginal_sample(gmm: GaussianMixture, sde: ForwardProcess, t: float, n: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` exact samples of the marginal ``p_t`` (float64)."""
    s, alpha = _s_alpha(sde, t)
    return noisy_sample(gmm, n, s, alpha, generator=generator)


__all__ = ["GMM64_SEED", "PROBLEMS", "REFERENCE_TOL", "exact_pf_endpoint", "exact_pf_solve",
           "get_problem", "gmm2d", "gmm64", "marginal_sample", "noise_eps", "noisy_sample",
           "pf_flow", "ring_means", "ring_mixture"]

"""Time grids ``T = t_0 > t_1 > ... > t_N = t_end`` for fixed-step samplers.

Every grid starts at exactly ``T`` (the first network call sees the prior's time) and ends at
exactly ``t_end``, with ``N + 1`` strictly decreasing float64 points and no repeated final time.

============  ==================================================================================
name          spacing (``i = 0..N``)
============  ==================================================================================
uniform       uniform in ``t``: ``t_i = T + (i/N)(t_end - T)``
logsnr        uniform in log-SNR ``lambda``, mapped back with ``t_of_log_snr``
quadratic     uniform in ``sqrt(t)``: ``t_i = (sqrt(T) + (i/N)(sqrt(t_end) - sqrt(T)))^2``
karras        Karras et al.'s rho = 7 spacing of ``sigma~ = sigma/alpha = exp(-lambda)``:
              ``sigma~_i = (sigma~_max^(1/rho) + (i/N)(sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho``
edm           EDM's published recipe: the rho = 7 spacing over EDM's noise range
              ``sigma~ in [0.002, 80]`` clipped to the process's own range, with the first and
              last times then pinned at ``T`` and ``t_end``
auto          the fast solvers' default: ``quadratic`` for VP and sub-VP, ``logsnr`` for VE
              (:func:`auto`)
leading,      diffusers' ``timestep_spacing`` values, for discrete processes only
trailing,     (:class:`~sdediff.sde.DiscreteVPSDE`): exactly the timesteps of diffusers'
linspace      ``set_timesteps(steps)`` (:func:`diffusers_timesteps`), at ``t = (tau + 1)/M``
============  ==================================================================================

The diffusers spacings are the exception to the rules above, on purpose (they reproduce a
diffusers run step for step): ``steps`` counts their timesteps, not intervals, they need not
start at ``T`` and they end at their last timestep, not at ``t_end`` (see :data:`SPACINGS`).

For ``karras``, ``sigma~_max`` and ``sigma~_min`` are the process's own values at ``T`` and
``t_end``. The rho grids put more steps near the data, where the probability-flow ODE is stiff.
For the linear VP (``sigma~(T) = 152``) ``edm`` spends its first step on ``sigma~`` 152 -> 80; for
VE (``sigma~`` in [0.01, 50]) it equals ``karras``. An explicit tensor of times is accepted too
(:func:`make_grid`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..checks import InputValueError, check_choice, check_int
from ..sde import VESDE
from ..utils import as_time

#: Karras et al. (2022), eq. 5 and Table 1: rho = 7.
KARRAS_RHO = 7.0


def _endpoints(sde, t_end: float) -> torch.Tensor:
    return torch.tensor([sde.T, t_end], dtype=torch.float64)


def _fraction(steps: int) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)


def _pin(ts: torch.Tensor, sde, t_end: float) -> torch.Tensor:
    """Set the endpoints exactly (round trips through lambda may move them by an ulp)."""
    ts[0], ts[-1] = sde.T, t_end
    return ts


def uniform(sde, steps: int, t_end: float) -> torch.Tensor:
    return _pin(sde.T + _fraction(steps) * (t_end - sde.T), sde, t_end)


def quadratic(sde, steps: int, t_end: float) -> torch.Tensor:
    lo, hi = t_end**0.5, sde.T**0.5
    return _pin((hi + _fraction(steps) * (lo - hi)) ** 2, sde, t_end)


def logsnr(sde, steps: int, t_end: float) -> torch.Tensor:
    lam_T, lam_end = sde.log_snr(_endpoints(sde, t_end))
    return _pin(sde.t_of_log_snr(lam_T + _fraction(steps) * (lam_end - lam_T)), sde, t_end)


def _rho_grid(sde, steps: int, t_end: float, sigma_max: float, sigma_min: float,
              rho: float = KARRAS_RHO) -> torch.Tensor:
    """Times whose ``sigma~ = exp(-lambda)`` follow Karras et al.'s eq. 5 from ``sigma_max`` to
    ``sigma_min``, endpoints pinned at ``T`` and ``t_end``."""
    ramp = _fraction(steps)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho)))
    return _pin(sde.t_of_log_snr(-rho * torch.log(sigmas)), sde, t_end)


def _sigma_range(sde, t_end: float) -> tuple[float, float]:
    sigma_max, sigma_min = sde.sigma_over_alpha(_endpoints(sde, t_end)).tolist()
    return sigma_max, sigma_min


def karras(sde, steps: int, t_end: float, rho: float = KARRAS_RHO) -> torch.Tensor:
    """The ``karras`` grid; ``rho`` other than 7 for studies of the spacing (the named grid is
    always rho = 7)."""
    return _rho_grid(sde, steps, t_end, *_sigma_range(sde, t_end), rho=rho)


#: EDM's default noise range (Karras et al. 2022, Table 1).
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


def edm(sde, steps: int, t_end: float) -> torch.Tensor:
    sigma_max, sigma_min = _sigma_range(sde, t_end)
    return _rho_grid(sde, steps, t_end, min(sigma_max, EDM_SIGMA_MAX),
                     max(sigma_min, EDM_SIGMA_MIN))


def diffusers_timesteps(spacing: str, num_train_timesteps: int, steps: int,
                        steps_offset: int = 0) -> torch.Tensor:
    """The int64 timesteps of diffusers' ``DDIMScheduler``/``DDPMScheduler.set_timesteps(steps)``
    with ``timestep_spacing=spacing``, descending (numpy's round-half-to-even, as diffusers):

    - ``leading``: ``r = M // N``, ``k r + steps_offset`` for ``k = N-1..0`` (900, ..., 0 for
      ``M = 1000``, ``N = 10``);
    - ``trailing``: ``round(arange(M, 0, -M/N)) - 1`` (999, 899, ..., 99);
    - ``linspace``: ``round(linspace(0, M - 1, N))`` reversed (999, 888, ..., 0).
    """
    M, N = num_train_timesteps, steps
    check_int(f"steps (the {spacing!r} spacing of a {M}-step chain)", N, minimum=2, maximum=M)
    if spacing == "leading":
        taus = (np.arange(0, N) * (M // N)).round()[::-1] + steps_offset
        if taus[0] > M - 1:
            raise InputValueError(f"steps_offset = {steps_offset} puts the first 'leading' timestep at "
                                  f"{int(taus[0])}, beyond the chain's last index {M - 1}")
    elif spacing == "trailing":
        taus = np.round(np.arange(M, 0, -M / N)) - 1
    else:
        taus = np.round(np.linspace(0, M - 1, N))[::-1]
    return torch.from_numpy(taus.astype(np.int64).copy())


def _spacing(name: str):
    """The grid of diffusers' spacing ``name``: its ``steps`` timesteps ``tau`` at the times
    ``(tau + 1)/M`` of the discrete process (:class:`~sdediff.sde.DiscreteVPSDE`)."""

    def grid(sde, steps: int, t_end: float) -> torch.Tensor:
        M = getattr(sde, "num_train_timesteps", None)
        if M is None:
            raise InputValueError(
                f"schedule {name!r} is one of diffusers' timestep spacings ({', '.join(SPACINGS)}) "
                f"and needs a discrete-time process (DiscreteVPSDE, e.g. a loaded diffusers "
                f"pipeline), got {type(sde).__name__}; its grids: {', '.join(CONTINUOUS_GRIDS)}")
        taus = diffusers_timesteps(name, M, steps, getattr(sde, "steps_offset", 0))
        return sde.index_to_time(taus)

    grid.__name__ = name
    return grid


CONTINUOUS_GRIDS = {"uniform": uniform, "logsnr": logsnr, "quadratic": quadratic,
                    "karras": karras, "edm": edm}


def auto(sde, steps: int, t_end: float) -> torch.Tensor:
    """The fast solvers' default grid: ``quadratic`` for the variance-preserving processes, and
    ``logsnr`` (geometric ``sigma``, score_sde's VE grid) for VE, where a grid quadratic in ``t``
    crowds the steps at the low-noise end: 1.16-3.1x the error of ``logsnr`` at 10-20 NFE on the
    mixtures. Chosen by ``benchmarks/bench_defaults.py`` (``docs/benchmarks.md``)."""
    return (logsnr if isinstance(sde, VESDE) else quadratic)(sde, steps, t_end)

#: diffusers' ``timestep_spacing`` values, grids of discrete processes. Such a grid is the
#: ``steps`` timesteps of ``set_timesteps(steps)`` and nothing else: it starts where diffusers
#: starts (``leading``: index 900 of 1000 for 10 steps, not ``T``), ends at its last timestep
#: (``t_end`` is not used), and has ``steps - 1`` intervals; the final denoise at its last time is
#: diffusers' last step (to ``alpha = 1``), so ``steps`` network calls in all, as in diffusers.
SPACINGS = ("leading", "trailing", "linspace")
#: Every grid by name: the continuous ones, ``auto`` (the default of the fast solvers) and the
#: spacings.
GRIDS = {**CONTINUOUS_GRIDS, "auto": auto, **{name: _spacing(name) for name in SPACINGS}}


def check_grid(ts: torch.Tensor, sde, t_end: float) -> torch.Tensor:
    """An explicit grid: 1-D, at least two points, from ``T`` down to ``t_end``, strictly
    decreasing."""
    ts = as_time(ts).to(torch.float64).flatten()
    if ts.numel() < 2:
        raise InputValueError(f"an explicit time grid needs at least 2 points, got {ts.numel()}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise InputValueError("an explicit time grid must be strictly decreasing (from T to t_end)")
    # float32 grids are accepted: endpoints within float32 precision are pinned exactly
    if not (math.isclose(float(ts[0]), sde.T, rel_tol=1e-6)
            and math.isclose(float(ts[-1]), t_end, rel_tol=1e-6)):
        raise InputValueError(f"an explicit time grid must run from T = {sde.T} to t_end = {t_end}, "
                              f"got {float(ts[0]):.6g} .. {float(ts[-1]):.6g}")
    return _pin(ts.clone(), sde, t_end)


def make_grid(schedule, sde, steps: int, t_end: float) -> torch.Tensor:
    """The grid named ``schedule`` (see :data:`GRIDS`) or an explicit tensor of times."""
    if isinstance(schedule, torch.Tensor):
        return check_grid(schedule, sde, t_end)
    check_choice("schedule", schedule, GRIDS)
    check_int("steps", steps, minimum=1)
    return GRIDS[schedule](sde, steps, t_end)

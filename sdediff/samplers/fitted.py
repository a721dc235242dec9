"""Time grids fitted to the model on a pilot batch, in the spirit of "Align Your Steps" (Sabour,
Fidler & Kreis 2024): the interior times of a fixed-step sampler's grid are chosen to minimise
that sampler's error on a small pilot batch, once, and then reused for every batch.

This module holds no sampler (nothing is registered): :func:`fit_grid` returns a
:class:`FittedGrid` whose ``times`` go to any fixed-step sampler as ``schedule=``::

    fitted = fit_grid(model, "ipndm", nfe=10, shape=(256, 2),
                      generator=torch.Generator().manual_seed(1234), order=3)
    x = sd.sample(model, x_T=x_T, **fitted.sample_options())   # sampler, steps, schedule, order
    fitted.save("grid.json"); fitted = FittedGrid.load("grid.json")

**Objective, without the evaluation's reference.** From the pilot's ``x_T`` the reference endpoint
is the probability-flow ODE solved by the ``ode`` sampler (torchdiffeq ``dopri5``) at tight
tolerance (:data:`REFERENCE_TOL` for a float64 pilot, :data:`REFERENCE_TOL_LOW` for a float32 or
lower-precision one, where tighter tolerances only chase rounding); the objective is ``log`` of the
RMS distance (per sample, ``sqrt(mean_b ||x_b - x_ref,b||^2)``) between the sampler's
``denoise=False`` output on the candidate grid and that reference. Nothing of the batch the grid is
later judged on enters: pass a pilot drawn with its own seed. With ``trim = f`` the RMS leaves out
the worst fraction ``f`` of the pilot samples (default 0): in high dimension a pilot sample on a
decision boundary between two components lands in the wrong one under almost any grid, and its
constant, large error can steer the fit. Trimming helps only when the pilot holds such a sample,
hence off by default; a larger pilot is the other cure (measurements: ``docs/fast_solvers.md``,
'Measured behaviour of fitted grids').

**Parameterisation.** A grid of ``N`` steps from ``T`` to ``t_end`` is ``N`` positive increments
of the half log-SNR ``lambda``: ``lambda_i = lambda_T + (lambda_end - lambda_T) cumsum(softmax(theta))_i``
with ``theta`` in ``R^N``, mapped back with ``sde.t_of_log_snr``. Every ``theta`` is a valid,
strictly decreasing grid with the endpoints pinned (each increment is floored at
:data:`MIN_SHARE` of the span), so the search is unconstrained; ``theta = 0`` is the ``logsnr``
grid. ``init`` names the grid to start from; ``"best"`` (default) tries every named grid on the
pilot and starts from the one with the lowest error. The search then runs in two stages:

1. a **warp** of the initial grid with :data:`WARP_KNOTS` parameters (the log-increments plus a
   piecewise-linear function of the step's position), by Nelder-Mead from a simplex of edge
   :data:`WARP_SIMPLEX`, with :data:`WARP_SHARE` of the budget: few parameters, so it moves the
   whole grid at once;
2. the **per-step** increments from there, by Powell's method (``scipy.optimize``), until the
   budget of ``iterations`` objective evaluations (sampler runs on the pilot) is spent.

The start selection, the initial grid and the final report add ``len(CONTINUOUS_GRIDS) + 3``
runs.

**Pilot cost.** Every network call of the fit (the reference run and each trial run on the
pilot) is counted into :attr:`FittedGrid.pilot_nfe`, reported separately: it is paid once per
(model, sampler, NFE), never inside the per-sample NFE of the samples drawn with the grid.

Shapes: ``pilot`` is ``(B, ...)`` like any ``x_T``; ``times`` is a float64 tensor of ``steps + 1``
points from ``T`` down to ``t_end``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import (
    InputValueError,
    NumericalError,
    check_batch,
    check_choice,
    check_float,
    check_int,
    check_score_model,
)
from ..score import ScoreModel
from .grids import CONTINUOUS_GRIDS, check_grid, make_grid

#: Tolerance (rtol = atol) of the ``ode`` dopri5 reference run on the pilot batch.
REFERENCE_TOL = 1e-7
#: The same for a pilot (and so a network) below float64: float32 rounding of a network's output
#: is ~1e-6 relative, so 1e-7 would only buy steps (about 1600 calls instead of 300 on the digits
#: model).
REFERENCE_TOL_LOW = 1e-5
#: Knots of the stage-1 warp (piecewise-linear log-increment correction over the step index).
WARP_KNOTS = 5
#: Default budget of objective evaluations (each is one sampler run on the pilot batch).
ITERATIONS = 600
#: Edge of the stage-1 Nelder-Mead start simplex in log-increment units (0.5: a knot's steps
#: grow or shrink by e^0.5 = 1.65; scipy's default for a zero start is 0.00025, which would
#: leave the warp stuck near the initial grid).
WARP_SIMPLEX = 0.5
#: Share of ``iterations`` given to the stage-1 warp.
WARP_SHARE = 0.25
#: Floor of each step's share of the lambda span (keeps the candidate grids strictly decreasing).
MIN_SHARE = 1e-6
#: Format version of the JSON written by :meth:`FittedGrid.save`.
FORMAT = 1


@dataclass
class FittedGrid:
    """A time grid fitted to one (model, sampler, NFE) on a pilot batch.

    ``times``: float64 ``(steps + 1,)`` from ``T`` to ``t_end``; ``sampler``/``options``/``steps``
    /``nfe``: what it was fitted for (``nfe`` per sample, as counted); ``pilot_nfe``: network calls
    spent fitting (reference run included), never part of ``nfe``; ``pilot_error``: the pilot RMS
    error on the ``init`` grid and on the fitted grid; ``process``: ``sde.config()``.
    """

    times: torch.Tensor
    sampler: str
    steps: int
    nfe: int
    t_end: float
    pilot_nfe: int
    options: dict[str, Any] = field(default_factory=dict)
    init: str = "logsnr"
    pilot_size: int = 0
    pilot_error: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0
    trim: float = 0.0
    process: dict[str, Any] = field(default_factory=dict)

    def sample_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`sdediff.sample`: ``sampler``, ``steps``, ``schedule``
        (these ``times``), ``t_end`` and the sampler's options."""
        return {"sampler": self.sampler, "steps": self.steps, "schedule": self.times.clone(),
                "t_end": self.t_end, **self.options}

    def save(self, path) -> Path:
        """Write JSON (times as a list of floats, with the metadata); returns the path."""
        path = Path(path)
        record = {k: v for k, v in asdict(self).items() if k != "times"}
        record = {"format": FORMAT, "times": self.times.tolist(), **record}
        path.write_text(json.dumps(record, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path) -> FittedGrid:
        """Read what :meth:`save` wrote."""
        record = json.loads(Path(path).read_text())
        version = record.pop("format", None)
        if version != FORMAT:
            raise InputValueError(f"{path}: fitted-grid format {version!r}, expected {FORMAT}")
        times = torch.tensor(record.pop("times"), dtype=torch.float64)
        return cls(times=times, **record)


def _lambda_span(sde, t_end: float) -> tuple[float, float]:
    lam = sde.log_snr(torch.tensor([sde.T, t_end], dtype=torch.float64))
    return float(lam[0]), float(lam[1])


def _times(theta: np.ndarray, sde, t_end: float) -> torch.Tensor:
    """The grid of the increments ``softmax(theta)`` in lambda (see the module docstring)."""
    lam_T, lam_end = _lambda_span(sde, t_end)
    w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
    w = (w + MIN_SHARE) / (1 + w.numel() * MIN_SHARE)
    frac = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)])
    ts = sde.t_of_log_snr(lam_T + frac * (lam_end - lam_T))
    ts[0], ts[-1] = sde.T, t_end
    return ts


def _theta_of(times: torch.Tensor, sde) -> np.ndarray:
    """Inverse of :func:`_times`: log-increments in lambda (defined up to a constant)."""
    lam = sde.log_snr(times.to(torch.float64))
    return torch.log(lam[1:] - lam[:-1]).numpy()


def fit_grid(model: ScoreModel, sampler: str = "dpm_solver++", nfe: int = 10,
             pilot: torch.Tensor | None = None, *, shape=None,
             generator: torch.Generator | None = None, t_end: float = 1e-3,
             init: str = "best", iterations: int = ITERATIONS, trim: float = 0.0,
             **sampler_options) -> FittedGrid:
    """Fit the interior times of ``sampler``'s grid at ``nfe`` network calls per sample.

    ``pilot``: the pilot ``x_T`` ``(B, ...)``; or ``shape`` (and ``generator``) to draw it from
    the prior (in the network's dtype, float64 for a plain function such as an exact mixture). Use a pilot
    independent of the batches the grid is judged on (its own seed).
    ``init``: the named grid to start from, or ``"best"`` (the named grid with the lowest pilot
    error); ``iterations``: budget of the search in sampler runs on the pilot; ``trim``: the
    fraction of worst pilot samples the objective leaves out. ``sampler_options`` are the
    sampler's own (``order=``, ...). Returns a :class:`FittedGrid`; its ``pilot_nfe`` counts
    every network call spent here.
    """
    from scipy.optimize import minimize

    from . import get

    sde = check_score_model(model).sde
    if "schedule" in sampler_options:
        raise InputValueError("fit_grid chooses the schedule itself; do not pass schedule=")
    chosen = get(sampler, **sampler_options)
    if chosen.adaptive or chosen.is_stochastic():
        raise InputValueError(f"fit_grid needs a deterministic fixed-step sampler; {sampler!r} is "
                              f"{'adaptive' if chosen.adaptive else 'stochastic'}")
    check_int("nfe", nfe, minimum=1)
    check_float("t_end", t_end, 0.0, sde.T, low_open=True, high_open=True)
    fit = chosen.steps_within(nfe, sde, t_end)
    if fit is None or fit[1] != nfe:
        raise InputValueError(f"sampler {sampler!r} has no step count costing exactly nfe = {nfe} "
                              "network calls; choose another nfe")
    steps = fit[0]
    check_choice("init", init, ("best", *CONTINUOUS_GRIDS))
    check_int("iterations", iterations, minimum=0)
    check_float("trim", trim, 0.0, 0.5, high_open=True)
    if pilot is None:
        if shape is None:
            raise InputValueError("give the pilot batch: pilot=x_T, or shape=(batch, ...) and generator")
        # float64 for a function of x (an exact mixture); a network's own dtype otherwise
        pilot = sde.prior_sample(tuple(shape), generator=generator,
                                 dtype=model.dtype or torch.float64, device=model.device)
    check_batch("pilot", pilot)

    nfe_before = model.nfe
    tol = REFERENCE_TOL if pilot.dtype == torch.float64 else REFERENCE_TOL_LOW
    ode = get("ode", rtol=tol, atol=tol)
    reference = ode.solve(model, pilot, ode.grid(sde, None, t_end)).x
    runs = 0

    keep = pilot.shape[0] - int(trim * pilot.shape[0])     # samples the objective keeps

    def pilot_errors(times: torch.Tensor) -> tuple[float, float]:
        """(objective, full RMS): the RMS over the ``keep`` best-resolved pilot samples, and
        over all of them."""
        nonlocal runs
        runs += 1
        try:
            x = chosen.solve(model, pilot, times).x
        except (ValueError, NumericalError):    # a degenerate candidate grid: not a minimum
            return math.inf, math.inf
        sq = (x.double() - reference.double()).reshape(x.shape[0], -1).pow(2).sum(1)
        kept = float(sq.sort().values[:keep].mean().sqrt())
        full = float(sq.mean().sqrt())
        return (kept if math.isfinite(kept) else math.inf), (full if math.isfinite(full)
                                                             else math.inf)

    def objective(theta: np.ndarray) -> float:
        return math.log(max(pilot_errors(_times(theta, sde, t_end))[0], 1e-300))

    if init == "best":      # the named grid with the lowest pilot error
        errors = {name: pilot_errors(make_grid(name, sde, steps, t_end))[0]
                  for name in CONTINUOUS_GRIDS}
        init = min(errors, key=errors.get)
    theta0 = _theta_of(make_grid(init, sde, steps, t_end), sde)
    best_theta, best = theta0, objective(theta0)
    if steps >= 2 and iterations > 0:
        # stage 1: a smooth warp of the log-increments (WARP_KNOTS hat functions over the steps)
        position = np.linspace(0.0, 1.0, steps)
        knots = np.linspace(0.0, 1.0, WARP_KNOTS)
        hats = np.maximum(0.0, 1.0 - np.abs(position[:, None] - knots[None, :]) * (WARP_KNOTS - 1))
        search_start = runs
        simplex = np.vstack([np.zeros(WARP_KNOTS), WARP_SIMPLEX * np.eye(WARP_KNOTS)])
        result = minimize(lambda c: objective(theta0 + hats @ c), np.zeros(WARP_KNOTS),
                          method="Nelder-Mead",
                          options={"maxfev": max(1, int(iterations * WARP_SHARE)),
                                   "initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-4,
                                   "adaptive": True})
        if result.fun < best:
            best_theta, best = theta0 + hats @ result.x, float(result.fun)
        # stage 2: every increment, by Powell's method, with the rest of the budget
        remaining = iterations - (runs - search_start)
        if remaining > 0:
            result = minimize(objective, best_theta, method="Powell",
                              options={"maxfev": remaining, "xtol": 1e-3, "ftol": 1e-4})
            if result.fun < best:
                best_theta, best = result.x, float(result.fun)
    times = check_grid(_times(best_theta, sde, t_end), sde, t_end)
    init_error = pilot_errors(_times(theta0, sde, t_end))[1]
    fitted_error = pilot_errors(times)[1]
    return FittedGrid(
        times=times, sampler=sampler, steps=steps, nfe=nfe, t_end=t_end,
        pilot_nfe=model.nfe - nfe_before, options=dict(sampler_options), init=init,
        pilot_size=int(pilot.shape[0]),
        pilot_error={"init": init_error, "fitted": fitted_error}, evaluations=runs,
        trim=trim,
        process=sde.config())

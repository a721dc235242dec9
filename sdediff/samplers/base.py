"""The :class:`Sampler` base: options, grid, noise, NFE counting, the final denoise, and
:meth:`Sampler.solve`, the one door every caller goes through.

A sampler file owns only its update rule: a ``run(model, x, ts, noise, observe)`` method whose
loop over ``(t_cur, t_next)`` reads like the paper's algorithm. Everything around it is here:

- **options**: ``defaults`` declares every option with its default; an unknown option raises
  naming the allowed ones, and ``check_options`` hooks validate values;
- **declared capabilities**: ``family``, ``order`` (global convergence order of the
  deterministic method; the weak order for stochastic ones), ``stochastic``, ``adaptive``,
  ``reversible`` (the update rule is written for either direction of time, so the sampler also
  encodes, on its grid flipped), ``paired`` (the state is a pair of tensors, as in the exactly
  invertible EDICT and BDIA: encoding returns the latent pair ``(B, 2, ...)`` and decoding takes
  it back, :meth:`Sampler.run_pair`), ``nfe(steps)`` (exact network calls for ``steps`` steps,
  ``None`` for adaptive solvers), ``default_steps``, ``min_steps``. Docs, CLI help, the
  encoder and the benchmarks read these; nothing keeps a list by hand;
- **grid**: :meth:`Sampler.grid` from ``T`` exactly to ``t_end`` in float64, with one rule for
  ``steps`` (below);
- **noise**: a seeded :class:`~sdediff.samplers.noise.BrownianNoise` (or, for
  :class:`~sdediff.streams.SampleSeeds`, per-sample :class:`~sdediff.samplers.noise.SampleBrownian`)
  for stochastic samplers;
- **solve**: :meth:`Sampler.solve` integrates a state along any grid (either direction for a
  reversible sampler) and owns the no-grad context, the progress bar, the NFE count, the timing
  and the non-finite check. :meth:`Sampler.__call__` is the prior draw, the sampler's grid,
  ``solve`` and the final denoise. ``encode``, ``decode``, ``fit_grid`` and the benchmarks call
  ``solve`` with their own grids; nothing calls ``run`` directly;
- **denoise**: with ``denoise=True`` the result is the model's ``x0`` prediction at ``t_end``
  (Tweedie's formula; one more network call, counted).

**One rule for ``steps``.** ``steps=None`` takes the sampler's default (or, for an explicit grid,
its length). A ``steps`` the sampler cannot honour raises ``ValueError`` naming why and what to
pass instead: an adaptive sampler chooses its own steps (give ``rtol``/``atol``), and an
explicit grid of ``n + 1`` times has ``n`` steps.

``run`` keeps all state in local variables, so a sampler object can be called again and again.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ..checks import (
    InputTypeError,
    InputValueError,
    NumericalError,
    check_batch,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_options,
    check_score_model,
    check_shape,
)
from ..score import ScoreModel
from ..streams import SampleSeeds, check_source
from .grids import GRIDS, SPACINGS, check_grid, make_grid
from .noise import BrownianNoise, brownian

#: Where generation stops when ``t_end`` is not given (design: sampling ends at ``1e-3``).
T_END = 1e-3
#: An error-controlled sampler's larger tolerance must be at least this many machine epsilons of
#: the sample dtype: below it, the embedded error estimate is rounding noise (float32: 10 eps =
#: 1.2e-6) and the steps never settle.
TOLERANCE_EPS = 10


def check_tolerances(options: dict) -> None:
    """``options["rtol"]`` and ``["atol"]`` of an error-controlled sampler: each ``>= 0``, not both 0."""
    check_float("rtol", options["rtol"], 0.0, None)
    check_float("atol", options["atol"], 0.0, None)
    if options["rtol"] == 0.0 and options["atol"] == 0.0:
        raise InputValueError("rtol and atol cannot both be 0: the error ratio would be infinite")


def check_resolvable(name: str, rtol: float, atol: float, dtype: torch.dtype) -> None:
    """Refuse tolerances the sample ``dtype`` cannot resolve (:data:`TOLERANCE_EPS`)."""
    resolution = TOLERANCE_EPS * torch.finfo(dtype).eps
    if max(rtol, atol) < resolution:
        raise InputValueError(
            f"{name}: rtol = {rtol:g}, atol = {atol:g} are below what {dtype} resolves "
            f"({TOLERANCE_EPS} eps = {resolution:.3g}); loosen them or sample in float64")


@dataclass
class SampleResult:
    """``x``: samples ``(B, ...)``; ``nfe``: counted network calls; ``times``: the float64 grid
    used (for adaptive solvers, just its two ends: their steps are internal); ``trajectory``:
    states after each step ``(steps + 1, B, ...)`` when asked for; ``seconds``: wall time;
    ``evaluations``: network evaluations per sample, ``nfe`` times the model's
    ``evaluations_per_call`` (``2 nfe`` under classifier-free guidance, whose one forward pass
    of ``2B`` evaluates each sample twice)."""

    x: torch.Tensor
    nfe: int
    times: torch.Tensor
    trajectory: torch.Tensor | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    evaluations: int | None = None

    def __post_init__(self):
        if self.evaluations is None:
            self.evaluations = self.nfe


class Observer:
    """What a sampler's ``run`` reports to: ``observe(i, x)`` after step ``i`` (1-based, exactly
    once per step of the grid), and, for adaptive solvers whose steps are internal,
    ``observe.at(t)`` whenever they reach time ``t`` (it only moves the progress bar).

    The bar counts steps for fixed-step samplers and the fraction of ``[ts[0], ts[-1]]``
    covered for adaptive ones. Trajectories are kept on request.
    """

    #: Units of an adaptive solver's bar (the fraction of the time span covered).
    RESOLUTION = 1000

    def __init__(self, ts: torch.Tensor, by_time: bool, progress: bool, desc: str,
                 keep_trajectory: bool, x: torch.Tensor):
        self.start, self.span = float(ts[0]), float(ts[-1] - ts[0])
        self.times = ts.tolist()
        self.by_time = by_time
        self.done = 0
        #: Network calls and wall time of the integration, set when it ends (``Sampler.observing``).
        self.nfe, self.seconds = 0, 0.0
        total = self.RESOLUTION if by_time else len(self.times) - 1
        self.bar = tqdm(total=total, disable=not progress, desc=desc, dynamic_ncols=True)
        self.trajectory = [x.detach().clone()] if keep_trajectory else None

    def __call__(self, i: int, x: torch.Tensor) -> None:
        if self.by_time:
            self.at(self.times[i])
        else:
            self.bar.update(1)
        if self.trajectory is not None:
            self.trajectory.append(x.detach().clone())

    def at(self, t) -> None:
        if not self.by_time or self.bar.disable:
            return      # no bar to move: do not read t (on an accelerator that waits for it)
        t = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
        reached = int(self.RESOLUTION * min(1.0, (t - self.start) / self.span))
        if reached > self.done:
            self.bar.update(reached - self.done)
            self.done = reached

    def complete(self) -> None:
        """The integration reached ``ts[-1]``: fill an adaptive solver's bar (its last reported
        time can fall a hair short of the end: 999/1000)."""
        if self.by_time and self.done < self.RESOLUTION:
            self.bar.update(self.RESOLUTION - self.done)
            self.done = self.RESOLUTION

    def close(self) -> None:
        self.bar.close()


class Sampler:
    """Base class of every registered sampler (see the module docstring)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    order: ClassVar[float] = 1
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    #: The update rule holds for either direction of time: the sampler can encode.
    reversible: ClassVar[bool] = False
    #: The state is a pair (EDICT, BDIA): ``run_pair`` replaces ``run``; a latent is the pair
    #: stacked on dim 1, ``(B, 2, ...)``.
    paired: ClassVar[bool] = False
    default_steps: ClassVar[int] = 100
    min_steps: ClassVar[int] = 1
    #: Every option with its default. ``schedule`` is the time grid of fixed-step samplers.
    defaults: ClassVar[dict[str, Any]] = {"schedule": "uniform"}

    def __init__(self, **options):
        check_options(f"sampler {self.name!r}", options, self.defaults)
        self.options = {**self.defaults, **options}
        schedule = self.options.get("schedule")
        if schedule is not None and not isinstance(schedule, torch.Tensor):
            check_choice("schedule", schedule, GRIDS)
        self.check_options()

    # --- per-sampler hooks ------------------------------------------------------------------
    def check_options(self) -> None:
        """Validate option values (override; raise ValueError naming the bad value)."""

    def nfe(self, steps: int) -> int | None:
        """Exact network calls of ``run`` for ``steps`` steps (``None``: adaptive, measured)."""
        return steps

    def is_stochastic(self) -> bool:
        """Whether this configured sampler draws noise (DDIM with ``eta > 0`` does)."""
        return self.stochastic

    @property
    def differentiable(self) -> bool:
        """Whether :meth:`solve` keeps the autograd graph (``ode`` with ``adjoint=True``)."""
        return False

    def run(self, model: ScoreModel, x: torch.Tensor, ts: torch.Tensor,
            noise: BrownianNoise | None, observe: Observer) -> torch.Tensor:
        """Integrate from ``x`` at ``ts[0]`` to ``ts[-1]``; call ``observe(i, x)`` after step
        ``i`` (1-based). Returns the state at ``ts[-1]``."""
        raise NotImplementedError(f"sampler {self.name!r} does not define run()")

    def run_pair(self, model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, observe: Observer,
                 pair: bool) -> torch.Tensor:
        """A :attr:`paired` sampler's integration along ``ts``: from a single state ``x``
        ``(B, ...)`` (``pair=False``: generation, or the start of an encoding) or from a latent
        pair ``(B, 2, ...)`` (``pair=True``: decoding). Returns the pair when ``ts`` increases
        (an encoding's latent) and the single state when it decreases."""
        raise NotImplementedError(f"sampler {self.name!r} does not define run_pair()")

    def times(self, sde, steps: int, t_end: float) -> torch.Tensor:
        """The ``steps``-step grid from ``T`` to ``t_end`` (override for grids of another kind,
        e.g. ``ddpm``'s chain indices)."""
        return make_grid(self.options.get("schedule", "uniform"), sde, steps, t_end)

    # --- the grid and the step rule ---------------------------------------------------------
    def grid(self, sde, steps: int | None, t_end: float) -> torch.Tensor:
        """The float64 grid from ``T`` to ``t_end`` for ``steps`` steps (``None``: the default).

        An adaptive sampler's grid is its two ends, and it refuses ``steps``; an explicit
        ``schedule`` tensor sets the steps itself, so a ``steps`` that disagrees is refused.
        """
        if steps is not None:
            check_int("steps", steps, minimum=self.min_steps)
        if self.adaptive:
            if steps is not None:
                raise InputValueError(
                    f"steps={steps} given to the adaptive sampler {self.name!r}{self._method()}, "
                    "which chooses its own steps; set rtol/atol instead"
                    + (", or choose a fixed-step method (method='rk4', steps=...)"
                       if self.name == "ode" else ""))
            return torch.tensor([sde.T, t_end], dtype=torch.float64)
        schedule = self.options.get("schedule")
        if isinstance(schedule, torch.Tensor):
            ts = check_grid(schedule, sde, t_end)
            if steps is not None and steps != ts.numel() - 1:
                raise InputValueError(
                    f"steps={steps} disagrees with the explicit grid of {ts.numel()} times "
                    f"({ts.numel() - 1} steps); pass steps={ts.numel() - 1} or leave steps out")
            return ts
        return self.times(sde, self.default_steps if steps is None else steps, t_end)

    def _method(self) -> str:
        method = self.options.get("method")
        return "" if method is None else f" with method {method!r}"

    def spacing(self) -> str | None:
        """The diffusers spacing (``leading``, ``trailing``, ``linspace``) this sampler's grid
        follows, or ``None``: such a grid's ``steps`` are its timesteps, ``steps - 1`` intervals
        (:data:`~sdediff.samplers.grids.SPACINGS`)."""
        schedule = self.options.get("schedule")
        return schedule if isinstance(schedule, str) and schedule in SPACINGS else None

    def calls(self, steps: int) -> int | None:
        """Network calls of the solve (no final denoise) for ``steps``: :meth:`nfe` of the grid's
        intervals, ``steps - 1`` on a diffusers spacing."""
        return self.nfe(steps - 1 if self.spacing() else steps)

    def steps_within(self, budget: int, sde, t_end: float, reserve: int = 0
                     ) -> tuple[int, int] | None:
        """``(steps, nfe)``: the most steps whose exact cost ``nfe(steps) + reserve`` fits
        ``budget`` network calls (and whose grid exists: ``ddpm``'s chain has only so many
        steps), or ``None`` when even ``min_steps`` costs more. Heun's ``2N - 1`` enters a
        budget of 10 at 9 calls. Adaptive samplers (``nfe(steps)`` is ``None``) have no answer:
        they are run at a tolerance instead."""
        check_int("budget", budget, minimum=1)
        if self.nfe(self.min_steps) is None:
            raise InputValueError(f"sampler {self.name!r} is adaptive: its network calls are measured, "
                                  "not chosen by steps; give it rtol/atol instead of an NFE budget")
        best = None
        steps = max(self.min_steps, 2) if self.spacing() else self.min_steps
        while self.calls(steps) + reserve <= budget:
            best = steps
            steps += 1
        while best is not None:
            try:
                self.grid(sde, best, t_end)
                return best, self.calls(best)
            except ValueError:
                best = best - 1 if best > self.min_steps else None
        return None

    # --- the one door -----------------------------------------------------------------------
    @contextlib.contextmanager
    def observing(self, model: ScoreModel, ts: torch.Tensor, x: torch.Tensor, *,
                  progress: bool = False, desc: str | None = None, keep_trajectory: bool = False):
        """The bookkeeping around one integration along ``ts``: the grad mode (none, unless the
        sampler is :attr:`differentiable`), the progress bar, the NFE count and the wall time.
        Yields the :class:`Observer`; on exit it carries ``nfe`` and ``seconds``.
        Used by :meth:`solve` and by the ``ode`` sampler's augmented likelihood solve."""
        observer = Observer(ts, self.adaptive, progress, desc or self.name, keep_trajectory, x)
        start, nfe_before = time.perf_counter(), model.nfe
        grad = contextlib.nullcontext() if self.differentiable else torch.no_grad()
        try:
            with grad:
                yield observer
            observer.complete()
        finally:
            observer.close()
            observer.nfe = model.nfe - nfe_before
            observer.seconds = time.perf_counter() - start

    def check_direction(self, ts: torch.Tensor) -> None:
        """Forward in time (encoding) needs a deterministic, :attr:`reversible` sampler."""
        if ts.numel() < 2 or float(ts[-1]) <= float(ts[0]):
            return
        if self.is_stochastic():
            raise InputValueError(f"sampler {self.name!r} is stochastic with these options; it cannot "
                                  "run forward in time (encoding): use a deterministic one, e.g. 'ode' "
                                  "or 'ddim' (eta=0)")
        if not self.reversible:
            from . import reversible

            raise InputValueError(f"sampler {self.name!r} cannot run forward in time (encoding); "
                                  f"allowed: {', '.join(reversible())}")

    def solve(self, model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, *,
              generator: torch.Generator | SampleSeeds | None = None, denoise: bool = False,
              progress: bool = False, desc: str | None = None,
              keep_trajectory: bool = False, pair: bool = False) -> SampleResult:
        """Carry ``x`` ``(B, ...)`` at ``ts[0]`` along the grid ``ts`` to ``ts[-1]``.

        ``ts``: a strictly monotone 1-D grid in ``(0, T]``, decreasing to sample (or decode),
        increasing to encode (reversible samplers only); adaptive samplers use only its two ends.
        ``generator`` seeds a stochastic sampler's Brownian path: a ``torch.Generator`` (one path
        for the batch) or :class:`~sdediff.streams.SampleSeeds` (sample ``i``'s own). With
        ``denoise=True`` the result is ``model.x0`` at ``ts[-1]`` (one more call, counted).
        A :attr:`paired` sampler returns the latent pair ``(B, 2, ...)`` when ``ts`` increases,
        and takes one (``pair=True``, ``x`` of shape ``(B, 2, ...)``) to decode.
        Returns a :class:`SampleResult`; a non-finite result raises :class:`~sdediff.checks.NumericalError`.
        """
        model = check_score_model(model)
        check_batch("x", x)
        check_source(generator)
        ts = self._check_times(model.sde, ts)
        self.check_direction(ts)
        if pair:
            self.check_pair(x, ts)
        return self._solve(model, x, ts, generator, denoise, progress, desc, keep_trajectory, pair)

    def check_pair(self, x: torch.Tensor, ts: torch.Tensor, name: str = "x") -> None:
        """A latent pair ``(B, 2, ...)`` goes only to a :attr:`paired` sampler, backward in time."""
        if not self.paired:
            from . import paired

            raise InputValueError(f"sampler {self.name!r} takes a single state, not a latent pair; "
                                  f"samplers with pair latents: {', '.join(paired())}")
        if float(ts[-1]) > float(ts[0]):
            raise InputValueError("a latent pair is decoded (ts decreasing), not encoded again")
        if x.dim() < 3 or x.shape[1] != 2:
            raise InputValueError(
                f"{name} has shape {tuple(x.shape)}; sampler {self.name!r} decodes the latent pair "
                "(B, 2, ...) that its encode returned (to generate from a single x_T, use "
                f"sd.sample(model, x_T=..., sampler={self.name!r}))")

    def _solve(self, model, x, ts, generator, denoise, progress, desc, keep_trajectory,
               pair: bool = False) -> SampleResult:
        """:meth:`solve` once its arguments are checked."""
        where = model.device
        if where is not None and x.device != where:
            raise InputValueError(f"x is on {x.device} but the model's network is on {where}; move "
                                  f"one of them (x.to({str(where)!r}), or load the model with "
                                  f"device={str(x.device)!r})")
        noise = None
        if self.is_stochastic():
            noise = brownian(generator, x.shape, model.sde.T, dtype=x.dtype, device=x.device)
        model.remember_times(ts)      # the grid's coefficients once, not per network call
        with self.observing(model, ts, x, progress=progress, desc=desc,
                            keep_trajectory=keep_trajectory) as observe:
            out = (self.run_pair(model, x, ts, observe, pair) if self.paired
                   else self.run(model, x, ts, noise, observe))
            if denoise:
                out = model.x0(out, ts[-1])
        if not bool(torch.isfinite(out).all()):
            raise NumericalError(
                f"sampler {self.name!r}: the result has non-finite values; check that the model's "
                "output is finite, take more steps (or tighten rtol/atol), or sample in float64")
        trajectory = observe.trajectory
        return SampleResult(x=out, nfe=observe.nfe, times=ts,
                            trajectory=torch.stack(trajectory) if trajectory is not None else None,
                            seconds=observe.seconds,
                            evaluations=observe.nfe * model.evaluations_per_call)

    @staticmethod
    def _check_times(sde, ts) -> torch.Tensor:
        if not isinstance(ts, torch.Tensor):
            raise InputTypeError(f"ts must be a 1-D tensor of times, got {type(ts).__name__}")
        # the grid lives on the host, whatever the device: its times are read as Python floats
        # (one time per step, no device sync) and its coefficients computed once in float64
        ts = ts.detach().to(device="cpu", dtype=torch.float64).flatten()
        if ts.numel() < 2:
            raise InputValueError(f"ts needs at least 2 times, got {ts.numel()}")
        steps = ts[1:] - ts[:-1]
        if not (bool((steps < 0).all()) or bool((steps > 0).all())):
            raise InputValueError("ts must be strictly monotone (decreasing to sample, increasing to "
                                  "encode)")
        lo, hi = float(ts.min()), float(ts.max())
        if not (0.0 < lo and hi <= sde.T):
            raise InputValueError(f"ts must lie in (0, T = {sde.T}], got {lo:.6g} .. {hi:.6g}")
        return ts

    def __call__(self, model: ScoreModel, x_T: torch.Tensor | None = None, *, shape=None,
                 steps: int | None = None, generator: torch.Generator | SampleSeeds | None = None,
                 t_end: float | None = None, denoise: bool = True, progress: bool = False,
                 keep_trajectory: bool = False, dtype: torch.dtype = torch.float32,
                 device=None) -> SampleResult:
        """Generate: the prior draw (of ``shape``, seeded by ``generator``; or the given ``x_T``),
        this sampler's grid from ``T`` to ``t_end`` (default :data:`T_END`), :meth:`solve`, and
        the final denoise. A diffusers spacing ends at its own last timestep and refuses
        ``t_end``.

        ``device``: where the prior is drawn and the sampler runs (``"cpu"``, ``"cuda"``,
        ``"cuda:N"``, ``"mps"``; default: the model's, :attr:`ScoreModel.device
        <sdediff.score.ScoreModel.device>`). A draw seeded by a generator on another device is
        made there and moved, so one seed gives one ``x_T`` on every device.
        ``generator=sd.SampleSeeds(seed)`` draws sample ``i``'s ``x_T`` and Brownian path from
        ``(seed, i)`` alone: the same sample whatever the batch size (to float rounding of the
        network) or the split across processes. A given ``x_T`` is
        moved to ``device`` when one is named."""
        model = check_score_model(model)
        sde = model.sde
        if t_end is not None and self.spacing():
            raise InputValueError(f"t_end={t_end} given with schedule {self.spacing()!r}, whose grid "
                                  "ends at its last timestep (as diffusers); leave t_end out, or use "
                                  "a continuous grid (schedule='logsnr', ...) to end at t_end")
        t_end = T_END if t_end is None else t_end
        check_float("t_end", t_end, 0.0, sde.T, low_open=True, high_open=True)
        named = None if device is None else check_device(device)
        device = model.device if named is None else named
        if x_T is None:
            if shape is None:
                raise InputValueError("give either shape=(batch, ...) or x_T")
            x_T = sde.prior_sample(tuple(shape), generator=check_source(generator), dtype=dtype,
                                   device=device)
        else:
            check_batch("x_T", x_T)
            if shape is not None:
                check_shape("x_T", x_T, tuple(shape))
            if named is not None:
                x_T = x_T.to(named)
        # the grid is the sampler's own and x_T is checked: straight to the solve
        return self._solve(model, x_T, self.grid(sde, steps, t_end), generator, denoise,
                           progress, None, keep_trajectory)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({args})"

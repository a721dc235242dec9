"""The :class:`Sampler` base: options, grid, noise, NFE counting and the final denoise.

A sampler file owns only its update rule: a ``run(model, x, ts, noise, observe)`` method whose
loop over ``(t_cur, t_next)`` reads like the paper's algorithm. Everything around it is here:

- **options**: ``defaults`` declares every option with its default; an unknown option raises
  naming the allowed ones, and ``check_options`` hooks validate values;
- **metadata**: ``family``, ``order`` (global convergence order of the deterministic method; the
  weak order for stochastic ones), ``stochastic``, ``nfe(steps)`` (exact network calls for
  ``steps`` steps, ``None`` for adaptive solvers), ``default_steps``, ``min_steps``;
- **grid**: ``make_grid(schedule, ...)`` from ``T`` exactly to ``t_end`` in float64;
- **noise**: a seeded :class:`~sdediff.samplers.noise.BrownianNoise` for stochastic samplers;
- **NFE**: counted by the :class:`~sdediff.score.ScoreModel` (calls made, not steps taken);
- **denoise**: with ``denoise=True`` the result is the model's ``x0`` prediction at ``t_end``
  (Tweedie's formula; one more network call, counted).

``run`` keeps all state in local variables, so a sampler object can be called again and again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ..checks import check_float, check_int, check_options, check_shape, check_tensor
from ..score import ScoreModel
from .grids import GRIDS, make_grid
from .noise import BrownianNoise

Observer = Callable[[int, torch.Tensor], None]


@dataclass
class SampleResult:
    """``x``: samples ``(B, ...)``; ``nfe``: counted network calls; ``times``: the float64 grid
    used (for adaptive solvers, just ``[T, t_end]``: their steps are internal); ``trajectory``:
    states after each step ``(steps + 1, B, ...)`` when asked for; ``seconds``: wall time."""

    x: torch.Tensor
    nfe: int
    times: torch.Tensor
    trajectory: torch.Tensor | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Sampler:
    """Base class of every registered sampler (see the module docstring)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    order: ClassVar[float] = 1
    stochastic: ClassVar[bool] = False
    adaptive: ClassVar[bool] = False
    default_steps: ClassVar[int] = 100
    min_steps: ClassVar[int] = 1
    #: Every option with its default. ``schedule`` is the time grid of fixed-step samplers.
    defaults: ClassVar[dict[str, Any]] = {"schedule": "uniform"}

    def __init__(self, **options):
        check_options(f"sampler {self.name!r}", options, self.defaults)
        self.options = {**self.defaults, **options}
        if "schedule" in self.options and not isinstance(self.options["schedule"], torch.Tensor):
            from ..checks import check_choice

            check_choice("schedule", self.options["schedule"], GRIDS)
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

    def run(self, model: ScoreModel, x: torch.Tensor, ts: torch.Tensor,
            noise: BrownianNoise | None, observe: Observer) -> torch.Tensor:
        """Integrate from ``x`` at ``ts[0] = T`` to ``ts[-1] = t_end``; call ``observe(i, x)``
        after step ``i`` (1-based). Returns the state at ``t_end``."""
        raise NotImplementedError(f"sampler {self.name!r} does not define run()")

    # --- the shared driver ------------------------------------------------------------------
    def grid(self, sde, steps: int, t_end: float) -> torch.Tensor:
        return make_grid(self.options.get("schedule", "uniform"), sde, steps, t_end)

    def __call__(self, model: ScoreModel, x_T: torch.Tensor, steps: int | None = None,
                 generator: torch.Generator | None = None, t_end: float = 1e-3,
                 denoise: bool = True, progress: bool = False,
                 keep_trajectory: bool = False) -> SampleResult:
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model must be a sdediff.ScoreModel, got {type(model).__name__}; "
                            "wrap a network with ScoreModel(net, sde) or a function with "
                            "ScoreModel.from_fn(score_fn, sde)")
        sde = model.sde
        check_tensor("x_T", x_T)
        if x_T.dim() < 2:
            raise ValueError(f"x_T must have shape (batch, ...), got {tuple(x_T.shape)}")
        check_float("t_end", t_end, 0.0, sde.T, low_open=True, high_open=True)
        steps = check_int("steps", self.default_steps if steps is None else steps,
                          minimum=self.min_steps)
        ts = self.grid(sde, steps, t_end)
        n_steps = ts.numel() - 1
        noise = None
        if self.is_stochastic():
            noise = BrownianNoise.from_generator(x_T.shape, sde.T, generator, dtype=x_T.dtype,
                                                 device=x_T.device)
        trajectory = [x_T.detach().clone()] if keep_trajectory else None
        bar = tqdm(total=n_steps, disable=not progress, desc=self.name, dynamic_ncols=True)

        def observe(i: int, x: torch.Tensor) -> None:
            bar.update(1)
            if trajectory is not None:
                trajectory.append(x.detach().clone())

        start, nfe_before = time.perf_counter(), model.nfe
        try:
            with torch.no_grad():
                x = self.run(model, x_T, ts, noise, observe)
                if denoise:
                    x = model.x0(x, ts[-1])
        finally:
            bar.close()
        return SampleResult(
            x=x, nfe=model.nfe - nfe_before, times=ts,
            trajectory=torch.stack(trajectory) if trajectory is not None else None,
            seconds=time.perf_counter() - start)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({args})"


def check_x_shape(x_T: torch.Tensor, shape) -> None:
    """``x_T`` given together with ``shape`` must agree."""
    check_shape("x_T", x_T, tuple(shape))

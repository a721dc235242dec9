"""What a sweep runs: samplers x NFE budgets as a list of :class:`Task`.

**Budgets.** A fixed-step sampler meets an NFE budget with the most steps whose declared exact cost
``nfe(steps)`` (plus ``reserve`` calls: the final denoise, where the sweep counts it) fits:
:meth:`Sampler.steps_within <sdediff.samplers.base.Sampler.steps_within>`, so Heun's ``2N - 1``
enters a budget of 10 at 9 calls. A sampler whose smallest run costs more is skipped with a note.
Adaptive samplers (``ode``, ``dpm_adaptive``: ``nfe(steps)`` is ``None``) run at the tolerances
``rtol = atol = tol`` instead (the adaptive SDE solver at :data:`SDE_TOLERANCES`) and are reported
at their counted NFE. The diffusers peers meet a
budget by :func:`~sdediff.bench.peers.peer_steps`.

``--samplers`` takes names or the groups of :data:`GROUPS` (:func:`resolve_samplers`);
``--nfe`` and ``--tols`` are comma-separated lists (:func:`parse_list`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .. import samplers as registry
from ..checks import InputValueError, check_choice
from .peers import PEERS, make_scheduler, peer_steps

#: NFE budgets of the issue's sweep.
DEFAULT_NFE = (5, 10, 20, 50, 100, 200, 1000)
#: ``rtol = atol`` of the adaptive samplers.
TOLERANCES = (1e-2, 1e-3, 1e-4)
#: ``rtol = atol`` of the adaptive SDE samplers (``adaptive_sde``), whatever ``--tols`` says: a
#: strong-order-1/2 estimate needs steps of ``tol^2``, so 1e-3 would take 10^6 steps; these reach
#: the energy-distance floor (``benchmarks/results/adaptive_sde.md``).
SDE_TOLERANCES = (0.1, 0.05, 0.02)
#: Keywords of ``--samplers`` besides names.
GROUPS = ("all", "sdediff", "peers")


@dataclass
class Task:
    """One run: ``sampler`` at ``steps`` (fixed-step) or at the tolerance in ``options``."""

    sampler: str
    source: str                       # "sdediff" or "diffusers"
    options: dict
    budget: int | None
    steps: int | None


def parse_list(text: str | Sequence, what: str, kind=int) -> list:
    """``"10,20,50"`` (or a sequence) as a list of positive ``kind`` values."""
    items = text.split(",") if isinstance(text, str) else list(text)
    values = []
    for item in items:
        try:
            value = kind(item.strip()) if isinstance(item, str) else kind(item)
        except ValueError:
            raise InputValueError(f"{what} must be a comma-separated list of positive numbers "
                                  f"(e.g. 10,20,50), got {text!r}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise InputValueError(f"{what} must be positive, got {item!r} in {text!r}")
        values.append(value)
    if not values:
        raise InputValueError(f"{what} is empty")
    return sorted(set(values))


def resolve_samplers(spec: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """``all`` | ``sdediff`` | ``peers`` | names (comma-separated) -> (sdediff names, peer names)."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    ours_all = registry.available()
    allowed = [*ours_all, *PEERS, *GROUPS]
    ours, peers = [], []
    for name in names:
        check_choice("sampler", name, allowed)
        chosen = {"all": ours_all + list(PEERS), "sdediff": ours_all,
                  "peers": list(PEERS)}.get(name, [name])
        for n in chosen:
            target = peers if n in PEERS else ours
            if n not in target:
                target.append(n)
    return ours, peers


def plan(ours: Iterable[str], peers: Iterable[str], budgets: Sequence[int],
         tolerances: Sequence[float], sde, t_end: float, reserve: int = 0,
         make_peer: Callable[[str], object] = make_scheduler) -> tuple[list[Task], list[str]]:
    """The runs of a sweep and the notes on what was skipped. ``make_peer(name)`` builds a
    fresh diffusers scheduler (default: on the exact mixtures' linear chain; a model's own chain
    in :mod:`sdediff.bench.model`), whose calls per inference step decide the peers' steps."""
    tasks, notes = [], []
    for name in ours:
        sampler = registry.get(name)
        if sampler.nfe(sampler.min_steps) is None:
            for tol in (SDE_TOLERANCES if sampler.is_stochastic() else tolerances):
                tasks.append(Task(name, "sdediff", {"rtol": tol, "atol": tol}, None, None))
            continue
        for budget in budgets:
            fit = sampler.steps_within(budget, sde, t_end, reserve)
            if fit is None:
                notes.append(f"{name}: skipped at NFE {budget} (its smallest run costs "
                             f"{sampler.nfe(sampler.min_steps) + reserve} calls)")
            else:
                tasks.append(Task(name, "sdediff", {}, budget, fit[0]))
    for name in peers:
        scheduler = make_peer(name)
        options = {**PEERS[name][1], "timestep_spacing": scheduler.config.timestep_spacing}
        for budget in budgets:
            steps = peer_steps(scheduler, budget)
            if steps is None:
                notes.append(f"{name}: skipped at NFE {budget} (its smallest run costs more)")
            else:
                tasks.append(Task(name, "diffusers", dict(options), budget, steps))
    return tasks, notes

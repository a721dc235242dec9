"""Running a sweep: every sampler by NFE budget against exact answers (``sdediff bench`` and
``benchmarks/bench_samplers.py`` both call :func:`run_bench`).

**Problems.** ``gmm2d`` and ``gmm64`` (:mod:`sdediff.bench.problems`) under the linear VP process,
with the mixture's exact score, so every error is the sampler's own; ``digits``: a trained
checkpoint on the 8x8 digits. Which runs make the sweep, and how a budget becomes a step count:
:mod:`sdediff.bench.plan`.

**Metrics** (one row per metric, :mod:`sdediff.bench.report`; ``seconds`` is the sampler's wall
time per sample):

- ``rms_error`` (deterministic samplers, mixtures): RMS distance per sample,
  ``sqrt(mean_b |x_b - x*_b|^2)`` (:func:`~sdediff.bench.metrics.rms`), between the endpoint at
  ``t_end = 1e-3`` (``denoise=False``) and the exact probability-flow endpoint ``x*`` from the
  same ``x_T`` (:func:`~sdediff.bench.problems.exact_pf_endpoint`, scipy DOP853 at 1e-10), over
  the first :data:`RMS_BATCH` samples;
- ``energy_distance`` (every sampler, mixtures): to as many exact samples of the marginal the
  sampler targets (``p_{t_end}``), with the two-sample floor (two exact sets of that size, mean of 5)
  in ``floor``;
- ``frechet_distance`` (digits): Fréchet distance in the 64-D features of a small digit classifier
  (:mod:`sdediff.bench.digit_features`) between ``num`` generated digits (``denoise=True``,
  clipped to the data range) and the held-out split; ``floor`` is the same distance from ``num``
  training digits to the held-out split (real against real).

The peers run on the mixtures beside the sdediff samplers, from the same ``x_T``, each against its
own exact reference: diffusers' schedulers (when ``diffusers`` is installed,
:mod:`sdediff.bench.peers`) and k-diffusion's samplers on its own grids (when ``k-diffusion`` is
installed, :mod:`sdediff.bench.kdiffusion`; they run from ``s(T)`` to ``s(t_end)``, the span of the
sdediff samplers, so they share their exact reference). ``--samplers`` takes names and the groups
``all``, ``sdediff``, ``peers`` (both peers' sets), ``diffusers`` and ``kdiff``
(:func:`resolve_bench_samplers`).

Any model (problem ``model``, ``sdediff bench --checkpoint PATH``) has no exact answer: its
samplers and peers are measured against a tight probability-flow solution from the same ``x_T``,
in :mod:`sdediff.bench.model`; :func:`run_bench` hands that problem over.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import samplers as registry
from ..checks import InputValueError, check_choice, check_device, check_float, check_int
from ..distributed import gather_objects, rank_world, share
from ..sde import VPSDE
from . import kdiffusion as kdiffusion_peers  # a module: tests switch k-diffusion off in it
from . import peers as diffusers_peers  # a module: tests switch diffusers off in it
from .metrics import energy_distance, rms, two_sample_floor
from .plan import DEFAULT_NFE, GROUPS, TOLERANCES, Task, parse_list, plan
from .problems import PROBLEMS, exact_pf_endpoint, noisy_sample, pf_flow
from .report import BenchResult, write_results

#: Every problem ``--problem`` accepts.
#: The problem's name (``--problem model``; the files' stem): any checkpoint against its own
#: reference solution (:mod:`sdediff.bench.model`).
MODEL_PROBLEM = "model"
PROBLEM_NAMES = (*PROBLEMS, "digits", MODEL_PROBLEM)
#: Where the mixtures' samplers stop (``denoise=False``), as the accuracy tests.
T_END = 1e-3
#: Samples whose endpoints are compared with the scipy reference (it integrates them jointly).
RMS_BATCH = 256
#: Samples per run (energy distance, Fréchet distance).
DEFAULT_NUM = {"gmm2d": 2000, "gmm64": 2000, "digits": 500}
#: The digits sweep is small by default: a U-Net on a CPU.
DIGITS_DEFAULTS = {"samplers": ("ddim", "dpm_solver++", "unipc", "ipndm", "heun",
                                "euler_maruyama"), "nfe": (10, 20, 50)}


#: Groups of ``--samplers`` besides :data:`~sdediff.bench.plan.GROUPS`: each peer's set alone.
PEER_GROUPS = ("diffusers", "kdiff")


def resolve_bench_samplers(spec: str | Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """``--samplers``: names and groups, comma-separated -> (sdediff samplers, diffusers peers,
    k-diffusion peers). Groups: ``all`` (everything), ``sdediff``, ``peers`` (diffusers' and
    k-diffusion's), ``diffusers``, ``kdiff``. An unknown name raises, listing the allowed ones."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    ours_all = registry.available()
    theirs, kdiff = list(diffusers_peers.PEERS), list(kdiffusion_peers.KDIFF_PEERS)
    allowed = [*ours_all, *theirs, *kdiff, *PEER_GROUPS, *GROUPS]
    groups = {"all": ours_all + theirs + kdiff, "sdediff": ours_all, "peers": theirs + kdiff,
              "diffusers": theirs, "kdiff": kdiff}
    chosen: dict[str, list[str]] = {"sdediff": [], "diffusers": [], "kdiff": []}
    for name in names:
        check_choice("sampler", name, allowed)
        for n in groups.get(name, [name]):
            target = chosen["diffusers" if n in theirs else "kdiff" if n in kdiff else "sdediff"]
            if n not in target:
                target.append(n)
    return chosen["sdediff"], chosen["diffusers"], chosen["kdiff"]


def _row(problem, task: Task, nfe, metric, value, floor, seconds, steps=None) -> dict:
    return {"problem": problem, "sampler": task.sampler, "source": task.source,
            "options": dict(task.options), "budget": task.budget,
            "steps": task.steps if steps is None else steps, "nfe": int(nfe), "metric": metric,
            "value": float(value), "floor": None if floor is None else float(floor),
            "seconds": float(seconds)}


def _task_key(sampler, source, options, budget) -> tuple:
    return sampler, source, repr(sorted(dict(options).items())), budget


def sweep_shared(sweep, tasks: list[Task], notes: list[str]
                 ) -> tuple[list[dict], list[str], dict] | None:
    """``sweep(some_tasks) -> (rows, grids)`` on this rank's share of ``tasks`` under torchrun
    (task ``k`` on rank ``k mod W``; the tasks are independent runs from the same seeded ``x_T``),
    gathered on rank 0 in the order of ``tasks`` in one collective: ``(rows, notes, grids)``
    there, ``None`` on the other ranks. One process runs every task."""
    order = {_task_key(t.sampler, t.source, t.options, t.budget): k for k, t in enumerate(tasks)}
    rows, grids = sweep(share(tasks))
    gathered = gather_objects([(rows, notes, grids)])
    if gathered is None:
        return None
    rows = sorted((r for part, _, _ in gathered for r in part), key=lambda r: order[_task_key(
        r["sampler"], r["source"], r["options"], r["budget"])])
    return (rows, list(dict.fromkeys(n for _, part, _ in gathered for n in part)),
            {key: grid for _, _, part in gathered for key, grid in part.items()})


def _check_finite(x: torch.Tensor, label: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(f"{label} returned non-finite samples")


def _label(task: Task) -> str:
    if task.budget is None:
        return f"{task.sampler} tol {task.options['rtol']:g}"
    return f"{task.sampler} @ {task.budget}"


def _sweep_mixture(problem, tasks, num, seed, bar, notes) -> list[dict]:
    gmm, sde = PROBLEMS[problem](), VPSDE()
    dim = gmm.dim
    x_T = sde.prior_sample((num, dim), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    n_rms = min(RMS_BATCH, num)
    targets: dict = {}

    def target(s: float, scale: float):
        """Exact samples and the two-sample floor of ``scale * (x_0 + s eps)`` (cached)."""
        key = (round(s, 12), round(scale, 12))
        if key not in targets:
            draw = lambda n, g: noisy_sample(gmm, n, s, scale, generator=g)  # noqa: E731
            targets[key] = (draw(num, torch.Generator().manual_seed(seed + 1)),
                            two_sample_floor(draw, num, seed=seed + 2))
        return targets[key]

    ours_reference = None
    peer_references: dict = {}
    model = gmm.score_model(sde)
    ends = torch.tensor([sde.T, T_END], dtype=torch.float64)
    ours_ends = (*sde.sigma_over_alpha(ends).tolist(), float(sde.alpha(ends[1])))
    rows = []
    for task in tasks:
        bar.set_postfix_str(_label(task))
        try:
            if task.source == "sdediff":
                sampler = registry.get(task.sampler)
                deterministic = not sampler.is_stochastic()
                if deterministic and ours_reference is None:
                    ours_reference = exact_pf_endpoint(gmm, sde, x_T[:n_rms], T_END)
                r = registry.sample(gmm.score_model(sde), x_T=x_T, sampler=task.sampler,
                                    steps=task.steps, t_end=T_END, denoise=False,
                                    generator=torch.Generator().manual_seed(seed + 3),
                                    return_info=True, **task.options)
                x, nfe, seconds = r.x, r.nfe, r.seconds
                reference = ours_reference
                s_end = math.exp(-float(sde.log_snr(torch.tensor(T_END, dtype=torch.float64))))
                scale = float(sde.alpha(torch.tensor(T_END, dtype=torch.float64)))
            else:
                deterministic = True
                if task.source == kdiffusion_peers.SOURCE:
                    x, nfe, seconds, (y0, s0, s_end, scale) = kdiffusion_peers.run_task(
                        task, model, x_T, T_END)
                else:
                    x, nfe, seconds, (y0, s0, s_end, scale) = diffusers_peers.run_peer(
                        task.sampler, task.steps, gmm, x_T)
                if (task.source == kdiffusion_peers.SOURCE
                        and kdiffusion_peers.same_ends((s0, s_end, scale), ours_ends)):
                    # from x_T / alpha(T) at s(T) to s(t_end): the sdediff samplers' problem
                    if ours_reference is None:
                        ours_reference = exact_pf_endpoint(gmm, sde, x_T[:n_rms], T_END)
                    reference = ours_reference
                else:
                    # same start, same end (to 12 digits: a shift of 1e-12 in s moves the
                    # reference far less than its own tolerance)
                    key = (task.source, float(y0.reshape(-1)[0]), f"{s0:.12e}", f"{s_end:.12e}",
                           f"{scale:.12e}")
                    if key not in peer_references:
                        peer_references[key] = scale * pf_flow(gmm, y0[:n_rms], s0, s_end)
                    reference = peer_references[key]
            _check_finite(x, _label(task))
        except (ValueError, RuntimeError, FloatingPointError, IndexError) as err:
            notes.append(f"{_label(task)}: failed ({str(err).splitlines()[0]})")
            bar.update(1)
            continue
        per_sample = seconds / num
        if deterministic:
            rows.append(_row(problem, task, nfe, "rms_error", rms(x[:n_rms], reference), None,
                             per_sample))
        exact, floor = target(s_end, scale)
        rows.append(_row(problem, task, nfe, "energy_distance", energy_distance(x, exact), floor,
                         per_sample))
        bar.update(1)
    return rows


def _sweep_digits(tasks, num, seed, checkpoint, bar, notes, device=None) -> tuple[list[dict], dict]:
    from ..checkpoint import load_model
    from ..data import load_dataset
    from .digit_features import digits_frechet

    model, config = load_model(checkpoint, device=device)
    name = config.get("data", {}).get("name")
    if name != "digits":
        raise InputValueError(f"problem 'digits' needs a checkpoint trained on digits; {str(checkpoint)!r} "
                              f"was trained on {name!r}")
    data = load_dataset("digits")
    low, high = data.data_range
    if num > len(data.train):
        raise InputValueError(f"--num {num} exceeds the {len(data.train)} training digits the floor "
                              "is drawn from")
    # drawn on the CPU (the seed's generator) and moved: the same x_T on every device
    x_T = model.sde.prior_sample((num, *data.shape), generator=torch.Generator().manual_seed(seed))
    x_T = x_T.to(model.device or "cpu")
    rows, grids = [], {}
    for task in tasks:
        bar.set_postfix_str(_label(task))
        try:
            r = registry.sample(model, x_T=x_T, sampler=task.sampler, steps=task.steps,
                                generator=torch.Generator().manual_seed(seed + 3),
                                return_info=True, **task.options)
            _check_finite(r.x, _label(task))
        except (ValueError, RuntimeError, FloatingPointError) as err:
            notes.append(f"{_label(task)}: failed ({str(err).splitlines()[0]})")
            bar.update(1)
            continue
        x = r.x.clamp(low, high).cpu()             # the classifier runs on the CPU
        quality = digits_frechet(x, seed=seed)       # classifier features; floor: real vs real
        rows.append(_row("digits", task, r.nfe, "frechet_distance", quality.frechet,
                         quality.floor, r.seconds / num))
        grids[task.sampler] = (r.nfe, x[:10])      # the last (largest) budget's samples
        bar.update(1)
    return rows, grids


@dataclass
class DigitsRun:
    """One sampler at one NFE budget on a digits model: ``x`` are the samples clamped to the
    digits' range ``[-1, 1]`` (on the CPU, wherever the model runs), ``quality`` their
    :class:`~sdediff.bench.digit_features.DigitsQuality`."""

    sampler: str
    budget: int
    steps: int
    result: registry.SampleResult
    x: torch.Tensor
    quality: object


def digits_by_budget(model, x_T: torch.Tensor, samplers: Sequence[str], budgets: Sequence[int],
                     seed: int = 1):
    """Yield a :class:`DigitsRun` for each sampler at each budget, all from the same ``x_T``: the
    most steps whose NFE, the final denoise included, fits the budget
    (:meth:`~sdediff.samplers.base.Sampler.steps_within`); budgets no step count fits are left
    out. The samplers' noise is seeded with ``seed``."""
    from .digit_features import digits_frechet

    for name in samplers:
        sampler = registry.get(name)
        for budget in budgets:
            fit = sampler.steps_within(budget, model.sde, T_END, reserve=1)
            if fit is None:
                continue
            r = registry.sample(model, x_T=x_T, sampler=name, steps=fit[0],
                                generator=torch.Generator().manual_seed(seed), return_info=True)
            x = r.x.clamp(-1, 1).cpu()             # the classifier runs on the CPU
            yield DigitsRun(name, budget, fit[0], r, x, digits_frechet(x))


def run_bench(problem: str, samplers: str | Sequence[str] = "all",
              nfe: str | Sequence[int] | None = None,
              tolerances: str | Sequence[float] = TOLERANCES, num: int | None = None,
              checkpoint: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
              progress: bool = True, command: str | None = None,
              reference_tol: float | None = None, dtype: str = "float64",
              device=None) -> BenchResult:
    """Run the sweep on ``problem`` and (with ``out``) write its files; see the module docstring.

    ``samplers``: ``"all"`` (every registered sampler and, on the mixtures, the diffusers and
    k-diffusion peers), ``"sdediff"``, ``"peers"``, ``"diffusers"``, ``"kdiff"`` or names,
    comma-separated (:func:`resolve_bench_samplers`; problem ``model`` runs the diffusers peers
    only and refuses k-diffusion's by name). ``nfe``: the budgets (default
    :data:`DEFAULT_NFE`; digits: 10, 20, 50). ``num``: samples per run.

    ``problem="model"`` benchmarks the model at ``checkpoint`` against its own reference
    solution (``reference_tol``: its tolerance; ``dtype``: the network's and the samples'):
    :func:`sdediff.bench.model.run_model_bench`. Those two serve that problem only.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``; default the CPU): where the
    network of the ``digits`` and ``model`` problems runs. The exact mixtures run on the CPU
    (their score is a closed form on small tensors).

    Under torchrun the runs are shared out (:func:`sweep_shared`): rank 0 gathers the rows,
    writes and returns the result; the other ranks return ``None``.
    """
    from .model import run_model_bench  # it builds on this module

    check_choice("problem", problem, PROBLEM_NAMES)
    device = None if device is None else check_device(device)
    if problem == MODEL_PROBLEM:
        ours, peers, kpeers = resolve_bench_samplers(samplers)
        named = [n.strip() for n in samplers.split(",")] if isinstance(samplers, str) else samplers
        asked = [n for n in named if n in kdiffusion_peers.KDIFF_PEERS or n == "kdiff"]
        if asked:
            raise InputValueError(f"the k-diffusion peers ({', '.join(asked)}) run on the exact "
                                  f"mixtures only ({', '.join(PROBLEMS)}), not on problem "
                                  f"{MODEL_PROBLEM!r}")
        if kpeers:   # a group: the model bench's peers are diffusers'
            samplers = ours + peers
        return run_model_bench(checkpoint, samplers=samplers, nfe=nfe, tolerances=tolerances,
                               num=num, out=out, seed=seed, progress=progress, command=command,
                               reference_tol=reference_tol, dtype=dtype, device=device)
    digits = problem == "digits"
    if digits and samplers == "all" and nfe is None:
        samplers = DIGITS_DEFAULTS["samplers"]
    budgets = parse_list(DIGITS_DEFAULTS["nfe"] if digits and nfe is None else
                         DEFAULT_NFE if nfe is None else nfe, "--nfe")
    tolerances = parse_list(tolerances, "--tols", kind=float)
    for tol in tolerances:
        check_float("tolerance", tol, 0.0, 1.0, low_open=True)
    num = check_int("--num", DEFAULT_NUM[problem] if num is None else num, minimum=2)
    ours, peers, kpeers = resolve_bench_samplers(samplers)
    notes = []
    if not digits and device is not None and device.type != "cpu":
        notes.append(f"the exact mixtures run on the CPU (closed-form score): --device {device} "
                     "applies to the digits and model problems")
    if peers and digits:
        notes.append("diffusers peers run on the exact mixtures only: skipped on digits")
        peers = []
    if peers and not diffusers_peers.diffusers_available():
        notes.append(f"diffusers is not installed: the peers ({', '.join(peers)}) are skipped; "
                     f"{diffusers_peers.PIP_EXTRA}")
        peers = []
    if kpeers and digits:
        notes.append("k-diffusion peers run on the exact mixtures only: skipped on digits")
        kpeers = []
    if kpeers and not kdiffusion_peers.kdiffusion_available():
        notes.append(f"k-diffusion is not installed: the peers ({', '.join(kpeers)}) are skipped; "
                     f"{kdiffusion_peers.PIP_KDIFF}")
        kpeers = []
    if digits:   # a bad checkpoint fails here, before any output or progress bar
        from ..checkpoint import resolve_checkpoint
        from ..pretrained import default_checkpoint

        checkpoint = resolve_checkpoint(default_checkpoint() if checkpoint is None else checkpoint)
    sde = VPSDE()
    tasks, skipped = plan(ours, peers, budgets, tolerances, sde, T_END, reserve=1 if digits else 0)
    notes += skipped
    if kpeers:
        ktasks, skipped = kdiffusion_peers.plan_kdiffusion(kpeers, budgets, tolerances)
        tasks += ktasks
        notes += skipped
    meta = {"problem": problem, "num": num, "seed": seed, "budgets": budgets,
            "tolerances": tolerances, "t_end": T_END, "rms_batch": min(RMS_BATCH, num),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "device": str(device) if digits and device is not None else "cpu",
            "command": command or " ".join(sys.argv), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "load_average_start": _load_average(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if peers:
        import diffusers

        meta["diffusers"] = diffusers.__version__
    if kpeers:
        meta["k-diffusion"] = kdiffusion_peers.kdiffusion_version()
    start = time.perf_counter()
    rank, world = rank_world()
    with tqdm(total=len(share(tasks)), desc=f"bench {problem}", dynamic_ncols=True,
              disable=not progress or rank != 0) as bar:
        if digits:
            def sweep(mine):
                return _sweep_digits(mine, num, seed, checkpoint, bar, notes, device)
        else:
            def sweep(mine):
                return _sweep_mixture(problem, mine, num, seed, bar, notes), {}
        shared = sweep_shared(sweep, tasks, notes)
    if shared is None:   # not rank 0: rank 0 writes
        return None
    rows, notes, grids = shared
    meta["processes"] = world
    meta["seconds"] = round(time.perf_counter() - start, 1)
    meta["load_average_end"] = _load_average()
    result = BenchResult(problem, rows, notes, meta)
    if out is not None:
        result.files = write_results(result, Path(out), grids)
    return result


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None

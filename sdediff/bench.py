"""Sampler benchmarks: every sampler by NFE budget against exact answers (``sdediff bench`` and
``benchmarks/bench_samplers.py`` both call :func:`run_bench`).

**Problems.** ``gmm2d`` and ``gmm64`` (:mod:`sdediff.problems`) under the linear VP process, with
the mixture's exact score, so every error is the sampler's own; ``digits``: a trained
checkpoint on the 8x8 digits.

**Budgets.** For a fixed-step sampler and an NFE budget the step count is the largest whose
declared exact cost ``nfe(steps)`` fits the budget (Heun's ``2N - 1`` enters 10 calls at 9);
a sampler whose smallest run costs more is skipped with a note. Adaptive samplers (``ode``,
``dpm_adaptive``: ``nfe(steps)`` is ``None``) run at the tolerances ``rtol = atol = tol`` of
:data:`TOLERANCES` and are reported at their counted NFE. Every row's ``nfe`` is counted by the
model, never inferred from steps.

**Metrics** (one row per metric; ``seconds`` is the sampler's wall time per sample):

- ``rms_error`` (deterministic samplers, mixtures): RMS distance per sample,
  ``sqrt(mean_b |x_b - x*_b|^2)``, between the endpoint at ``t_end = 1e-3`` (``denoise=False``)
  and the exact probability-flow endpoint ``x*`` from the same ``x_T``
  (:func:`~sdediff.problems.exact_pf_endpoint`, scipy DOP853 at 1e-10), over the first
  :data:`RMS_BATCH` samples;
- ``energy_distance`` (every sampler, mixtures): to as many exact samples of the marginal the
  sampler targets (``p_{t_end}``), with the two-sample floor (two exact sets of that size, mean of 5)
  in ``floor``;
- ``frechet_distance`` (digits): Fréchet distance in the 64-D features of a small digit classifier
  (:mod:`sdediff.digit_features`) between ``num`` generated digits (``denoise=True``, clipped to
  the data range) and the held-out split; ``floor`` is the same distance from ``num`` training
  digits to the held-out split (real against real).

**Peers** (mixtures, when ``diffusers`` is installed): the schedulers of :data:`PEERS` at their
defaults (except ``clip_sample=False``: clipping to [-1, 1] would cut the ring of radius 1.5), on
the discrete linear-VP schedule they are built for (``betas`` 1e-4 .. 0.02, ``N = 1000``, eps
prediction, the chain of :meth:`sdediff.VPSDE.discretize`). The model is the mixture's exact eps at
the noise level of diffusers' timestep ``k``: ``s(k)`` interpolated linearly between the chain's
``s_k = sqrt((1 - abar_k) / abar_k)`` as diffusers interpolates its sigmas, ``alpha = 1 / sqrt(1 +
s^2)``. Each peer is measured against its own exact reference: the probability flow in ``(y, s)``
(:func:`~sdediff.problems.pf_flow`) from the state and noise level it starts at to the one it ends
at (``s = 0`` for most: diffusers' discrete schedules end at ``sigma = 0``), and its energy
distance against exact samples at that end.

Output (:func:`write_results`): ``<problem>.csv`` and ``.json`` (the rows of :data:`COLUMNS`;
the JSON adds the settings, machine, load average and notes), ``<problem>.md`` (tables), and PNGs:
each metric against NFE (log-log, one line per sampler, peers dashed, floor dotted) and seconds per
sample against NFE.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import samplers as registry
from .checks import check_choice, check_float, check_int
from .metrics import energy_distance, two_sample_floor
from .problems import PROBLEMS, exact_pf_endpoint, noise_eps, noisy_sample, pf_flow
from .sde import VPSDE

#: Every problem ``--problem`` accepts.
PROBLEM_NAMES = (*PROBLEMS, "digits")
#: NFE budgets of the issue's sweep.
DEFAULT_NFE = (5, 10, 20, 50, 100, 200, 1000)
#: ``rtol = atol`` of the adaptive samplers.
TOLERANCES = (1e-2, 1e-3, 1e-4)
#: Where the mixtures' samplers stop (``denoise=False``), as the accuracy tests.
T_END = 1e-3
#: Samples whose endpoints are compared with the scipy reference (it integrates them jointly).
RMS_BATCH = 256
#: Samples per run (energy distance, Fréchet distance).
DEFAULT_NUM = {"gmm2d": 2000, "gmm64": 2000, "digits": 500}
#: The digits sweep is small by default: a U-Net on a CPU.
DIGITS_DEFAULTS = {"samplers": ("ddim", "dpm_solver++", "unipc", "ipndm", "heun",
                                "euler_maruyama"), "nfe": (10, 20, 50)}
#: Columns of every output row.
COLUMNS = ("problem", "sampler", "source", "options", "budget", "steps", "nfe", "metric", "value",
           "floor", "seconds")
#: diffusers schedulers run as peers: name -> (class, the non-default settings).
PEERS = {
    "diffusers:ddim": ("DDIMScheduler", {"clip_sample": False}),
    "diffusers:dpm_solver++": ("DPMSolverMultistepScheduler", {}),
    "diffusers:unipc": ("UniPCMultistepScheduler", {}),
    "diffusers:deis": ("DEISMultistepScheduler", {}),
    "diffusers:euler": ("EulerDiscreteScheduler", {}),
    "diffusers:heun": ("HeunDiscreteScheduler", {}),
    "diffusers:lms": ("LMSDiscreteScheduler", {}),
}
#: Peers drawn in the color of the sdediff sampler of the same method.
PEER_COUNTERPARTS = {"diffusers:ddim": "ddim", "diffusers:dpm_solver++": "dpm_solver++",
                     "diffusers:unipc": "unipc", "diffusers:heun": "heun"}
#: The discrete schedule the peers run on (Ho et al.'s, = ``VPSDE().discretize(1000)``).
PEER_TRAIN_STEPS = 1000
PIP_EXTRA = "pip install 'sdediff[bench]'  (or pip install diffusers)"
#: Keywords of ``--samplers`` besides names.
GROUPS = ("all", "sdediff", "peers")


def diffusers_available() -> bool:
    return importlib.util.find_spec("diffusers") is not None


# ------------------------------------------------------------------------------------ the plan

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
            raise ValueError(f"{what} must be a comma-separated list of positive numbers "
                             f"(e.g. 10,20,50), got {text!r}") from None
        if not value > 0 or (kind is float and not math.isfinite(value)):
            raise ValueError(f"{what} must be positive, got {item!r} in {text!r}")
        values.append(value)
    if not values:
        raise ValueError(f"{what} is empty")
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


def steps_within(sampler, budget: int, sde, t_end: float, reserve: int = 0
                 ) -> tuple[int, int] | None:
    """``(steps, nfe)``: the most steps whose exact cost ``nfe(steps) + reserve`` fits ``budget``
    (and whose grid exists), or ``None`` when even ``min_steps`` costs more."""
    best = None
    steps = sampler.min_steps
    while sampler.nfe(steps) + reserve <= budget:
        best = steps
        steps += 1
    while best is not None:
        try:
            sampler.grid(sde, best, t_end)     # e.g. ddpm's chain has only so many steps
            return best, sampler.nfe(best)
        except ValueError:
            best = best - 1 if best > sampler.min_steps else None
    return None


def plan(ours: Iterable[str], peers: Iterable[str], budgets: Sequence[int],
         tolerances: Sequence[float], sde, t_end: float, reserve: int = 0
         ) -> tuple[list[Task], list[str]]:
    """The runs of a sweep and the notes on what was skipped."""
    tasks, notes = [], []
    for name in ours:
        sampler = registry.get(name)
        if sampler.nfe(sampler.min_steps) is None:
            for tol in tolerances:
                tasks.append(Task(name, "sdediff", {"rtol": tol, "atol": tol}, None, None))
            continue
        for budget in budgets:
            fit = steps_within(sampler, budget, sde, t_end, reserve)
            if fit is None:
                notes.append(f"{name}: skipped at NFE {budget} (its smallest run costs "
                             f"{sampler.nfe(sampler.min_steps) + reserve} calls)")
            else:
                tasks.append(Task(name, "sdediff", {}, budget, fit[0]))
    for name in peers:
        scheduler = make_scheduler(name)
        options = {**PEERS[name][1], "timestep_spacing": scheduler.config.timestep_spacing}
        for budget in budgets:
            steps = peer_steps(scheduler, budget)
            if steps is None:
                notes.append(f"{name}: skipped at NFE {budget} (its smallest run costs more)")
            else:
                tasks.append(Task(name, "diffusers", dict(options), budget, steps))
    return tasks, notes


# ------------------------------------------------------------------------------- diffusers peers

def make_scheduler(name: str):
    """A fresh diffusers scheduler ``name`` on the discrete linear-VP schedule."""
    import diffusers

    cls_name, options = PEERS[check_choice("peer", name, PEERS)]
    chain = VPSDE().discretize(PEER_TRAIN_STEPS)
    return getattr(diffusers, cls_name)(
        num_train_timesteps=chain.N, beta_start=float(chain.betas[0]),
        beta_end=float(chain.betas[-1]), beta_schedule="linear", prediction_type="epsilon",
        **options)


def _timesteps(scheduler, steps: int) -> int:
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)          # one model call per entry (Heun: 2 steps - 1)


def peer_steps(scheduler, budget: int) -> int | None:
    """The most inference steps whose model calls (``len(timesteps)``) fit ``budget``."""
    hi = min(budget, scheduler.config.num_train_timesteps)
    if _timesteps(scheduler, 1) > budget:
        return None
    lo = 1
    while lo < hi:                            # calls grow with steps: bisect
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _timesteps(scheduler, mid) <= budget else (lo, mid - 1)
    return lo


class DiscreteEps:
    """The mixture's exact eps at diffusers' timestep ``k`` (float or int): the noise level
    ``s(k)`` interpolates the chain's ``s_k = sqrt((1 - abar_k)/abar_k)`` linearly in ``k`` (how
    diffusers maps its sigmas to fractional timesteps); the input is the VP state ``x = alpha y``,
    ``alpha = 1/sqrt(1 + s^2)``, whose eps is ``eps_s(x / alpha)``. Counts its calls in ``nfe``."""

    def __init__(self, gmm, n_train: int = PEER_TRAIN_STEPS):
        abar = VPSDE().discretize(n_train).alphas_cumprod.numpy()
        self.table = np.sqrt((1 - abar) / abar)
        self.gmm = gmm
        self.nfe = 0

    def s_of(self, k) -> float:
        return float(np.interp(float(k), np.arange(len(self.table)), self.table))

    def __call__(self, x: torch.Tensor, k) -> torch.Tensor:
        self.nfe += 1
        s = self.s_of(k)
        return noise_eps(self.gmm, x.double() * math.sqrt(1 + s * s), s).to(x.dtype)


def _final_s(scheduler) -> float:
    """The noise level ``sigma/alpha`` a scheduler's last step lands on."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        return float(sigmas[-1])
    abar = float(scheduler.final_alpha_cumprod)      # DDIM: 1 with set_alpha_to_one
    return math.sqrt(max(1 - abar, 0.0) / abar)


def run_peer(name: str, steps: int, gmm, x_T: torch.Tensor):
    """Run a peer from ``x_T`` (a prior draw). Returns the output, NFE, seconds, and where it
    started and ended in ``(y, s)``: ``(y_start, s_start, s_end, scale)`` with output
    ``~ scale * y(s_end)``."""
    scheduler = make_scheduler(name)
    scheduler.set_timesteps(steps)
    model = DiscreteEps(gmm)
    probe = make_scheduler(name)
    probe.set_timesteps(steps)
    ones = torch.ones(1, dtype=torch.float64)
    sigma_space = not torch.allclose(probe.scale_model_input(ones, probe.timesteps[0]).double(), ones)
    start = time.perf_counter()
    x = x_T.double() * float(scheduler.init_noise_sigma)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # numpy 2 notices inside diffusers
        for k in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, k), k)
            x = scheduler.step(eps, k, x).prev_sample
    seconds = time.perf_counter() - start
    s_start, s_end = model.s_of(scheduler.timesteps[0]), _final_s(scheduler)
    if sigma_space:   # Euler, Heun, LMS keep y = x/alpha and scale the model's input
        y_start, scale = x_T.double() * float(scheduler.init_noise_sigma), 1.0
    else:             # the others keep the VP state x = alpha y
        y_start, scale = x_T.double() * math.sqrt(1 + s_start**2), 1 / math.sqrt(1 + s_end**2)
    return x, model.nfe, seconds, (y_start, s_start, s_end, scale)


# ---------------------------------------------------------------------------------- the sweep

@dataclass
class BenchResult:
    problem: str
    rows: list[dict]
    notes: list[str]
    meta: dict
    files: list[Path] = field(default_factory=list)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS distance per sample: ``sqrt(mean_b |a_b - b_b|^2)``."""
    diff = (a.double() - b.double()).reshape(a.shape[0], -1)
    return float(diff.pow(2).sum(1).mean().sqrt())


def _row(problem, task: Task, nfe, metric, value, floor, seconds, steps=None) -> dict:
    return {"problem": problem, "sampler": task.sampler, "source": task.source,
            "options": dict(task.options), "budget": task.budget,
            "steps": task.steps if steps is None else steps, "nfe": int(nfe), "metric": metric,
            "value": float(value), "floor": None if floor is None else float(floor),
            "seconds": float(seconds)}


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
                x, nfe, seconds, (y0, s0, s_end, scale) = run_peer(task.sampler, task.steps,
                                                                    gmm, x_T)
                key = (float(y0.reshape(-1)[0]), s0, s_end, scale)   # same start, same end
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


def _sweep_digits(tasks, num, seed, checkpoint, bar, notes) -> tuple[list[dict], dict]:
    from .checkpoint import load_model
    from .data import load_dataset
    from .digit_features import digits_frechet

    model, config = load_model(checkpoint)
    name = config.get("data", {}).get("name")
    if name != "digits":
        raise ValueError(f"problem 'digits' needs a checkpoint trained on digits; {str(checkpoint)!r} "
                         f"was trained on {name!r}")
    data = load_dataset("digits")
    low, high = data.data_range
    if num > len(data.train):
        raise ValueError(f"--num {num} exceeds the {len(data.train)} training digits the floor "
                         "is drawn from")
    x_T = model.sde.prior_sample((num, *data.shape), generator=torch.Generator().manual_seed(seed))
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
        x = r.x.clamp(low, high)
        quality = digits_frechet(x, seed=seed)       # classifier features; floor: real vs real
        rows.append(_row("digits", task, r.nfe, "frechet_distance", quality.frechet,
                         quality.floor, r.seconds / num))
        grids[task.sampler] = (r.nfe, x[:10])      # the last (largest) budget's samples
        bar.update(1)
    return rows, grids


@dataclass
class DigitsRun:
    """One sampler at one NFE budget on a digits model: ``x`` are the samples clamped to the
    digits' range ``[-1, 1]``, ``quality`` their :class:`~sdediff.digit_features.DigitsQuality`."""

    sampler: str
    budget: int
    steps: int
    result: registry.SampleResult
    x: torch.Tensor
    quality: object


def digits_by_budget(model, x_T: torch.Tensor, samplers: Sequence[str], budgets: Sequence[int],
                     seed: int = 1):
    """Yield a :class:`DigitsRun` for each sampler at each budget, all from the same ``x_T``: the
    most steps whose NFE, the final denoise included, fits the budget (:func:`steps_within`);
    budgets no step count fits are left out. The samplers' noise is seeded with ``seed``."""
    from .digit_features import digits_frechet

    for name in samplers:
        sampler = registry.get(name)
        for budget in budgets:
            fit = steps_within(sampler, budget, model.sde, T_END, reserve=1)
            if fit is None:
                continue
            r = registry.sample(model, x_T=x_T, sampler=name, steps=fit[0],
                                generator=torch.Generator().manual_seed(seed), return_info=True)
            x = r.x.clamp(-1, 1)
            yield DigitsRun(name, budget, fit[0], r, x, digits_frechet(x))


def run_bench(problem: str, samplers: str | Sequence[str] = "all",
              nfe: str | Sequence[int] | None = None,
              tolerances: str | Sequence[float] = TOLERANCES, num: int | None = None,
              checkpoint: str | Path | None = None, out: str | Path | None = None, seed: int = 0,
              progress: bool = True, command: str | None = None) -> BenchResult:
    """Run the sweep on ``problem`` and (with ``out``) write its files; see the module docstring.

    ``samplers``: ``"all"`` (every registered sampler and, on the mixtures, the diffusers peers),
    ``"sdediff"``, ``"peers"`` or names, comma-separated. ``nfe``: the budgets (default
    :data:`DEFAULT_NFE`; digits: 10, 20, 50). ``num``: samples per run.
    """
    check_choice("problem", problem, PROBLEM_NAMES)
    digits = problem == "digits"
    if digits and samplers == "all" and nfe is None:
        samplers = DIGITS_DEFAULTS["samplers"]
    budgets = parse_list(DIGITS_DEFAULTS["nfe"] if digits and nfe is None else
                         DEFAULT_NFE if nfe is None else nfe, "--nfe")
    tolerances = parse_list(tolerances, "--tols", kind=float)
    for tol in tolerances:
        check_float("tolerance", tol, 0.0, 1.0, low_open=True)
    num = check_int("--num", DEFAULT_NUM[problem] if num is None else num, minimum=2)
    ours, peers = resolve_samplers(samplers)
    notes = []
    if peers and digits:
        notes.append("diffusers peers run on the exact mixtures only: skipped on digits")
        peers = []
    if peers and not diffusers_available():
        notes.append(f"diffusers is not installed: the peers ({', '.join(peers)}) are skipped; "
                     f"{PIP_EXTRA}")
        peers = []
    if digits:   # a bad checkpoint fails here, before any output or progress bar
        from .checkpoint import resolve_checkpoint
        from .pretrained import default_checkpoint

        checkpoint = resolve_checkpoint(default_checkpoint() if checkpoint is None else checkpoint)
    sde = VPSDE()
    tasks, skipped = plan(ours, peers, budgets, tolerances, sde, T_END, reserve=1 if digits else 0)
    notes += skipped
    meta = {"problem": problem, "num": num, "seed": seed, "budgets": budgets,
            "tolerances": tolerances, "t_end": T_END, "rms_batch": min(RMS_BATCH, num),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "command": command or " ".join(sys.argv), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "load_average_start": _load_average(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if peers:
        import diffusers

        meta["diffusers"] = diffusers.__version__
    start = time.perf_counter()
    grids = {}
    with tqdm(total=len(tasks), desc=f"bench {problem}", disable=not progress,
              dynamic_ncols=True) as bar:
        if digits:
            rows, grids = _sweep_digits(tasks, num, seed, checkpoint, bar, notes)
        else:
            rows = _sweep_mixture(problem, tasks, num, seed, bar, notes)
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


# ------------------------------------------------------------------------------------- output

def options_text(options: dict) -> str:
    """``key=value`` pairs separated by spaces (the CLI's ``-o`` syntax)."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in options.items())


def write_results(result: BenchResult, out: Path, grids: dict | None = None) -> list[Path]:
    """``<problem>.csv``, ``.json``, ``.md`` and the plots in ``out``."""
    from .plotting import plot_vs_nfe, save_image_grid

    out.mkdir(parents=True, exist_ok=True)
    stem = out / result.problem
    files = [stem.with_suffix(".csv"), stem.with_suffix(".json"), stem.with_suffix(".md")]
    with open(files[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in result.rows:
            writer.writerow({**row, "options": options_text(row["options"]),
                             "budget": "" if row["budget"] is None else row["budget"],
                             "steps": "" if row["steps"] is None else row["steps"],
                             "floor": "" if row["floor"] is None else f"{row['floor']:.6g}",
                             "value": f"{row['value']:.6g}", "seconds": f"{row['seconds']:.4g}"})
    files[1].write_text(json.dumps({"meta": result.meta, "columns": list(COLUMNS),
                                    "notes": result.notes, "rows": result.rows}, indent=1) + "\n")
    files[2].write_text(markdown_report(result))
    for metric in metrics_of(result.rows):
        png = out / f"{result.problem}_{metric}.png"
        floors = [r["floor"] for r in result.rows if r["metric"] == metric and r["floor"]]
        plot_vs_nfe(series(result.rows, metric), png, ylabel=METRIC_LABELS[metric],
                    title=f"{result.problem}: {METRIC_LABELS[metric]}",
                    floor=float(np.median(floors)) if floors else None,
                    dashed=list(PEERS), same_color=PEER_COUNTERPARTS)
        files.append(png)
    if result.rows:
        png = out / f"{result.problem}_time.png"
        first = metrics_of(result.rows)[-1]
        plot_vs_nfe(series(result.rows, first, "seconds"), png, ylabel="seconds per sample",
                    title=f"{result.problem}: wall time per sample", dashed=list(PEERS),
                    same_color=PEER_COUNTERPARTS)
        files.append(png)
    if grids:
        png = out / f"{result.problem}_samples.png"
        names = list(grids)
        save_image_grid(torch.cat([grids[n][1] for n in names]), png, nrow=10,
                        data_range=(-1.0, 1.0))
        (out / f"{result.problem}_samples.txt").write_text(
            "rows, top to bottom: " + ", ".join(f"{n} ({grids[n][0]} NFE)" for n in names) + "\n")
        files.append(png)
    return files


METRIC_LABELS = {"rms_error": "RMS error to the exact PF endpoint",
                 "energy_distance": "energy distance to exact samples",
                 "frechet_distance": "Fréchet distance (classifier features) to held-out digits"}


def metrics_of(rows: list[dict]) -> list[str]:
    return [m for m in METRIC_LABELS if any(r["metric"] == m for r in rows)]


def series(rows: list[dict], metric: str, key: str = "value") -> dict:
    """Per sampler: (NFE list, ``key`` list), sorted by NFE."""
    out: dict = {}
    for r in rows:
        if r["metric"] == metric:
            out.setdefault(r["sampler"], []).append((r["nfe"], r[key]))
    return {name: tuple(map(list, zip(*sorted(points), strict=True))) for name, points in out.items()}


def _cell(value: float) -> str:
    return f"{value:.2e}"


def markdown_report(result: BenchResult) -> str:
    """Tables: per metric, sampler x budget (``value`` and, where it differs from the budget, the
    NFE used), the adaptive samplers by tolerance, the seconds per sample, the best per budget."""
    rows, meta = result.rows, result.meta
    budgets = meta["budgets"]
    lines = [f"## {result.problem}", "",
             f"{meta['num']} samples per run, seed {meta['seed']}; {meta['seconds']} s in all; "
             f"load average {meta['load_average_start']} at the start, "
             f"{meta['load_average_end']} at the end; torch {meta['torch']} with "
             f"{meta['threads']} thread(s) on {meta['machine']}.", ""]
    for metric in metrics_of(rows):
        mine = [r for r in rows if r["metric"] == metric]
        fixed = [r for r in mine if r["budget"] is not None]
        names = list(dict.fromkeys(r["sampler"] for r in fixed))
        lines += [f"### {METRIC_LABELS[metric]}", "",
                  "Cells: value at the budget's NFE; `(n)`: the NFE used when the budget cannot "
                  "be met exactly; `-`: cannot run within the budget.", "",
                  "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " | floor |",
                  "|---|" + "---|" * (len(budgets) + 1)]
        for name in names:
            cells = []
            for b in budgets:
                hit = [r for r in fixed if r["sampler"] == name and r["budget"] == b]
                if not hit:
                    cells.append("-")
                    continue
                r = hit[0]
                cells.append(_cell(r["value"]) + ("" if r["nfe"] == b else f" ({r['nfe']})"))
            floor = next((r["floor"] for r in fixed if r["sampler"] == name and r["floor"]), None)
            floor = "" if floor is None else _cell(floor)
            lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {floor} |")
        adaptive = [r for r in mine if r["budget"] is None]
        if adaptive:
            lines += ["", "| adaptive sampler | rtol = atol | NFE | value | floor |",
                      "|---|---|---|---|---|"]
            lines += [f"| `{r['sampler']}` | {r['options']['rtol']:g} | {r['nfe']} | "
                      f"{_cell(r['value'])} | {'' if r['floor'] is None else _cell(r['floor'])} |"
                      for r in adaptive]
        if metric == "energy_distance":
            lines += ["", "The floor is the mean over 5 pairs of exact sets of this size; one pair "
                      "scatters around it (10% to 90% quantiles: 0.5x to 1.5x on gmm2d, 0.7x to 1.7x on "
                      "gmm64, from 20 pairs), so values in that band are "
                      "indistinguishable from exact. Samplers that share `x_T` (deterministic) or "
                      "`x_T` and the Brownian path (stochastic) give correlated values: each group "
                      "is close to one draw."]
        lines += ["", "Best per budget (lowest value at NFE <= budget):", "",
                  "| budget | sdediff | diffusers |", "|---|---|---|"]
        for b in budgets:
            cells = []
            for source in ("sdediff", "diffusers"):
                pool = [r for r in mine if r["source"] == source and r["nfe"] <= b
                        and (r["budget"] == b or r["budget"] is None)]
                best = min(pool, key=lambda r: r["value"], default=None)
                cells.append("-" if best is None else
                             f"`{best['sampler']}` {_cell(best['value'])} ({best['nfe']} NFE)")
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
    metric = (metrics_of(rows) or [None])[-1]
    timed = [r for r in rows if r["metric"] == metric and r["budget"] is not None]
    if timed:
        names = list(dict.fromkeys(r["sampler"] for r in timed))
        lines += ["### Wall time per sample (ms)", "",
                  "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name in names:
            cells = [next((f"{1e3 * r['seconds']:.3g}" for r in timed
                           if r["sampler"] == name and r["budget"] == b), "-") for b in budgets]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        lines.append("")
    if result.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(lines)


def summary_lines(result: BenchResult) -> list[str]:
    """A few lines for the terminal: the best sampler per budget and metric."""
    lines = []
    for metric in metrics_of(result.rows):
        mine = [r for r in result.rows if r["metric"] == metric]
        for b in result.meta["budgets"]:
            parts = []
            for source in ("sdediff", "diffusers"):
                pool = [r for r in mine if r["source"] == source and r["budget"] == b]
                best = min(pool, key=lambda r: r["value"], default=None)
                if best is not None:
                    parts.append(f"{best['sampler']} {best['value']:.2e} ({best['nfe']} NFE)")
            floor = next((r["floor"] for r in mine if r["floor"]), None)
            if parts:
                lines.append(f"  {metric} at NFE {b}: best " + "; ".join(parts)
                             + ("" if floor is None else f"; floor {floor:.2e}"))
    return lines

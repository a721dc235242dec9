"""Benchmarks on any model: every sampler by NFE against a reference solution from the same
``x_T`` (``sdediff bench --checkpoint PATH``, problem ``model``). It answers "which sampler should
I use with my model at 10 steps?", with no data set.

**The model**: anything :func:`~sdediff.checkpoint.load_model` reads (an sdediff run or
checkpoint folder, or a diffusers pipeline folder); the default is the bundled digits model.

**The reference**: the probability-flow ODE ``dx/dt = f x - g^2 score / 2`` solved by the ``ode``
sampler (dopri5) at ``rtol = atol =`` :data:`REFERENCE_TOL` from ``x_T`` (a seeded prior draw of
``num`` samples, default :data:`DEFAULT_NUM`) to ``t_end`` (:func:`model_t_end`: ``1/M``, the
chain's index 0, for a diffusers-style :class:`~sdediff.sde.DiscreteVPSDE`; else ``1e-3``), then
denoised: ``x* = x0_theta(x(t_end), t_end)`` (Tweedie). Its own error is checked against the
same solve at :data:`CHECK_FACTOR` times the tolerance: their RMS difference ``d`` is about the
looser solve's error, so it bounds the reference's from above (dopri5's error falls with the
tolerance, 10-20x per decade on the bundled digits model). ``d`` is recorded in
``meta["reference"]`` (``check_rms``, with ``check_ratio`` = ``d`` over the smallest error
measured at a budget), stated in the first note (a second one warns when the ratio exceeds
:data:`CHECK_MARGIN`), and is every row's ``floor``: errors near it are not resolved.

**The metric**: ``rms_error`` (:func:`~sdediff.bench.metrics.rms`), ``sqrt(mean_b |x_b - x*_b|^2)``
between each sampler's **final output** and ``x*``. Final outputs, on purpose: diffusers'
schedulers end with an ``x0`` prediction (a last step to ``alpha = 1``) at their last timestep, so
what a user compares, and what this compares, is the returned image. The sdediff samplers run with
``denoise=True`` and their final denoise counts in the budget (``reserve=1`` in
:meth:`~sdediff.samplers.base.Sampler.steps_within`: 9 steps + 1 denoise at NFE 10).

- sdediff samplers: the deterministic ones at each NFE budget on their default grids; adaptive
  ones (``ode``, ``dpm_adaptive``) at the ``tolerances``; stochastic ones are skipped with a note
  (no RMS error against one deterministic reference).
- diffusers peers (:data:`~sdediff.bench.peers.PEERS`): each scheduler built on the model's own
  chain (:func:`peer_chain`) with its own non-default settings (e.g. ``clip_sample=False``) and
  diffusers' defaults otherwise (its default ``timestep_spacing``), at the most inference steps
  whose calls fit the budget (:func:`~sdediff.bench.peers.peer_steps`); :func:`run_model_peer`
  runs diffusers' loop with the model and counts the calls.

A process other than a :class:`~sdediff.sde.DiscreteVPSDE` has no chain of its own. For a
continuous variance-preserving one (e.g. the bundled digits model's linear VP) the peers run on
the ``M = 1000`` chain whose ``abar_k = alpha(t_k)^2`` at ``t_k = (k + 1) T / M`` exactly
(``beta_k = 1 - alpha(t_k)^2 / alpha(t_{k-1})^2``, telescoping), with the model called at
``t_k``, so scheduler and model agree on every timestep's noise level. Sub-VP and VE processes are
not variance preserving: the peers are skipped with a note.

:func:`run_model_bench` writes ``model.csv``, ``.json``, ``.md``, the log-log plot of
``rms_error`` against NFE and the time plot (:mod:`sdediff.bench.report`), and
``model_reference.pt`` (``x_T``, ``x*``, ``t_end``, the tolerance, ``d``), with which any other
sampler can be scored later on the same footing. Command line: ``sdediff bench --checkpoint PATH
[--samplers ...] [--nfe 5,10,20,50] [--tols ...] [--num 16] [--ref-tol 1e-7] [--dtype float64]``.

**Precision**: every run, the reference's included, evaluates the network and keeps its samples
in float64 by default (``dtype``). The probability-flow map can amplify rounding: on the bundled
digits model, float32 solves at rtol 1e-3 .. 1e-6 disagree by up to 1.4 (RMS per sample, against
0.04 in float64), more than every sampler's error from 10 NFE on, so float32 would rank noise.
``dtype="float32"`` measures the model as deployed; the reference's self-check then shows
that floor.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import samplers as registry
from ..checks import InputValueError, check_choice, check_device, check_float, check_int, coefficient_dtype
from ..distributed import rank_world, share
from ..interop import DIFFUSERS_PREDICTION_TYPES
from ..sde import DiscreteVPSDE
from . import peers as diffusers_peers  # a module: tests switch diffusers off in it
from .metrics import rms
from .plan import TOLERANCES, Task, parse_list, plan, resolve_samplers
from .report import BenchResult, write_results
from .sweep import (
    MODEL_PROBLEM,
    T_END,
    _check_finite,
    _label,
    _load_average,
    _row,
    sweep_shared,
)

#: NFE budgets by default: the few-step range where the choice of sampler matters.
DEFAULT_NFE = (5, 10, 20, 50)
#: Samples per run (``--num``): the reference solve dominates the cost.
DEFAULT_NUM = 16
#: ``rtol = atol`` of the reference solve (``--ref-tol``). On the bundled digits model (float64)
#: dopri5's error falls 10-20x per decade of tolerance: 7.8e-3, 5.5e-4, 2.7e-5 (RMS per sample) at
#: 1e-5, 1e-6, 1e-7, against 1e-2 for the best samplers at 50 NFE; the check at 1e-6 then shows
#: the reference far below every error measured.
REFERENCE_TOL = 1e-7
#: The self-check solve runs at this many times the reference's tolerance.
CHECK_FACTOR = 10.0
#: A note warns when the reference's error estimate exceeds this share of the smallest error.
CHECK_MARGIN = 0.1
#: Chain length the peers run on for a continuous VP process.
CHAIN_STEPS = 1000
#: ``--dtype``: the network's and the samples' dtype in every run (float64 by default).
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def model_t_end(sde) -> float:
    """Where the model's samplers stop: ``1/M`` (index 0 of the chain, where diffusers' last
    step starts from) for a :class:`~sdediff.sde.DiscreteVPSDE`, else :data:`T_END` (``1e-3``)."""
    if isinstance(sde, DiscreteVPSDE):
        return sde.t_min                      # = index_to_time(0)
    return T_END


# ------------------------------------------------------------------------------ the reference

@dataclass
class Reference:
    """The reference ``x`` (float64), its cost, and its self-check: ``check_rms`` is the RMS
    difference to the same solve at ``check_tol``."""

    x: torch.Tensor
    tol: float
    nfe: int
    seconds: float
    check_tol: float
    check_nfe: int
    check_rms: float

    def meta(self) -> dict:
        return {"sampler": "ode", "method": "dopri5", "rtol": self.tol, "atol": self.tol,
                "nfe": self.nfe, "seconds": round(self.seconds, 2), "denoise": True,
                "check_rtol": self.check_tol, "check_nfe": self.check_nfe,
                "check_rms": self.check_rms}


def _pf_solve(model, x_T: torch.Tensor, t_end: float, tol: float):
    sampler = registry.get("ode", method="dopri5", rtol=tol, atol=tol)
    return sampler(model, x_T, t_end=t_end, denoise=True)


def reference_solution(model, x_T: torch.Tensor, t_end: float, tol: float = REFERENCE_TOL,
                       factor: float = CHECK_FACTOR) -> Reference:
    """The denoised probability-flow solution from ``x_T`` at ``rtol = atol = tol`` and its
    self-check at ``factor * tol`` (see the module docstring)."""
    ref = _pf_solve(model, x_T, t_end, tol)
    check = _pf_solve(model, x_T, t_end, min(factor * tol, 1.0))
    return Reference(ref.x.double(), tol, ref.nfe, ref.seconds, min(factor * tol, 1.0), check.nfe,
                     rms(check.x, ref.x))


# ------------------------------------------------------------------------------- the peers

@dataclass
class PeerChain:
    """The discrete chain the diffusers peers run on: the scheduler keywords that build it,
    the model time of a (possibly fractional) diffusers timestep ``k``, and the prediction the
    model is asked for (the scheduler's ``prediction_type``)."""

    kwargs: dict
    time_of: Callable[[float], float]
    kind: str
    about: str

    def scheduler(self, name: str):
        """A fresh peer ``name`` on this chain, with its own non-default settings."""
        import diffusers

        cls_name, options = diffusers_peers.PEERS[name]
        return getattr(diffusers, cls_name)(**self.kwargs, **options)


def _continuous_betas(sde, M: int) -> torch.Tensor:
    """``beta_k = 1 - alpha(t_k)^2 / alpha(t_{k-1})^2`` at ``t_k = k T / M`` (``t_0 = 0``,
    ``alpha = 1``): the chain whose ``abar`` is ``alpha^2`` at every node."""
    times = torch.arange(0, M + 1, dtype=torch.float64) * sde.T / M
    log_alpha = sde.log_alpha(times)
    log_alpha[0] = 0.0
    return -torch.expm1(2 * torch.diff(log_alpha))


def peer_chain(model) -> tuple[PeerChain | None, str | None]:
    """The chain of :class:`PeerChain` for ``model``, or ``(None, why not)``.

    A :class:`~sdediff.sde.DiscreteVPSDE` is its own chain (``beta_schedule``, ``beta_start``,
    ``beta_end``, ``trained_betas``, ``num_train_timesteps``, ``steps_offset``), timestep ``k`` at
    ``sde.index_to_time(k) = (k + 1)/M``. A continuous VP process becomes the
    :data:`CHAIN_STEPS`-step chain of :func:`_continuous_betas`, timestep ``k`` at
    ``(k + 1) T / M``.
    """
    sde = model.sde
    # a ``score`` model (no diffusers prediction_type) is asked for eps
    kind = model.prediction if model.prediction in DIFFUSERS_PREDICTION_TYPES else "eps"
    common = {"prediction_type": DIFFUSERS_PREDICTION_TYPES[kind]}
    if isinstance(sde, DiscreteVPSDE):
        config = {k: v for k, v in sde.config().items() if k != "name"}
        return PeerChain({**config, **common}, lambda k: float(sde.index_to_time(float(k))),
                         kind, f"the model's own chain ({sde!r})"), None
    if not getattr(sde, "variance_preserving", False):
        return None, (f"diffusers peers need a variance-preserving process; {sde!r} is not: "
                      "the peers are skipped")
    betas = _continuous_betas(sde, CHAIN_STEPS)
    if not bool(((betas > 0) & (betas < 1)).all()):
        return None, (f"{sde!r} has no {CHAIN_STEPS}-step chain with every beta in (0, 1): the "
                      "peers are skipped")
    M, T = CHAIN_STEPS, float(sde.T)
    kwargs = {"num_train_timesteps": M, "trained_betas": betas.tolist(), **common}
    return PeerChain(kwargs, lambda k: (float(k) + 1) * T / M, kind,
                     f"the {M}-step chain with abar_k = alpha((k + 1) T/{M})^2 of {sde!r}"), None


def run_model_peer(name: str, steps: int, model, x_T: torch.Tensor, chain: PeerChain):
    """diffusers' sampling loop for peer ``name`` at ``steps`` inference steps from ``x_T``:
    ``x = x_T * init_noise_sigma``, then per timestep ``k`` one network call
    ``model.predict(scale_model_input(x, k), t_k, kind)`` and ``x = step(out, k, x)``.
    Returns ``(final output, counted network calls, seconds)``."""
    scheduler = chain.scheduler(name)
    scheduler.set_timesteps(steps)
    x = x_T * float(scheduler.init_noise_sigma)
    nfe, start = 0, time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # numpy 2 notices inside diffusers
        t_dtype = coefficient_dtype(x.device)    # float64 (float32 on MPS)
        for k in scheduler.timesteps:            # on the host: k is read with no device sync
            t = torch.full((x.shape[0],), chain.time_of(k), dtype=t_dtype, device=x.device)
            out = model.predict(scheduler.scale_model_input(x, k), t, kind=chain.kind)
            nfe += 1
            x = scheduler.step(out, k, x).prev_sample
    return x, nfe, time.perf_counter() - start


# ------------------------------------------------------------------------------- the sweep

def _sdediff_samplers(names: Sequence[str], notes: list[str]) -> list[str]:
    """The deterministic samplers of ``names``; a note for each stochastic one left out."""
    kept = []
    for name in names:
        if registry.get(name).is_stochastic():
            notes.append(f"{name}: skipped (stochastic: no RMS error against the deterministic "
                         "reference)")
        else:
            kept.append(name)
    return kept


def _run_task(task: Task, model, x_T: torch.Tensor, t_end: float, chain: PeerChain | None):
    """One run's ``(final output, NFE, seconds)``."""
    if task.source == "diffusers":
        return run_model_peer(task.sampler, task.steps, model, x_T, chain)
    r = registry.sample(model, x_T=x_T, sampler=task.sampler, steps=task.steps, t_end=t_end,
                        denoise=True, return_info=True, **task.options)
    return r.x, r.nfe, r.seconds


def _sweep(tasks, model, x_T, t_end, chain, reference: Reference, bar, notes) -> list[dict]:
    rows = []
    for task in tasks:
        bar.set_postfix_str(_label(task))
        try:
            x, nfe, seconds = _run_task(task, model, x_T, t_end, chain)
            _check_finite(x, _label(task))
        except (ValueError, RuntimeError, FloatingPointError, IndexError) as err:
            notes.append(f"{_label(task)}: failed ({str(err).splitlines()[0]})")
            bar.update(1)
            continue
        rows.append(_row(MODEL_PROBLEM, task, nfe, "rms_error", rms(x, reference.x),
                         reference.check_rms, seconds / x_T.shape[0]))
        bar.update(1)
    return rows


def _reference_note(reference: Reference, rows: list[dict]) -> tuple[str, float | None]:
    """The self-check in words, and its ratio to the smallest error at a fixed budget."""
    text = (f"reference: ode (dopri5) at rtol = atol = {reference.tol:g}, {reference.nfe} NFE, "
            f"denoised at t_end; the same solve at {reference.check_tol:g} ({reference.check_nfe} "
            f"NFE) differs from it by {reference.check_rms:.3g} (RMS), an upper estimate of its "
            "own error (the floor)")
    fixed = [r for r in rows if r["budget"] is not None]
    best = min(fixed, key=lambda r: r["value"], default=None)
    if best is None or best["value"] <= 0:
        return text, None
    ratio = reference.check_rms / best["value"]
    return (text + f", {ratio:.2g} of the smallest error measured ({best['sampler']} "
            f"{best['value']:.3g} at {best['nfe']} NFE)"), ratio


def _model_about(checkpoint, model, config, num, seed, t_end, chain_about) -> list[str]:
    shape = tuple(config["data"]["shape"])
    return [f"Model: `{checkpoint}` ({model.sde!r}, prediction {model.prediction}, samples of "
            f"shape {shape}); {num} draws of `x_T` (seed {seed}), shared by every run.",
            f"Error: RMS per sample between each sampler's final output and the reference, the "
            f"probability-flow ODE from the same `x_T` to t_end = {t_end:g} then denoised (x0 "
            "prediction). sdediff samplers denoise at t_end, that call counted in the NFE; "
            "diffusers' schedulers end with their own x0 prediction (alpha = 1) at their last "
            "timestep: final outputs are compared, as a user would.",
            "Floor: the reference's error estimate (the RMS difference to the same solve at a "
            "looser tolerance); errors near it are not resolved.",
            f"Peers: diffusers' schedulers on {chain_about}." if chain_about else
            "Peers: none."]


def _load(checkpoint, device=None):
    from ..checkpoint import load_model
    from ..pretrained import default_checkpoint

    checkpoint = default_checkpoint() if checkpoint is None else checkpoint
    model, config = load_model(checkpoint, device=device)
    shape = config.get("data", {}).get("shape")
    if not shape:
        raise InputValueError(f"{str(checkpoint)!r} does not record its data shape (config "
                              "data.shape); the benchmark draws x_T of that shape")
    return checkpoint, model, config, tuple(int(n) for n in shape)


def _cast(model, dtype: torch.dtype) -> None:
    """Run the network in ``dtype`` (it was just loaded: nothing else shares it)."""
    if isinstance(model.net, torch.nn.Module):
        model.net.to(dtype)
    elif dtype != torch.float32:
        raise InputValueError("--dtype float64: this model's network is not a torch module and "
                              "cannot be cast; use --dtype float32")


def _check_settings(nfe, tolerances, num, reference_tol, dtype):
    budgets = parse_list(DEFAULT_NFE if nfe is None else nfe, "--nfe")
    tolerances = parse_list(tolerances, "--tols", kind=float)
    for tol in tolerances:
        check_float("tolerance", tol, 0.0, 1.0, low_open=True)
    num = check_int("--num", DEFAULT_NUM if num is None else num, minimum=2)
    reference_tol = check_float("--ref-tol", REFERENCE_TOL if reference_tol is None
                                else reference_tol, 0.0, 0.1, low_open=True)
    return budgets, tolerances, num, reference_tol, DTYPES[check_choice("--dtype", dtype, DTYPES)]


def _peers_of(peers: list[str], model, notes: list[str]) -> tuple[list[str], PeerChain | None]:
    if not peers:
        return [], None
    if not diffusers_peers.diffusers_available():
        notes.append(f"diffusers is not installed: the peers ({', '.join(peers)}) are skipped; "
                     f"{diffusers_peers.PIP_EXTRA}")
        return [], None
    chain, why = peer_chain(model)
    if chain is None:
        notes.append(why)
        return [], None
    return peers, chain


def run_model_bench(checkpoint: str | Path | None = None, samplers: str | Sequence[str] = "all",
                    nfe: str | Sequence[int] | None = None,
                    tolerances: str | Sequence[float] = TOLERANCES, num: int | None = None,
                    out: str | Path | None = None, seed: int = 0, progress: bool = True,
                    command: str | None = None, reference_tol: float | None = None,
                    dtype: str = "float64", device=None) -> BenchResult:
    """Every sampler on the model at ``checkpoint`` by NFE against the reference (module
    docstring); with ``out``, write the files. ``samplers``: as
    :func:`~sdediff.bench.plan.resolve_samplers`; ``nfe``: budgets (default
    :data:`DEFAULT_NFE`); ``num``: samples (default :data:`DEFAULT_NUM`); ``reference_tol``:
    the reference's ``rtol = atol`` (default :data:`REFERENCE_TOL`); ``dtype``: the network's and
    the samples' (``float64``, or ``float32`` as deployed); ``device``: where the network, the
    samples and the reference are computed (default the CPU; the same seeded ``x_T`` on every
    device, drawn on the CPU and moved)."""
    budgets, tolerances, num, reference_tol, torch_dtype = _check_settings(
        nfe, tolerances, num, reference_tol, dtype)
    device = torch.device("cpu") if device is None else check_device(device)
    if device.type == "mps" and torch_dtype == torch.float64:
        raise InputValueError("--dtype float64 cannot run on mps (it has no float64); use --dtype "
                              "float32, or --device cpu")
    ours, peers = resolve_samplers(samplers)
    checkpoint, model, config, shape = _load(checkpoint, device)   # a bad path fails before output
    _cast(model, torch_dtype)
    notes: list[str] = []
    ours = _sdediff_samplers(ours, notes)
    peers, chain = _peers_of(peers, model, notes)
    sde, t_end = model.sde, model_t_end(model.sde)
    make_peer = chain.scheduler if chain is not None else diffusers_peers.make_scheduler
    tasks, skipped = plan(ours, peers, budgets, tolerances, sde, t_end, reserve=1,
                          make_peer=make_peer)
    notes += skipped
    x_T = sde.prior_sample((num, *shape), generator=torch.Generator().manual_seed(seed),
                           dtype=torch_dtype).to(device)
    meta = _meta(checkpoint, model, num, seed, budgets, tolerances, t_end, command)
    meta["dtype"], meta["device"] = dtype, str(device)
    meta["about"] = _model_about(checkpoint, model, config, num, seed, t_end,
                                 chain.about if chain is not None else None)
    if peers:
        import diffusers

        meta["diffusers"] = diffusers.__version__
    start = time.perf_counter()
    rank, world = rank_world()
    with tqdm(total=len(share(tasks)) + 1, desc="bench model", dynamic_ncols=True,
              disable=not progress or rank != 0) as bar:
        bar.set_postfix_str(f"reference (ode {reference_tol:g})")
        reference = reference_solution(model, x_T, t_end, reference_tol)   # on every rank
        bar.update(1)
        shared = sweep_shared(lambda mine: (_sweep(mine, model, x_T, t_end, chain, reference,
                                                   bar, notes), {}), tasks, notes)
    if shared is None:   # not rank 0: rank 0 writes
        return None
    rows, notes, _ = shared
    meta["processes"] = world
    text, ratio = _reference_note(reference, rows)
    notes.insert(0, text)
    if ratio is not None and ratio > CHECK_MARGIN:
        notes.insert(1, f"the reference's error estimate is {ratio:.2g} of the smallest error, above "
                        f"{CHECK_MARGIN:g}: tighten --ref-tol for a trustworthy ranking at the "
                        "largest budgets")
    meta["reference"] = {**reference.meta(), "check_ratio": ratio}
    meta["seconds"] = round(time.perf_counter() - start, 1)
    meta["load_average_end"] = _load_average()
    result = BenchResult(MODEL_PROBLEM, rows, notes, meta)
    if out is not None:
        result.files = write_results(result, Path(out))
        result.files.append(_save_reference(Path(out), x_T, reference, t_end))
    return result


def _save_reference(out: Path, x_T: torch.Tensor, reference: Reference, t_end: float) -> Path:
    path = out / f"{MODEL_PROBLEM}_reference.pt"
    torch.save({"x_T": x_T.cpu(), "reference": reference.x.cpu(), "t_end": t_end,
                "rtol": reference.tol, "check_rms": reference.check_rms}, path)
    return path


def _meta(checkpoint, model, num, seed, budgets, tolerances, t_end, command) -> dict:
    return {"problem": MODEL_PROBLEM, "num": num, "seed": seed, "budgets": budgets,
            "tolerances": tolerances, "t_end": t_end, "rms_batch": num,
            "checkpoint": str(checkpoint), "process": repr(model.sde),
            "prediction": model.prediction,
            "metric_labels": {"rms_error": "RMS error to the reference (denoised PF-ODE)"},
            "command": command or " ".join(sys.argv), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "load_average_start": _load_average(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


__all__ = ["CHECK_FACTOR", "DEFAULT_NFE", "DEFAULT_NUM", "MODEL_PROBLEM", "REFERENCE_TOL",
           "PeerChain", "Reference", "model_t_end", "peer_chain", "reference_solution",
           "run_model_bench", "run_model_peer"]

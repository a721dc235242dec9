"""Issue 17 item 4: network calls of the adaptive probability-flow solvers to reach an RMS error of
1e-3 on the two exact Gaussian mixtures: ``abm_adaptive`` against ``dpm_adaptive``, ``ode``
(torchdiffeq dopri5) and, when installed, k-diffusion's ``sample_dpm_adaptive``.

Problem and error as ``benchmarks/bench_fast_solvers.py``: VP linear process, ``gmm2d`` and ``gmm64``
(:mod:`sdediff.bench.problems`); 256 prior draws (seed 0, float64) from ``T`` to ``t_end = 1e-3``
with ``denoise=False``; the error is the RMS distance per sample ``sqrt(mean_b ||x_b - x*_b||^2)``
(:func:`sdediff.bench.metrics.rms`) to the exact probability-flow endpoint ``x*`` (scipy DOP853 at
1e-10, :func:`sdediff.bench.problems.exact_pf_endpoint`). NFE is counted by the ``ScoreModel`` (by
:class:`~sdediff.bench.kdiffusion.KarrasDenoiser` for k-diffusion).

Each solver runs at ``rtol = atol = tol`` for ``tol = 10^(-k/8)``, loosest first:

- **NFE** (the headline, as ``bench_fast_solvers.py``): the calls at the loosest ``tol`` whose
  error is at most 1e-3;
- **steady NFE**: the calls at the loosest ``tol`` from which :data:`STEADY` consecutive tolerances
  of the sweep (a factor 3.2 tighter) all reach 1e-3, so a lucky cancellation of errors at one
  tolerance does not count.

k-diffusion's ``sample_dpm_adaptive`` (DPM-Solver-23, PID step control, its defaults otherwise)
runs through :func:`sdediff.bench.kdiffusion.run_kdiffusion` in ``y = x/alpha``, ``s = sigma/alpha``
on the same model and ``x_T``; it stops within ``1e-5`` of ``log s(t_end)``, so its reference is the
exact endpoint carried along the exact flow to where it stopped. Without k-diffusion
(``pip install --no-deps k-diffusion==0.1.1.post1``) its rows are skipped with a note.

A second batch (seed 1) checks that the result is not a property of one batch; the row
``abm_adaptive switch_log_snr=None`` is the ablation of the switch to the noise-prediction form.

    python benchmarks/bench_adaptive.py [--quick]

Writes ``benchmarks/results/adaptive.json`` and ``.md`` (``--quick``: 64 samples, seed 0 only,
written to a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.bench.metrics import rms
from sdediff.bench.problems import PROBLEMS, exact_pf_endpoint, pf_flow
from sdediff.bench.report import add_output_arguments, results_folder

RESULTS = Path(__file__).resolve().parent / "results"
T_END, BATCH, EVAL_SEED, CHECK_SEED = 1e-3, 256, 0, 1
TARGET_ERROR = 1e-3
TOLERANCES = [10 ** (-k / 8) for k in range(8, 64)]
#: Consecutive tolerances that must all reach the target for the steady NFE.
STEADY = 5
OURS = ("abm_adaptive", {})
#: (label, source, sampler, options): every solver of the table.
SOLVERS = [
    ("abm_adaptive", "sdediff", "abm_adaptive", {}),
    ("abm_adaptive switch_log_snr=None", "sdediff", "abm_adaptive", {"switch_log_snr": None}),
    ("dpm_adaptive order=3", "sdediff", "dpm_adaptive", {"order": 3}),
    ("dpm_adaptive order=2", "sdediff", "dpm_adaptive", {"order": 2}),
    ("ode dopri5", "sdediff", "ode", {"method": "dopri5"}),
    ("k-diffusion dpm_adaptive", "k-diffusion", "kdiff:dpm_adaptive", {}),
]
#: Baselines of the ratio: label -> the rows it takes the fewest calls of.
BASELINES = {
    "dpm_adaptive": ("dpm_adaptive order=3", "dpm_adaptive order=2"),
    "dopri5": ("ode dopri5",),
    "k-diffusion": ("k-diffusion dpm_adaptive",),
}


def kdiffusion_peers():
    """:mod:`sdediff.bench.kdiffusion` when k-diffusion is installed, else ``(None, why)``."""
    try:
        from sdediff.bench import kdiffusion
    except ImportError as err:
        return None, f"k-diffusion rows skipped: sdediff.bench.kdiffusion not importable ({err})"
    if not kdiffusion.kdiffusion_available():
        return None, f"k-diffusion rows skipped: not installed ({kdiffusion.PIP_KDIFF})"
    return kdiffusion, None


def run_one(source, sampler, options, tol, model, gmm, x_T, reference, peers):
    """``(x, nfe, reference)`` of one run at ``rtol = atol = tol``."""
    if source == "sdediff":
        result = sd.sample(model, x_T=x_T, sampler=sampler, rtol=tol, atol=tol, t_end=T_END,
                           denoise=False, return_info=True, **options)
        return result.x, result.nfe, reference
    x, nfe, _, (_, s_start, s_end, scale) = peers.run_kdiffusion(
        sampler, None, model, x_T, t_end=T_END, rtol=tol, atol=tol, **options)
    sde = model.sde
    s_tend = math.exp(-float(sde.log_snr(torch.tensor(T_END, dtype=torch.float64))))
    alpha_tend = float(sde.alpha(torch.tensor(T_END, dtype=torch.float64)))
    if not math.isclose(s_end, s_tend, rel_tol=1e-12):
        # carry the exact endpoint along the exact flow to where the peer stopped
        reference = scale * pf_flow(gmm, reference / alpha_tend, s_tend, s_end)
    return x, nfe, reference


def sweep(source, sampler, options, model, gmm, x_T, reference, peers) -> dict:
    """The tolerance sweep of one solver: every run until :data:`STEADY` in a row reach the
    target (or the tolerances end)."""
    runs, first, steady = [], None, None
    for tol in TOLERANCES:
        x, nfe, ref = run_one(source, sampler, options, tol, model, gmm, x_T, reference, peers)
        error = rms(x, ref)
        runs.append({"tol": tol, "nfe": nfe, "error": error})
        if error <= TARGET_ERROR and first is None:
            first = runs[-1]
        tail = runs[-STEADY:]
        if len(tail) == STEADY and all(r["error"] <= TARGET_ERROR for r in tail):
            steady = tail[0]
            break
    return {"nfe": first and first["nfe"], "tol": first and first["tol"],
            "error": first and first["error"], "steady_nfe": steady and steady["nfe"],
            "steady_tol": steady and steady["tol"], "runs": runs}


def bench_problem(key: str, seed: int, batch: int, peers) -> dict:
    sde, gmm = sd.VPSDE(), PROBLEMS[key]()
    model = gmm.score_model(sde)
    x_T = sde.prior_sample((batch, gmm.dim), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    start = time.perf_counter()
    reference = exact_pf_endpoint(gmm, sde, x_T, T_END)
    print(f"[{key} seed {seed}] exact reference: {time.perf_counter() - start:.1f} s", flush=True)
    solvers = {}
    for label, source, sampler, options in SOLVERS:
        if source != "sdediff" and peers is None:
            continue
        start = time.perf_counter()
        solvers[label] = sweep(source, sampler, options, model, gmm, x_T, reference, peers)
        s = solvers[label]
        print(f"[{key} seed {seed}] {label}: NFE {s['nfe']} (tol {fmt(s['tol'])}), steady NFE "
              f"{s['steady_nfe']}, {time.perf_counter() - start:.1f} s", flush=True)
    ours = solvers[OURS[0]]
    ratios = {}
    for name, labels in BASELINES.items():
        counts = [(solvers[b]["nfe"], solvers[b]["steady_nfe"]) for b in labels if b in solvers]
        best = min((c[0] for c in counts if c[0]), default=None)
        best_steady = min((c[1] for c in counts if c[1]), default=None)
        ratios[name] = {"nfe": best, "ratio": ours["nfe"] / best if ours["nfe"] and best else None,
                        "steady_nfe": best_steady,
                        "steady_ratio": (ours["steady_nfe"] / best_steady
                                         if ours["steady_nfe"] and best_steady else None)}
    return {"problem": key, "seed": seed, "dim": gmm.dim, "solvers": solvers, "ratios": ratios}


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Adaptive probability-flow solvers: calls to an RMS error of 1e-3", "",
             f"`python benchmarks/bench_adaptive.py` ({meta['seconds']:.0f} s wall, "
             f"{meta['machine']}, torch {meta['torch']}, k-diffusion {meta['kdiffusion']}). "
             f"{meta['batch']} prior draws, `t_end = 1e-3`, `denoise=False`, float64; RMS error per "
             "sample to the exact probability-flow endpoint; `rtol = atol = tol` swept over "
             "`10^(-k/8)`. **NFE**: calls at the loosest tol reaching 1e-3 (error and tol in "
             f"brackets). **steady**: calls at the loosest tol from which {STEADY} consecutive "
             "tolerances all reach 1e-3. Goal: `abm_adaptive` at <= 0.5x each baseline.", ""]
    for note in meta["notes"]:
        lines += [f"Note: {note}", ""]
    by_seed = {}
    for res in results:
        by_seed.setdefault(res["seed"], []).append(res)
    for seed, group in by_seed.items():
        title = "evaluation batch" if seed == EVAL_SEED else "check batch"
        labels = [label for label, *_ in SOLVERS if label in group[0]["solvers"]]
        lines += [f"## Seed {seed} ({title})", "",
                  "| solver | " + " | ".join(f"{r['problem']} NFE | {r['problem']} steady"
                                             for r in group) + " |",
                  "|---|" + "---|---|" * len(group)]
        for label in labels:
            cells = []
            for r in group:
                s = r["solvers"][label]
                cells += [f"{fmt(s['nfe'])} ({fmt(s['error'])} at tol {fmt(s['tol'])})",
                          fmt(s["steady_nfe"])]
            name = f"**{label}**" if label == OURS[0] else label
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "| ratio abm_adaptive / baseline | "
                  + " | ".join(f"{r['problem']} NFE | {r['problem']} steady" for r in group) + " |",
                  "|---|" + "---|---|" * len(group)]
        for name in BASELINES:
            if not all(r["ratios"][name]["nfe"] for r in group):
                continue
            cells = []
            for r in group:
                q = r["ratios"][name]
                cells += [f"**{fmt(q['ratio'])}** ({r['solvers'][OURS[0]]['nfe']}/{q['nfe']})",
                          f"{fmt(q['steady_ratio'])} ({r['solvers'][OURS[0]]['steady_nfe']}/"
                          f"{q['steady_nfe']})"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## The sweeps (seed 0)", "", "tol: NFE, error (runs until the steady criterion).", ""]
    for res in results:
        if res["seed"] != EVAL_SEED:
            continue
        for label, s in res["solvers"].items():
            runs = ", ".join(f"{r['tol']:.2g}: {r['nfe']}, {r['error']:.1e}" for r in s["runs"][-9:])
            lines.append(f"- {res['problem']} {label}: ... {runs}")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_output_arguments(parser, RESULTS, "64 samples, seed 0 only")
    args = parser.parse_args()
    torch.set_num_threads(1)      # tiny batches: one thread is faster on a shared machine
    out = results_folder(args, RESULTS, "adaptive")
    out.mkdir(parents=True, exist_ok=True)
    batch = 64 if args.quick else BATCH
    seeds = (EVAL_SEED,) if args.quick else (EVAL_SEED, CHECK_SEED)
    peers, note = kdiffusion_peers()
    notes = [note] if note else []
    start, cpu_start = time.perf_counter(), time.process_time()
    results = [bench_problem(key, seed, batch, peers) for seed in seeds for key in PROBLEMS]
    version = None
    if peers is not None:
        version = peers.kdiffusion_version()
    meta = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "torch": torch.__version__, "machine": f"{platform.machine()} CPU, 1 thread",
            "kdiffusion": version or "not installed", "t_end": T_END, "batch": batch,
            "seeds": list(seeds), "target_error": TARGET_ERROR, "steady": STEADY, "notes": notes}
    (out / "adaptive.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    text = markdown(results, meta)
    (out / "adaptive.md").write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()

"""Fast deterministic solvers against diffusers and k-diffusion at 5, 10 and 20 network calls (default
options only, and with fitted grids), and the adaptive solvers' calls to reach an error of 1e-3, on
two exact Gaussian mixtures.

Problems (VP linear process; :mod:`sdediff.bench.problems`, shared with the tests and
``sdediff bench``):

- ``gmm2d``: 8 components on the ring of radius 1.5, std 0.15, weights ``linspace(1, 2)``;
- ``gmm64``: 64-D, 10 components with means uniform in ``[-1.5, 1.5]^64`` (seed 1), std 0.15,
  weights ``linspace(1, 2)``.

Every solver starts from the same ``x_T`` (256 prior draws, seed 0, float64) and runs to
``t_end = 1e-3`` with ``denoise=False``. The error is the RMS distance per sample,
``sqrt(mean_b ||x_b - x*_b||^2)`` (:func:`sdediff.bench.metrics.rms`), to the exact
probability-flow endpoint ``x*`` by scipy (:func:`sdediff.bench.problems.exact_pf_endpoint`:
``solve_ivp`` DOP853, rtol = atol = 1e-10, in ``y = x/alpha``, ``s = sigma/alpha`` where
``dy/ds = eps_s(y)``). NFE is counted by the ``ScoreModel``; a budget's step count is
:meth:`Sampler.steps_within <sdediff.samplers.base.Sampler.steps_within>` (the most steps whose
exact cost fits).

- **Defaults only**: ``ddim``, ``heun``, ``dpm_solver++``, ``unipc``, ``ipndm`` and ``lms``
  (:data:`DEFAULT_SOLVERS`) each with its registered default options and grid (chosen by
  ``benchmarks/bench_defaults.py``), at 5, 10 and 20 NFE; the best of them against the best of each
  peer (below). Goal: ratio <= 0.5 at 10 and 20 NFE. Beside it, the same comparison by
  :func:`~sdediff.bench.metrics.rms_without_worst` (the farthest sample of the batch left out,
  each side at its best), which shows when one boundary sample sets the RMS alone.
- **Fitted grids**: every sdediff solver configuration (:data:`CONFIGS`) on every named grid and on
  grids fitted by :func:`sdediff.samplers.fitted.fit_grid` to an independent **pilot** batch
  (prior draws with seed 1234: 256 for gmm2d, 512 for gmm64, see :data:`PILOT`; its reference is
  the ``ode`` sampler at rtol = atol = 1e-7, never the scipy reference). The configuration
  **chosen on the pilot** (lowest pilot error, nothing of the evaluation batch) against the peers;
  the best on the evaluation batch beside it. Heun's ``2N - 1`` calls cannot make 10 or 20: it
  enters at 9 and 19.
- **Adaptive**: ``rtol = atol = tol`` swept over ``10^(-k/8)``; the NFE of the loosest ``tol``
  whose error is at most 1e-3, for ``abm_adaptive``, ``dpm_adaptive``, ``ode`` (torchdiffeq dopri5) and for
  k-diffusion's ``sample_dpm_adaptive`` (``kdiff:dpm_adaptive``, order 3, from the same ``x_T``
  to the same end, so against the same reference).
- **Peers** at 5, 10 and 20 NFE (:data:`PEER_NFES`), each at its best scheduler and grid:

  - diffusers (:mod:`sdediff.bench.peers`): every scheduler of ``PEERS`` with
    ``timestep_spacing`` ``linspace`` and ``trailing`` (the placements that start at the top of
    the chain; ``leading``, DDIM's default, starts lower -- timestep 800 of 1000 at 5 steps -- and
    so solves a shorter flow than the others), on its discrete chain, against its own exact
    reference (its start carried along the exact flow to its end, ``s = 0`` for most);
  - k-diffusion (:mod:`sdediff.bench.kdiffusion`, when installed): ``sample_euler``, ``heun``,
    ``dpm_2``, ``lms``, ``dpmpp_2m``, ``dpmpp_3m_sde`` (eta 0) on each of its grid constructors
    (karras, exponential, polyexponential rho 2, vp) and ``sample_dpm_fast``, over the same
    exact model through ``KarrasDenoiser``, from the same ``x_T`` to ``t_end``: the same
    reference as the sdediff solvers.

  A peer that is not installed is left out with a note.

    python benchmarks/bench_fast_solvers.py [--iterations 400] [--quick] [--problems gmm2d]
                                            [--out DIR]

Prints the defaults-only table, the fitted-grids table, the adaptive table, the pilot costs and
the full tables (solver x grid x NFE, and every peer); writes ``fast_solvers.json`` and ``.md``
to ``benchmarks/results/`` (``--out``; with ``--quick``, a fresh temporary folder unless ``--out``
is given: a quick run never overwrites the committed results).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.bench import kdiffusion, peers
from sdediff.bench.metrics import rms, rms_without_worst
from sdediff.bench.problems import PROBLEMS, exact_pf_endpoint, pf_flow
from sdediff.bench.report import add_output_arguments, results_folder
from sdediff.samplers.fitted import fit_grid

RESULTS = Path(__file__).resolve().parent / "results"
T_END, BATCH, EVAL_SEED, PILOT_SEED = 1e-3, 256, 0, 1234
#: Pilot batch per problem. In 64-D a few prior draws sit on a decision boundary between two
#: components and land in the other one under almost any grid; with 256 pilot samples one such
#: sample dominates the pilot RMS and the fit chases it, so gmm64's pilot is twice as large.
PILOT = {"gmm2d": 256, "gmm64": 512}
NFES = (10, 20)
#: Budgets of the peers table (the named grids of every sdediff solver run at these too).
PEER_NFES = (5, 10, 20)
#: diffusers' timestep placements tried (see the module docstring for ``leading``).
DIFFUSERS_SPACINGS = ("linspace", "trailing")
NAMED_GRIDS = ("uniform", "logsnr", "karras", "quadratic", "edm")
#: (sampler, options): every fixed-step deterministic configuration in the table.
CONFIGS = [
    ("dpm_solver++", {"order": 2}),
    ("dpm_solver++", {"order": 3}),
    ("dpm_solver++", {"order": 3, "reference_3m": True}),
    ("unipc", {"order": 2, "variant": "bh1"}),
    ("unipc", {"order": 2, "variant": "bh2"}),
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("unipc", {"order": 3, "variant": "bh2"}),
    ("ipndm", {"order": 3}),
    ("ipndm", {"order": 4}),
    ("lms", {"order": 3}),
    ("lms", {"order": 4}),
    ("heun", {}),
]
#: The fixed-step deterministic samplers whose registered defaults (options and grid, chosen by
#: ``benchmarks/bench_defaults.py``) make the defaults-only table.
DEFAULT_SOLVERS = ("ddim", "heun", "dpm_solver++", "unipc", "ipndm", "lms")
#: sdediff's adaptive solvers in the adaptive table (the rest are the baselines).
OUR_ADAPTIVE = ("abm_adaptive", "dpm_adaptive order=3", "dpm_adaptive order=2")
#: Configurations whose grid is also fitted on the pilot (the baseline solver, and the strongest
#: solvers of the named-grid table).
FITTED = [
    ("dpm_solver++", {"order": 3, "reference_3m": True}),
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("ipndm", {"order": 3}),
    ("ipndm", {"order": 4}),
]
TARGET_ERROR = 1e-3
TOLERANCES = [10 ** (-k / 8) for k in range(8, 64)]
PILOT_REFERENCE_TOL = 1e-7


def label(name: str, options: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in options.items())


def run_fixed(model, x_T, name, options, steps, schedule) -> tuple[torch.Tensor, int]:
    """``name`` from ``x_T`` on its grid ``schedule`` (a named grid of ``steps`` steps, or the
    times of a fitted grid) down to ``T_END``, no final denoise: ``Sampler.solve``."""
    sampler = sd.samplers.get(name, schedule=schedule, **options)
    result = sampler.solve(model, x_T, sampler.grid(model.sde, steps, T_END))
    return result.x, result.nfe


def nfe_to_target(model, x_T, reference, sampler, **options) -> dict:
    """Loosest ``rtol = atol`` of :data:`TOLERANCES` reaching :data:`TARGET_ERROR`."""
    sweep = []
    for tol in TOLERANCES:
        result = sd.sample(model, x_T=x_T, sampler=sampler, rtol=tol, atol=tol, t_end=T_END,
                           denoise=False, return_info=True, **options)
        error = rms(result.x, reference)
        sweep.append({"tol": tol, "nfe": result.nfe, "error": error})
        if error <= TARGET_ERROR:
            return {"nfe": result.nfe, "tol": tol, "error": error, "sweep": sweep}
    return {"nfe": None, "tol": None, "error": None, "sweep": sweep}


def kdiff_nfe_to_target(gmm, model, x_T, reference, ends) -> dict:
    """:func:`nfe_to_target` for k-diffusion's ``sample_dpm_adaptive`` (order 3, its default).
    It may stop up to 1e-5 short of ``log s(t_end)``: then it is measured against the exact flow
    to where it stopped."""
    sweep = []
    for tol in TOLERANCES:
        x, nfe, _, (y0, s0, s_end, scale) = kdiffusion.run_kdiffusion(
            "kdiff:dpm_adaptive", None, model, x_T, t_end=T_END, rtol=tol, atol=tol)
        if kdiffusion.same_ends((s0, s_end, scale), ends):
            error = rms(x, reference)
        else:
            error = rms(x, scale * pf_flow(gmm, y0, s0, s_end))
        sweep.append({"tol": tol, "nfe": nfe, "error": error, "s_end": s_end})
        if error <= TARGET_ERROR:
            return {"nfe": nfe, "tol": tol, "error": error, "sweep": sweep}
    return {"nfe": None, "tol": None, "error": None, "sweep": sweep}


def peer_runs(gmm, model, x_T, reference, ends, notes: list[str]) -> list[dict]:
    """Every peer configuration at :data:`PEER_NFES`, each against its exact reference."""
    rows, references = [], {}
    if peers.diffusers_available():
        for name in peers.PEERS:
            for spacing in DIFFUSERS_SPACINGS:
                for budget in PEER_NFES:
                    steps = peers.peer_steps(peers.make_scheduler(name, timestep_spacing=spacing),
                                             budget)
                    if steps is None:
                        continue
                    x, nfe, _, (y0, s0, s_end, scale) = peers.run_peer(
                        name, steps, gmm, x_T, timestep_spacing=spacing)
                    key = (f"{s0:.12e}", f"{s_end:.12e}", f"{scale:.12e}")
                    if key not in references:
                        references[key] = scale * pf_flow(gmm, y0, s0, s_end)
                    rows.append({"peer": "diffusers", "solver": name, "grid": spacing,
                                 "budget": budget, "nfe": nfe, "steps": steps,
                                 "error": rms(x, references[key]),
                                 "error_without_worst": rms_without_worst(x, references[key])})
    else:
        notes.append(f"diffusers is not installed: its peers are left out; {peers.PIP_EXTRA}")
    if kdiffusion.kdiffusion_available():
        tasks, _ = kdiffusion.plan_kdiffusion(
            [n for n, p in kdiffusion.KDIFF_PEERS.items() if p.kind != "adaptive"], PEER_NFES, ())
        for task in tasks:
            x, nfe, _, (_, s0, s_end, scale) = kdiffusion.run_task(task, model, x_T, T_END)
            if not kdiffusion.same_ends((s0, s_end, scale), ends):
                raise RuntimeError(f"{task.sampler} ran from s = {s0} to {s_end}, not from s(T) to "
                                   "s(t_end)")
            rows.append({"peer": "k-diffusion", "solver": task.sampler,
                         "grid": task.options.get("grid", "own (log sigma)"),
                         "budget": task.budget, "nfe": nfe, "steps": task.steps,
                         "error": rms(x, reference),
                         "error_without_worst": rms_without_worst(x, reference)})
    else:
        notes.append(f"k-diffusion is not installed: its peers are left out; "
                     f"{kdiffusion.PIP_KDIFF}")
    return rows


def without_worst(defaults: list[dict], peer_rows: list[dict], nfe: int) -> dict:
    """The defaults' target by :func:`rms_without_worst` instead of the RMS: each side's best."""
    def best(pool):
        row = min(pool, key=lambda r: r["error_without_worst"], default=None)
        return None if row is None else {"solver": row["solver"], "grid": row["grid"],
                                         "nfe": row["nfe"], "error": row["error_without_worst"]}

    ours = best(r for r in defaults if r["budget"] == nfe)
    peer = best(r for r in peer_rows if r["budget"] == nfe)
    return {"sdediff": ours, "peer": peer,
            "ratio": None if peer is None else ours["error"] / peer["error"]}


def bench_problem(key: str, iterations: int, fitted_configs) -> dict:
    sde, gmm = sd.VPSDE(), PROBLEMS[key]()
    model = gmm.score_model(sde)
    dim = gmm.dim
    x_T = sde.prior_sample((BATCH, dim), generator=torch.Generator().manual_seed(EVAL_SEED),
                           dtype=torch.float64)
    pilot = sde.prior_sample((PILOT[key], dim), generator=torch.Generator().manual_seed(PILOT_SEED),
                             dtype=torch.float64)
    start = time.perf_counter()
    reference = exact_pf_endpoint(gmm, sde, x_T, T_END)
    print(f"[{key}] exact reference: {time.perf_counter() - start:.1f} s", flush=True)
    before = model.nfe
    pilot_reference = sd.sample(model, x_T=pilot, sampler="ode", rtol=PILOT_REFERENCE_TOL,
                                atol=PILOT_REFERENCE_TOL, t_end=T_END, denoise=False)
    pilot_reference_nfe = model.nfe - before

    rows = []
    for nfe in sorted(set(NFES) | set(PEER_NFES)):
        for name, options in CONFIGS:
            # every configuration fits both budgets (Heun's 2N - 1 at 9 and 19 calls)
            steps, used = sd.samplers.get(name, **options).steps_within(nfe, sde, T_END)
            for grid in NAMED_GRIDS:
                x, counted = run_fixed(model, x_T, name, options, steps, grid)
                assert counted == used, (name, grid, counted, used)
                x_pilot, _ = run_fixed(model, pilot, name, options, steps, grid)
                rows.append({"budget": nfe, "nfe": counted, "solver": label(name, options),
                             "sampler": name, "options": options, "grid": grid,
                             "error": rms(x, reference),
                             "pilot_error": rms(x_pilot, pilot_reference), "pilot_nfe": 0})
        if nfe not in NFES:
            continue
        for name, options in fitted_configs:
            steps, used = sd.samplers.get(name, **options).steps_within(nfe, sde, T_END)
            start = time.perf_counter()
            fitted = fit_grid(model, name, used, pilot=pilot, t_end=T_END,
                              iterations=iterations, **options)
            seconds = time.perf_counter() - start
            x, counted = run_fixed(model, x_T, name, options, fitted.steps, fitted.times)
            assert counted == used
            rows.append({"budget": nfe, "nfe": counted, "solver": label(name, options),
                         "sampler": name, "options": options,
                         "grid": f"fitted (from {fitted.init})", "error": rms(x, reference),
                         "pilot_error": fitted.pilot_error["fitted"],
                         "pilot_nfe": fitted.pilot_nfe, "fit_seconds": round(seconds, 1),
                         "fit_evaluations": fitted.evaluations,
                         "times": fitted.times.tolist()})
            print(f"[{key}] fitted {label(name, options)} at {used} calls: error "
                  f"{rows[-1]['error']:.3e} (pilot {fitted.pilot_error['init']:.3e} -> "
                  f"{fitted.pilot_error['fitted']:.3e}), pilot cost {fitted.pilot_nfe} calls, "
                  f"{seconds:.0f} s", flush=True)

    ends_t = torch.tensor([sde.T, T_END], dtype=torch.float64)
    ends = (*sde.sigma_over_alpha(ends_t).tolist(), float(sde.alpha(ends_t[1])))
    notes: list[str] = []
    start = time.perf_counter()
    peer_rows = peer_runs(gmm, model, x_T, reference, ends, notes)
    print(f"[{key}] peers: {len(peer_rows)} runs, {time.perf_counter() - start:.0f} s", flush=True)
    defaults = []
    for nfe in PEER_NFES:
        for name in DEFAULT_SOLVERS:
            sampler = sd.samplers.get(name)
            steps, used = sampler.steps_within(nfe, sde, T_END)
            x, counted = run_fixed(model, x_T, name, {}, steps, sampler.options["schedule"])
            defaults.append({"budget": nfe, "nfe": counted, "solver": name,
                             "grid": sampler.options["schedule"], "error": rms(x, reference),
                             "error_without_worst": rms_without_worst(x, reference)})
    targets = {"defaults": [], "fitted": []}
    for nfe in PEER_NFES:
        peer_best = {}
        for peer in ("diffusers", "k-diffusion"):
            pool = [r for r in peer_rows if r["peer"] == peer and r["budget"] == nfe]
            best = min(pool, key=lambda r: r["error"], default=None)
            peer_best[peer] = None if best is None else {k: best[k] for k in (
                "solver", "grid", "error", "nfe")}
        best_peer = min((v["error"] for v in peer_best.values() if v), default=None)
        ours = min((r for r in defaults if r["budget"] == nfe), key=lambda r: r["error"])
        targets["defaults"].append(
            {"problem": key, "nfe": nfe, **peer_best,
             "sdediff": {k: ours[k] for k in ("solver", "grid", "error", "nfe")},
             "ratio": None if best_peer is None else ours["error"] / best_peer,
             "without_worst": without_worst(defaults, peer_rows, nfe)})
        if nfe not in NFES:
            continue
        here = [r for r in rows if r["budget"] == nfe]
        chosen = min(here, key=lambda r: r["pilot_error"])
        best = min(here, key=lambda r: r["error"])
        targets["fitted"].append(
            {"problem": key, "nfe": nfe, **peer_best,
             "sdediff": {k: chosen[k] for k in ("solver", "grid", "error", "nfe", "pilot_nfe")},
             "best": {k: best[k] for k in ("solver", "grid", "error", "nfe")},
             "ratio": None if best_peer is None else chosen["error"] / best_peer})

    adaptive = {
        "abm_adaptive": nfe_to_target(model, x_T, reference, "abm_adaptive"),
        "dpm_adaptive order=3": nfe_to_target(model, x_T, reference, "dpm_adaptive", order=3),
        "dpm_adaptive order=2": nfe_to_target(model, x_T, reference, "dpm_adaptive", order=2),
        "ode dopri5": nfe_to_target(model, x_T, reference, "ode", method="dopri5"),
    }
    if kdiffusion.kdiffusion_available():
        adaptive["kdiff:dpm_adaptive"] = kdiff_nfe_to_target(gmm, model, x_T, reference, ends)
    ours = min((v["nfe"] for k, v in adaptive.items() if k in OUR_ADAPTIVE and v["nfe"]),
               default=None)
    theirs = min((v["nfe"] for k, v in adaptive.items() if k not in OUR_ADAPTIVE and v["nfe"]),
                 default=None)
    adaptive_ratio = ours / theirs if ours and theirs else None
    return {"problem": key, "dim": dim, "components": gmm.means.shape[0],
            "pilot_reference_nfe": pilot_reference_nfe, "rows": rows, "defaults": defaults,
            "targets": targets, "adaptive": adaptive, "adaptive_ratio": adaptive_ratio,
            "peer_rows": peer_rows, "notes": notes}


def fmt(v) -> str:
    return "-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


def _cell(best) -> str:
    if best is None:
        return "- | -"
    return f"{best['solver']}, {best['grid']} (NFE {best['nfe']}) | {best['error']:.3e}"


def _ratio(value) -> str:
    return "-" if value is None else f"**{value:.2f}**"


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# Fast solvers: sdediff against diffusers and k-diffusion", "",
             f"`python benchmarks/bench_fast_solvers.py{' --quick' if meta['quick'] else ''}` "
             f"({meta['seconds']:.0f} s wall, "
             f"{meta['cpu_seconds']:.0f} s CPU, {meta['machine']}, torch {meta['torch']}, "
             f"diffusers {meta.get('diffusers', '-')}, k-diffusion {meta.get('k-diffusion', '-')}, "
             f"fit budget {meta['iterations']} runs). "
             "RMS error to the exact probability-flow endpoint at `t_end = 1e-3`, "
             "`denoise=False`, 256 samples. Peers: each at its best scheduler or sampler and grid "
             "(diffusers: every scheduler with `timestep_spacing` linspace and trailing, against "
             "its own exact reference; k-diffusion: every deterministic sampler on each of its "
             "grid constructors). Goal: ratio <= 0.5 at 10 and 20 NFE.", "",
             "## Default options only", "",
             "sdediff: the best of " + ", ".join(f"`{n}`" for n in DEFAULT_SOLVERS)
             + ", each with its registered default options and grid.", "",
             "| problem | NFE | sdediff (best default) | error | diffusers (best) | error | "
             "k-diffusion (best) | error | ratio to the best peer |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for t in res["targets"]["defaults"]:
            lines.append(f"| {t['problem']} | {t['nfe']} | {_cell(t['sdediff'])} | "
                         f"{_cell(t['diffusers'])} | {_cell(t['k-diffusion'])} | "
                         f"{_ratio(t['ratio'])} |")
    lines += ["", "The same with the farthest of the 256 samples left out of each RMS "
              "(`sdediff.bench.metrics.rms_without_worst`), each side at its best: where the ratio "
              "moves far from the one above, one sample (e.g. near a boundary between two "
              "components, sent to the other one) sets the RMS alone. A companion to the goal, "
              "not the goal.",
              "", "| problem | NFE | sdediff (best default) | error | best peer | error | ratio |",
              "|---|---|---|---|---|---|---|"]
    for res in results:
        for t in res["targets"]["defaults"]:
            w = t["without_worst"]
            lines.append(f"| {t['problem']} | {t['nfe']} | {_cell(w['sdediff'])} | "
                         f"{_cell(w['peer'])} | {_ratio(w['ratio'])} |")
    lines += ["", "Every default (error at each budget):", "",
              "| problem | sampler | grid | " + " | ".join(f"NFE {b}" for b in PEER_NFES) + " |",
              "|---|---|---|" + "---|" * len(PEER_NFES)]
    for res in results:
        for name in DEFAULT_SOLVERS:
            mine = {r["budget"]: r for r in res["defaults"] if r["solver"] == name}
            lines.append(f"| {res['problem']} | `{name}` | {mine[PEER_NFES[0]]['grid']} | "
                         + " | ".join(f"{mine[b]['error']:.3e}"
                                      + ("" if mine[b]["nfe"] == b else f" ({mine[b]['nfe']})")
                                      for b in PEER_NFES) + " |")
    lines += ["", "## Fitted grids", "",
              "sdediff: the configuration chosen by its error on an independent pilot batch "
              "(nothing of the evaluation batch), over every solver configuration on every named "
              "grid and on the grids fitted to the pilot; in brackets the best on the evaluation "
              "batch.", "",
              "| problem | NFE | sdediff (chosen on the pilot) | error | diffusers (best) | error | "
              "k-diffusion (best) | error | ratio to the best peer | (best on the batch) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for t in res["targets"]["fitted"]:
            b = t["best"]
            lines.append(f"| {t['problem']} | {t['nfe']} | {_cell(t['sdediff'])} | "
                         f"{_cell(t['diffusers'])} | {_cell(t['k-diffusion'])} | "
                         f"{_ratio(t['ratio'])} | {b['solver']}, {b['grid']}: "
                         f"{b['error']:.3e} |")
    names = list(dict.fromkeys(k for res in results for k in res["adaptive"]))
    lines += ["", "## Adaptive", "", "Calls to reach RMS error <= 1e-3 (loosest `rtol = atol` of the "
              "sweep `10^(-k/8)`); ratio: sdediff's best over the best of dopri5 and "
              "k-diffusion (goal <= 0.5).", "",
              "| problem | " + " | ".join(names) + " | ratio |", "|---|" + "---|" * (len(names) + 1)]
    for res in results:
        a = res["adaptive"]
        cells = [f"{fmt(a[n]['nfe'])} (tol {fmt(a[n]['tol'])}, error {fmt(a[n]['error'])})"
                 if n in a else "-" for n in names]
        lines.append(f"| {res['problem']} | " + " | ".join(cells)
                     + f" | **{fmt(res['adaptive_ratio'])}** |")
    lines += ["", "Pilot cost of the fitted grids (network calls on the pilot batch, 256 samples "
              "for gmm2d and 512 for gmm64, paid once, not in the per-sample NFE):", "",
              "| problem | solver | NFE | pilot calls | trial runs | seconds | pilot error | "
              "error |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            if r["pilot_nfe"]:
                lines.append(f"| {res['problem']} | {r['solver']} | {r['nfe']} | "
                             f"{r['pilot_nfe']} | {r['fit_evaluations']} | "
                             f"{r['fit_seconds']} | {r['pilot_error']:.3e} | "
                             f"{r['error']:.3e} |")
    for res in results:
        lines += ["", f"Full table, {res['problem']} (error on the evaluation batch; "
                  "pilot error in brackets):", ""]
        grids = list(dict.fromkeys(r["grid"] if not r["grid"].startswith("fitted") else
                                   "fitted" for r in res["rows"]))
        lines += ["| solver | NFE | " + " | ".join(grids) + " |",
                  "|---|---|" + "---|" * len(grids)]
        keyed = {}
        for r in res["rows"]:
            grid = "fitted" if r["grid"].startswith("fitted") else r["grid"]
            keyed.setdefault((r["solver"], r["nfe"]), {})[grid] = r
        for (solver, nfe), cells in keyed.items():
            lines.append(f"| {solver} | {nfe} | " + " | ".join(
                f"{cells[g]['error']:.2e} ({cells[g]['pilot_error']:.1e})" if g in cells else "-"
                for g in grids) + " |")
    for res in results:
        if not res["peer_rows"]:
            continue
        lines += ["", f"Peers, {res['problem']} (error; `(n)`: the NFE used when the budget "
                  "cannot be met exactly):", ""]
        grids = list(dict.fromkeys(r["grid"] for r in res["peer_rows"]))
        lines += ["| peer | budget | " + " | ".join(grids) + " |",
                  "|---|---|" + "---|" * len(grids)]
        keyed = {}
        for r in res["peer_rows"]:
            keyed.setdefault((r["solver"], r["budget"]), {})[r["grid"]] = r
        for (solver, budget), cells in keyed.items():
            lines.append(f"| {solver} | {budget} | " + " | ".join(
                (f"{cells[g]['error']:.2e}" + ("" if cells[g]["nfe"] == budget
                                               else f" ({cells[g]['nfe']})"))
                if g in cells else "-" for g in grids) + " |")
    notes = list(dict.fromkeys(n for res in results for n in res["notes"]))
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=400,
                        help="objective evaluations per fitted grid (default 400)")
    add_output_arguments(parser, RESULTS, "fit one configuration per problem with 100 evaluations")
    parser.add_argument("--problems", default=",".join(PROBLEMS),
                        help=f"comma-separated problems (default {','.join(PROBLEMS)})")
    args = parser.parse_args()
    problems = [p.strip() for p in args.problems.split(",")]
    for p in problems:
        if p not in PROBLEMS:
            parser.error(f"unknown problem {p!r}; allowed: {', '.join(PROBLEMS)}")
    # tiny batches: one thread (two threads' sync costs more than the work on a shared machine)
    torch.set_num_threads(1)
    out = results_folder(args, RESULTS, "fast_solvers")
    out.mkdir(parents=True, exist_ok=True)
    iterations = 100 if args.quick else args.iterations
    fitted_configs = FITTED[-1:] if args.quick else FITTED
    start, cpu_start = time.perf_counter(), time.process_time()
    results = [bench_problem(key, iterations, fitted_configs) for key in problems]
    meta = {"seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start, "iterations": iterations,
            "torch": torch.__version__, "machine": f"{platform.machine()} CPU, 1 thread",
            "t_end": T_END, "batch": BATCH, "pilot": PILOT, "eval_seed": EVAL_SEED,
            "pilot_seed": PILOT_SEED, "quick": args.quick}
    if peers.diffusers_available():
        import diffusers

        meta["diffusers"] = diffusers.__version__
    if kdiffusion.kdiffusion_available():
        meta["k-diffusion"] = kdiffusion.kdiffusion_version()
    (out / "fast_solvers.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    text = markdown(results, meta)
    (out / "fast_solvers.md").write_text(text)
    print(text)
    print(f"wrote {out / 'fast_solvers.json'} and {out / 'fast_solvers.md'}")


if __name__ == "__main__":
    main()

"""Issue 17 item 3: the evidence behind each fast solver's default options and grid, and behind the
default sampler of ``sd.sample`` and ``sdediff sample``.

Every candidate configuration (:data:`CANDIDATES`: a sampler and its options) runs on every named
continuous grid (:data:`GRIDS`) at 5, 10 and 20 network calls (:data:`BUDGETS`) on three problems:

- ``gmm2d`` and ``gmm64`` (:mod:`sdediff.bench.problems`, VP linear process): RMS error per sample
  to the exact probability-flow endpoint (scipy DOP853 at 1e-10), 256 prior draws (seed 0,
  float64), from ``T`` to ``t_end = 1e-3`` with ``denoise=False`` -- the protocol of
  ``bench_fast_solvers.py``;
- ``digits`` (the bundled digits model, VP linear, sampled without a class): Fréchet distance of
  :data:`DIGITS_NUM` samples (prior draws seed 0) to the held-out digits in the shipped
  classifier's features (:func:`sdediff.bench.digit_features.digits_frechet`), as ``sd.sample``
  makes them: the final denoising call counted in the budget.

**Score** of a configuration: the geometric mean, over the nine (problem, budget) cells, of its
value divided by the best value any candidate reaches in that cell (1 = best everywhere). Each
sampler's default is its lowest-score configuration, unless its registered default scores within
5% of that (:data:`TIE`: then it stays) or it is ``ddim`` (:data:`KEPT`: the first-order baseline
other published figures are measured on); the default sampler is the fast solver whose default
scores lowest. The digits enter as a guard as much as a ranking: a grid that wins on the
mixtures but breaks a trained network (``ipndm`` on ``karras`` at 10 NFE: Fréchet 166 against 24
at 50 NFE) scores badly.

**VE check** (:data:`VE_CHECKS`, measured on every run, ``--rescore`` included): the chosen
defaults on every grid under the VE process, against ``logsnr``, what ``auto`` gives there.

**Held-out check**: the same candidates on three mixtures the choice never saw (:data:`CHECKS`:
5 components on a ring in 2-D with std 0.1; 6 components in 16-D with std 0.2, seed 7; 20 in 32-D,
seed 3): the chosen default's score there against the best score any candidate of that sampler
reaches there.

    python benchmarks/bench_defaults.py            # writes benchmarks/results/defaults.{json,md}
    python benchmarks/bench_defaults.py --quick    # 10 NFE only, 100 digits; a temporary folder
    python benchmarks/bench_defaults.py --rescore  # choose again from the saved rows

A quick run never overwrites the committed results (``--out`` to choose its folder).
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
from sdediff.bench.digit_features import digits_frechet
from sdediff.bench.metrics import rms
from sdediff.bench.problems import exact_pf_endpoint, gmm2d, gmm64, ring_mixture
from sdediff.bench.report import add_output_arguments, results_folder
from sdediff.checkpoint import load_model
from sdediff.pretrained import default_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
T_END, BATCH, SEED = 1e-3, 256, 0
BUDGETS = (5, 10, 20)
DIGITS_NUM = 500
GRIDS = ("uniform", "logsnr", "karras", "quadratic", "edm")
#: sampler -> the option sets tried (the grid is tried separately, :data:`GRIDS`).
CANDIDATES = {
    "ddim": [{}],
    "heun": [{}],
    "dpm_solver++": [{"order": 2}, {"order": 3, "reference_3m": True},
                     {"order": 3, "reference_3m": True, "lower_order_final": False}],
    "unipc": [{"order": 2, "variant": "bh2"}, {"order": 2, "variant": "bh2",
                                               "lower_order_final": False},
              {"order": 3, "variant": "bh1"}, {"order": 3, "variant": "bh2"}],
    "ipndm": [{"order": 3}, {"order": 4}],
    "lms": [{"order": 3}, {"order": 4}],
}
#: A configuration replaces the registered default only if it scores below ``1 / TIE`` of it.
TIE = 1.05
#: What ``auto`` (:func:`sdediff.samplers.grids.auto`) is on the VP processes of these problems.
AUTO_ON_VP = "quadratic"
#: Samplers whose registered default stays whatever the scores, and why.
KEPT = {"ddim": "kept: the first-order baseline; encoding, inpainting, guidance and the diffusers "
                "DDIM equivalence are measured on its uniform grid"}
PROBLEMS = {"gmm2d": gmm2d, "gmm64": gmm64}
#: The VE check of the ``auto`` grid: these mixtures under the VE process, at 10 and 20 NFE.
VE_CHECKS = {"gmm2d": gmm2d, "gmm16": lambda: ring_mixture(16, 6, 0.2, seed=7)}
VE_BUDGETS = (10, 20)
CHECKS = {"ring5 (2-D)": lambda: ring_mixture(2, 5, 0.1),
          "gmm16": lambda: ring_mixture(16, 6, 0.2, seed=7),
          "gmm32": lambda: ring_mixture(32, 20, 0.15, seed=3)}


def label(sampler: str, options: dict) -> str:
    return sampler + "".join(f" {k}={v}" for k, v in options.items())


def configurations():
    for sampler, option_sets in CANDIDATES.items():
        for options in option_sets:
            for grid in GRIDS:
                yield sampler, options, grid


def mixture_rows(name: str, gmm, budgets, sde=None) -> list[dict]:
    """Every configuration at every budget on one exact mixture (VP linear unless ``sde``): RMS
    error to the exact endpoint."""
    sde = sde or sd.VPSDE()
    model = gmm.score_model(sde)
    x_T = sde.prior_sample((BATCH, gmm.dim), generator=torch.Generator().manual_seed(SEED),
                           dtype=torch.float64)
    reference = exact_pf_endpoint(gmm, sde, x_T, T_END)
    rows = []
    for sampler, options, grid in configurations():
        solver = sd.samplers.get(sampler, schedule=grid, **options)
        for budget in budgets:
            fit = solver.steps_within(budget, sde, T_END)
            if fit is None:
                continue
            result = solver.solve(model, x_T, solver.grid(sde, fit[0], T_END))
            rows.append({"problem": name, "sampler": sampler, "options": options, "grid": grid,
                         "budget": budget, "nfe": result.nfe,
                         "value": rms(result.x, reference)})
    return rows


def digits_rows(budgets, num: int) -> list[dict]:
    """Every configuration at every budget on the bundled digits model: Fréchet distance."""
    model, _ = load_model(default_checkpoint())
    x_T = model.sde.prior_sample((num, 1, 8, 8), generator=torch.Generator().manual_seed(SEED))
    rows = []
    for sampler, options, grid in configurations():
        solver = sd.samplers.get(sampler, schedule=grid, **options)
        for budget in budgets:
            fit = solver.steps_within(budget, model.sde, T_END, reserve=1)
            if fit is None:
                continue
            result = sd.sample(model, x_T=x_T, sampler=sampler, steps=fit[0], schedule=grid,
                               return_info=True, **options)
            quality = digits_frechet(result.x.clamp(-1, 1))
            rows.append({"problem": "digits", "sampler": sampler, "options": options,
                         "grid": grid, "budget": budget, "nfe": result.nfe,
                         "value": quality.frechet, "floor": quality.floor})
        print(f"[digits] {label(sampler, options)}, {grid}: "
              + ", ".join(f"{r['value']:.1f}" for r in rows[-len(budgets):]), flush=True)
    return rows


def scores(rows: list[dict]) -> dict:
    """``(sampler, options label, grid) -> (score, {(problem, budget): ratio})`` where the ratio
    is the value over the best value of that cell and the score their geometric mean."""
    best: dict = {}
    for r in rows:
        cell = (r["problem"], r["budget"])
        best[cell] = min(best.get(cell, math.inf), r["value"])
    ratios: dict = {}
    for r in rows:
        key = (r["sampler"], label(r["sampler"], r["options"]), r["grid"])
        ratios.setdefault(key, {})[(r["problem"], r["budget"])] = r["value"] / best[
            (r["problem"], r["budget"])]
    return {key: (math.exp(sum(map(math.log, cells.values())) / len(cells)), cells)
            for key, cells in ratios.items()}


def options_of(rows: list[dict], text: str) -> dict:
    """The options of the configuration labelled ``text``."""
    return next(r["options"] for r in rows if label(r["sampler"], r["options"]) == text)


def current_default(sampler: str) -> tuple[str, str]:
    """The registered default of ``sampler`` as the ``(label, grid)`` of the candidate that runs
    it (a candidate's unnamed options take the registered values), ``auto`` read as the grid it
    gives on the VP process of these problems."""
    registered = dict(sd.samplers.get(sampler).options)
    grid = registered.pop("schedule")
    options = next((o for o in CANDIDATES[sampler] if {**registered, **o} == registered),
                   registered)
    return label(sampler, options), (AUTO_ON_VP if grid == "auto" else grid)


def choose(scored: dict) -> dict:
    """Each sampler's default: ``sampler -> (label, grid, score, why)``. The lowest-score
    configuration, unless the registered default scores within :data:`TIE` of it (then the
    registered one stays: a difference that size is within the benchmark's noise), or the sampler
    is in :data:`KEPT`."""
    best: dict = {}
    for (sampler, text, grid), (score, _) in scored.items():
        if sampler not in best or score < best[sampler][2]:
            best[sampler] = (text, grid, score)
    chosen = {}
    for sampler, (text, grid, score) in best.items():
        current = current_default(sampler)
        current_score = scored.get((sampler, *current), (math.inf,))[0]
        if sampler in KEPT:
            chosen[sampler] = (*current, current_score, KEPT[sampler])
        elif current == (text, grid):
            chosen[sampler] = (text, grid, score, "lowest score")
        elif current_score <= TIE * score:
            chosen[sampler] = (*current, current_score,
                               f"registered default kept: within {TIE - 1:.0%} of the lowest score "
                               f"({score:.2f}, {text}, {grid})")
        else:
            chosen[sampler] = (text, grid, score, "lowest score")
    return chosen


def ve_table(ve_rows: list[dict], chosen: dict) -> list[str]:
    """Each chosen default's error under VE on every grid, as a ratio to its own ``logsnr`` run
    (what ``auto`` is on VE)."""
    lines = ["", "Under the VE process (the check behind `auto` = `logsnr` there): each chosen "
             "default's RMS error on every grid over its error on `logsnr`.", "",
             "| sampler | problem | NFE | " + " | ".join(GRIDS) + " |",
             "|---|---|---|" + "---|" * len(GRIDS)]
    for sampler, (text, *_rest) in chosen.items():
        if sampler in KEPT:
            continue
        mine = [r for r in ve_rows if label(r["sampler"], r["options"]) == text]
        for problem in VE_CHECKS:
            for b in VE_BUDGETS:
                cell = {r["grid"]: r["value"] for r in mine
                        if r["problem"] == problem and r["budget"] == b}
                lines.append(f"| {text} | {problem} | {b} | " + " | ".join(
                    f"{cell[g] / cell['logsnr']:.2f}" for g in GRIDS) + " |")
    return lines


def markdown(rows, checks, scored, chosen, check_scored, meta, ve_rows) -> str:
    budgets, cells = meta["budgets"], list(dict.fromkeys((r["problem"], r["budget"])
                                                         for r in rows))
    best_sampler = min((s for s in chosen if s not in KEPT), key=lambda s: chosen[s][2])
    lines = ["# Defaults by evidence (issue 17 item 3)", "",
             f"`python benchmarks/bench_defaults.py{' --quick' if meta['quick'] else ''}` "
             f"({meta['seconds']:.0f} s wall, {meta['machine']}, torch {meta['torch']}). "
             f"gmm2d/gmm64: RMS error to the exact probability-flow endpoint (256 draws); digits: "
             f"Fréchet distance of {meta['digits_num']} samples (floor "
             f"{meta['digits_floor']:.1f} at that size), final denoise in the NFE. Score: "
             "geometric mean over the cells of value / best value of the cell.", "",
             "## The chosen defaults", "",
             "| sampler | default options | grid | score | why | held-out score | best held-out "
             "score of this sampler |", "|---|---|---|---|---|---|---|"]
    for sampler, (text, grid, score, why) in sorted(chosen.items(), key=lambda kv: kv[1][2]):
        held = check_scored.get((sampler, text, grid), (math.nan,))[0]
        best_held = min(s for (n, _, _), (s, _) in check_scored.items() if n == sampler)
        lines.append(f"| `{sampler}` | {text[len(sampler):].strip() or '-'} | {grid} | "
                     f"{score:.2f} | {why} | {held:.2f} | {best_held:.2f} |")
    lines += ["", f"Default sampler (lowest score of the fast solvers' defaults): "
              f"**`{best_sampler}`**. On VP processes the registered grid `auto` is "
              f"`{AUTO_ON_VP}` (on VE, `logsnr`).", "",
              "## Every candidate", "",
              "Ratio to the best of each cell (problem, NFE); sorted by score within a sampler.", "",
              "| configuration | grid | score | " + " | ".join(f"{p} {b}" for p, b in cells) + " |",
              "|---|---|---|" + "---|" * len(cells)]
    for sampler in CANDIDATES:
        mine = sorted(((k, v) for k, v in scored.items() if k[0] == sampler),
                      key=lambda kv: kv[1][0])
        for (_, text, grid), (score, ratio) in mine:
            lines.append(f"| {text} | {grid} | {score:.2f} | "
                         + " | ".join(f"{ratio[c]:.2f}" if c in ratio else "-" for c in cells)
                         + " |")
    lines += ["", "Best value of each cell:", "",
              "| problem | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for problem in dict.fromkeys(p for p, _ in cells):
        here = [r for r in rows if r["problem"] == problem]
        lines.append(f"| {problem} | " + " | ".join(
            "{:.3g} ({})".format(*min((r["value"], f"{label(r['sampler'], r['options'])}, "
                                       f"{r['grid']}") for r in here if r["budget"] == b))
            for b in budgets) + " |")
    lines += ["", "Held-out mixtures (never used for the choice), ratio to the best of each cell, "
              "for the chosen defaults:", "",
              "| sampler | " + " | ".join(f"{p} {b}" for p, b in dict.fromkeys(
                  (r["problem"], r["budget"]) for r in checks)) + " | score |",
              "|---|" + "---|" * (len({(r['problem'], r['budget']) for r in checks}) + 1)]
    for sampler, (text, grid, *_) in sorted(chosen.items(), key=lambda kv: kv[1][2]):
        score, ratio = check_scored[(sampler, text, grid)]
        lines.append(f"| `{text}`, {grid} | " + " | ".join(f"{v:.2f}" for v in ratio.values())
                     + f" | {score:.2f} |")
    lines += ve_table(ve_rows, chosen)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser, RESULTS, "10 NFE only and 100 digits")
    parser.add_argument("--rescore", action="store_true",
                        help="choose again from the rows of the existing defaults.json in the "
                        "output folder, without measuring (after a change of the choice rule)")
    args = parser.parse_args()
    out = results_folder(args, RESULTS, "defaults")
    out.mkdir(parents=True, exist_ok=True)
    if args.rescore:
        saved = json.loads((out / "defaults.json").read_text())
        rows, checks, meta = saved["rows"], saved["checks"], saved["meta"]
    else:
        budgets, num = ((10,), 100) if args.quick else (BUDGETS, DIGITS_NUM)
        start = time.perf_counter()
        rows = []
        for name, make in PROBLEMS.items():
            rows += mixture_rows(name, make(), budgets)
            print(f"[{name}] {time.perf_counter() - start:.0f} s", flush=True)
        rows += digits_rows(budgets, num)
        checks = [r for name, make in CHECKS.items() for r in mixture_rows(name, make(), budgets)]
        meta = {"seconds": time.perf_counter() - start, "quick": args.quick, "budgets": budgets,
                "digits_num": num, "torch": torch.__version__,
                "digits_floor": next(r["floor"] for r in rows if r["problem"] == "digits"),
                "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads"}
    scored, check_scored = scores(rows), scores(checks)
    chosen = choose(scored)
    ve_rows = [r for name, make in VE_CHECKS.items()
               for r in mixture_rows(name, make(), VE_BUDGETS, sd.VESDE())]
    (out / "defaults.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "checks": checks, "ve_rows": ve_rows,
         "chosen": {s: {"options": options_of(rows, t), "grid": g, "score": v, "why": w}
                    for s, (t, g, v, w) in chosen.items()},
         "default_sampler": min((s for s in chosen if s not in KEPT), key=lambda s: chosen[s][2])},
        indent=1) + "\n")
    text = markdown(rows, checks, scored, chosen, check_scored, meta, ve_rows)
    (out / "defaults.md").write_text(text)
    print(text)
    print(f"wrote {out / 'defaults.json'} and {out / 'defaults.md'}")


if __name__ == "__main__":
    main()

"""The adaptive reverse-SDE solver ``adaptive_sde`` against the fixed-step SDE samplers, by energy
distance to exact samples and network calls (issue 17, item 5).

    python benchmarks/bench_adaptive_sde.py              # writes results/adaptive_sde.md/.json
    python benchmarks/bench_adaptive_sde.py --quick      # a smoke run, written to a temp folder
    python benchmarks/bench_adaptive_sde.py --problems gmm2d --repeats 8
    python benchmarks/bench_adaptive_sde.py --digits     # also the bundled digits model

**Problems**: ``gmm2d`` and ``gmm64`` (:mod:`sdediff.bench.problems`), VP linear process, float64,
the mixture's exact score as the model (every error is the sampler's own), ``t_end = 1e-3``,
``denoise=False`` (the state at ``t_end`` against exact draws of ``p_{t_end}``), as ``sdediff
bench``. **Cost**: NFE, counted network calls of the batch, which is the calls per sample
(``adaptive_sde`` shares its steps across the batch); mean over the repeats.

**Quality**: the energy distance ``ED`` of ``--num`` samples to as many exact draws, divided by the
two-sample floor (two exact sets of that size; mean of :data:`FLOOR_PAIRS` pairs): 1 is a perfect
sampler. One draw of that ratio scatters with a standard deviation near 1 on gmm2d at 2000 samples
(measured: 0.4x to 3.5x for two exact sets), far too wide to tell 1.2x from 1x in a few repeats.
So each of ``--repeats`` repeats draws one ``x_T``, one Brownian seed and one exact set, shared by
every sampler (paired), and a **pathwise reference** on that path: ``adaptive_sde`` at
``rtol = atol =`` :data:`REFERENCE_TOL`. Every SDE sampler here reads the same Brownian path (the
fixed-step ones through its increments on their grids), so they all converge to that one solution,
and the reference's ``ED`` carries most of the repeat's luck. The figure reported is

    paired ratio = 1 + mean_k (ED_k - ED_ref,k) / floor,

an estimate of ``E[ED] / floor`` (the reference's expected ``ED`` is the floor, its output being a
draw of ``p_{t_end}`` up to its small error), with a standard error from the spread of the
differences; the plain mean of ``ED_k / floor`` is given beside it (and the reference's own).

**Runs**: ``adaptive_sde`` at each ``--tols`` entry (``rtol = atol``) and at its defaults
(``rtol = 0.05``, ``atol = 0.0078``); every fixed-step SDE sampler (``euler_maruyama``, ``sde``,
``reverse_diffusion``, ``ddpm``, ``pc``, ``ddim`` with ``eta = 1``) at each ``--nfe`` budget
(the most steps whose exact NFE fits, :meth:`Sampler.steps_within
<sdediff.samplers.base.Sampler.steps_within>`).

**Target** (issue 17): ``adaptive_sde`` at most :data:`TARGET_RATIO` x the floor in at most
:data:`TARGET_CALLS` x the calls of the best fixed-step SDE sampler reaching that figure, judged on
the paired ratio; a sampler's cost is the smallest NFE of the grid at which it reaches it (so the
fixed-step figure is an upper bound within the grid's resolution).

``--digits``: the bundled digits model (:func:`sdediff.pretrained.default_checkpoint`), Fréchet
distance in the digit classifier's features (:func:`sdediff.bench.digit_features.digits_frechet`,
``denoise=True``, clipped to ``[-1, 1]``) of ``adaptive_sde`` at its defaults and at
``rtol = atol = 0.1``, each beside ``euler_maruyama`` at the same NFE (final denoise included).

Writes ``benchmarks/results/adaptive_sde.md`` and ``.json``; a run of some problems (``--problems
gmm64``; ``--problems "" --digits`` for the digits alone) keeps the other sections already in the
folder, each with the command that made it. ``--quick`` (400 samples, 2 repeats,
2 budgets, one tolerance, 50 digits) writes to a fresh temporary folder unless ``--out`` is given,
and refuses to write over the committed results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.bench.metrics import energy_distance, two_sample_floor
from sdediff.bench.problems import PROBLEMS, noisy_sample
from sdediff.bench.report import add_output_arguments, results_folder

RESULTS = Path(__file__).resolve().parent / "results"
#: Where the mixtures' samplers stop (as ``sdediff bench``).
T_END = 1e-3
#: The fixed-step SDE samplers and their options (DDIM with eta = 1 is DDPM's ancestral step).
FIXED = {"euler_maruyama": {}, "sde": {}, "reverse_diffusion": {}, "ddpm": {}, "pc": {},
         "ddim": {"eta": 1.0}}
BUDGETS = (10, 20, 30, 50, 100)
TOLERANCES = (0.3, 0.2, 0.15, 0.1, 0.05, 0.02)
#: The sampler's own defaults, always run beside ``--tols``.
DEFAULTS = {"rtol": 0.05, "atol": 0.0078}
NUM, REPEATS = 2000, 4
#: rtol = atol of the pathwise reference (``adaptive_sde`` on each repeat's path).
REFERENCE_TOL = 0.005
#: Pairs of exact sets whose mean energy distance is the floor.
FLOOR_PAIRS = 50
#: The issue's target: this multiple of the floor in this fraction of the best fixed-step calls.
TARGET_RATIO, TARGET_CALLS = 1.2, 0.5
QUICK = {"num": 400, "repeats": 2, "nfe": "10,30", "tols": "0.1", "digits_num": 50,
         "reference_tol": 0.02}


def parse_list(text: str, kind, what: str) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what} must be a comma-separated list, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise SystemExit(f"{what} must be positive numbers, got {text!r}")
    return values


def mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


class Problem:
    """One mixture with ``repeats`` paired draws (``x_T``, the Brownian seed, the exact set) and
    the pathwise reference's energy distance on each."""

    def __init__(self, name: str, num: int, repeats: int, seed: int, reference_tol: float):
        self.name, self.num, self.repeats = name, num, repeats
        self.gmm, self.sde = PROBLEMS[name](), sd.VPSDE()
        self.model = self.gmm.score_model(self.sde)
        t = torch.tensor(T_END, dtype=torch.float64)
        s_end, scale = math.exp(-float(self.sde.log_snr(t))), float(self.sde.alpha(t))

        def draw(n, g):
            return noisy_sample(self.gmm, n, s_end, scale, generator=g)

        self.floor = two_sample_floor(draw, num, repeats=FLOOR_PAIRS, seed=seed + 7)
        self.seeds = [seed + 100 * k for k in range(repeats)]
        self.x_T = [self.sde.prior_sample((num, self.gmm.dim), dtype=torch.float64,
                                          generator=torch.Generator().manual_seed(s))
                    for s in self.seeds]
        self.exact = [draw(num, torch.Generator().manual_seed(s + 2)) for s in self.seeds]
        self.reference_ed = None
        self.reference = self.measure("adaptive_sde", None,
                                      {"rtol": reference_tol, "atol": reference_tol})

    def measure(self, sampler: str, steps: int | None, options: dict) -> dict:
        eds, nfes, seconds = [], [], 0.0
        for k, s in enumerate(self.seeds):
            r = sd.sample(self.model, x_T=self.x_T[k], sampler=sampler, steps=steps, t_end=T_END,
                          denoise=False, generator=torch.Generator().manual_seed(s + 1),
                          return_info=True, **options)
            eds.append(energy_distance(r.x, self.exact[k]))
            nfes.append(r.nfe)
            seconds += r.seconds
        if self.reference_ed is None:             # this run is the reference
            self.reference_ed = eds
        ratio, ratio_se = mean_se([e / self.floor for e in eds])
        paired, paired_se = mean_se([1 + (e - ref) / self.floor
                                     for e, ref in zip(eds, self.reference_ed, strict=True)])
        return {"problem": self.name, "sampler": sampler, "options": options, "steps": steps,
                "nfe": sum(nfes) / len(nfes), "nfe_each": nfes, "paired": paired,
                "paired_se": paired_se, "ratio": ratio, "ratio_se": ratio_se,
                "energy_distances": eds, "seconds": seconds}


def run_problem(name, args, budgets, tolerances, samplers, command, log) -> dict:
    start = time.perf_counter()
    problem = Problem(name, args.num, args.repeats, args.seed, args.reference_tol)
    ref = problem.reference
    log(f"{name} reference adaptive_sde rtol=atol={args.reference_tol:g}: NFE {ref['nfe']:.1f}, "
        f"plain {ref['ratio']:.2f} +- {ref['ratio_se']:.2f} x floor")
    adaptive, fixed, skipped = [], [], []
    for options in [{"rtol": tol, "atol": tol} for tol in tolerances] + [dict(DEFAULTS)]:
        row = problem.measure("adaptive_sde", None, options)
        adaptive.append(row)
        log(f"{name} adaptive_sde rtol={options['rtol']:g} atol={options['atol']:g}: "
            f"NFE {row['nfe']:.1f}, {cell(row)} x floor")
    for sampler in samplers:
        options = FIXED[sampler]
        configured = sd.samplers.get(sampler, **options)
        for budget in budgets:
            fit = configured.steps_within(budget, problem.sde, T_END)
            if fit is None:
                skipped.append(f"{sampler} at NFE {budget}: its smallest run costs more")
                continue
            row = problem.measure(sampler, fit[0], options)
            row["budget"] = budget
            fixed.append(row)
            log(f"{name} {sampler} {fit[0]} steps: NFE {row['nfe']:.0f}, "
                f"{cell(row)} x floor")
    return {"problem": name, "command": command, "floor": problem.floor,
            "floor_pairs": FLOOR_PAIRS, "reference": ref, "num": args.num,
            "repeats": args.repeats, "budgets": budgets, "tolerances": tolerances,
            "samplers": samplers, "adaptive": adaptive, "fixed": fixed, "skipped": skipped,
            "summary": summarize(adaptive, fixed), "seconds": time.perf_counter() - start}


def summarize(adaptive: list[dict], fixed: list[dict]) -> dict:
    """The cheapest run of each sampler whose paired ratio is within the target, and the verdict."""
    first = {}
    for row in sorted(fixed, key=lambda r: r["nfe"]):
        if row["paired"] <= TARGET_RATIO and row["sampler"] not in first:
            first[row["sampler"]] = row["nfe"]
    reaching = [r for r in adaptive if r["paired"] <= TARGET_RATIO]
    ours = min(reaching, key=lambda r: r["nfe"]) if reaching else None
    best = min(first.items(), key=lambda kv: kv[1]) if first else None
    calls = ours["nfe"] / best[1] if ours and best else None
    return {"fixed_first_nfe_within_target": first,
            "best_fixed": None if best is None else {"sampler": best[0], "nfe": best[1]},
            "adaptive": None if ours is None else {"options": ours["options"], "nfe": ours["nfe"],
                                                   "paired": ours["paired"]},
            "calls_ratio": calls, "target_met": calls is not None and calls <= TARGET_CALLS}


def run_digits(num: int, seed: int, command: str, log) -> dict:
    from sdediff.bench.digit_features import digits_frechet
    from sdediff.checkpoint import load_model
    from sdediff.data import load_digits
    from sdediff.pretrained import default_checkpoint

    model, _ = load_model(default_checkpoint())
    data = load_digits()
    x_T = model.sde.prior_sample((num, *data.shape), generator=torch.Generator().manual_seed(seed))
    rows = []

    def measure(sampler, steps, options):
        r = sd.sample(model, x_T=x_T, sampler=sampler, steps=steps, return_info=True,
                      generator=torch.Generator().manual_seed(seed + 1), **options)
        q = digits_frechet(r.x.clamp(-1, 1).cpu(), seed=seed)
        row = {"sampler": sampler, "options": options, "steps": steps, "nfe": r.nfe,
               "frechet": q.frechet, "floor": q.floor, "ratio": q.frechet / q.floor,
               "seconds": r.seconds}
        log(f"digits {sampler} {options or steps}: NFE {r.nfe}, Fréchet {q.frechet:.2f} "
            f"({row['ratio']:.2f} x floor)")
        rows.append(row)
        return row

    start = time.perf_counter()
    for options in (dict(DEFAULTS), {"rtol": 0.1, "atol": 0.1}):
        ours = measure("adaptive_sde", None, options)
        measure("euler_maruyama", ours["nfe"] - 1, {})        # the same NFE, denoise included
    return {"command": command, "num": num, "rows": rows, "seconds": time.perf_counter() - start}


def cell(row: dict) -> str:
    """Paired ratio ± its standard error (plain ratio)."""
    return f"{row['paired']:.2f} ± {row['paired_se']:.2f} ({row['ratio']:.2f})"


def markdown(results: list[dict], digits: dict | None, meta: dict) -> str:
    lines = ["# adaptive_sde against the fixed-step SDE samplers", "",
             f"{meta['machine']}, torch {meta['torch']}, {meta['threads']} thread(s). Each section "
             "gives the command that made it (a run of some problems keeps the others' sections).",
             "", "Energy distance to exact samples of `p_{t_end}` (t_end = 1e-3, `denoise=False`) as a "
             "multiple of the two-sample floor. Cells: the paired ratio `1 + mean(ED - ED_ref) / "
             "floor` ± its standard error, then (in brackets) the plain mean of `ED / floor`; one "
             "`x_T`, Brownian seed and exact set per repeat for every sampler, `ED_ref` from "
             "`adaptive_sde` at a tight tolerance on the same path (the docstring of "
             "`benchmarks/bench_adaptive_sde.py` says why). "
             "NFE: network calls per sample, mean over the repeats. Exact mixture scores, VP "
             "linear, float64.", ""]
    for res in results:
        s = res["summary"]
        lines += [f"## {res['problem']}", "",
                  f"`{res['command']}`: {res['num']} samples, {res['repeats']} repeats; floor "
                  f"{res['floor']:.3e} ({res['floor_pairs']} pairs); reference rtol = atol = "
                  f"{res['reference']['options']['rtol']:g} at {res['reference']['nfe']:.0f} NFE, "
                  f"plain {res['reference']['ratio']:.2f} ± {res['reference']['ratio_se']:.2f}; "
                  f"{res['seconds']:.0f} s.", "",
                  "| adaptive_sde | NFE | paired ratio ± s.e. (plain) |", "|---|---|---|"]
        lines += [f"| rtol={r['options']['rtol']:g}, atol={r['options']['atol']:g} | "
                  f"{r['nfe']:.1f} | {cell(r)} |" for r in res["adaptive"]]
        budgets = sorted({r["budget"] for r in res["fixed"]})
        lines += ["", "| fixed-step sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for sampler in dict.fromkeys(r["sampler"] for r in res["fixed"]):
            by = {r["budget"]: r for r in res["fixed"] if r["sampler"] == sampler}
            options = FIXED[sampler]
            label = f"`{sampler}`" + (f" ({', '.join(f'{k}={v}' for k, v in options.items())})"
                                      if options else "")
            cells = [(cell(by[b]) + ("" if by[b]["nfe"] == b else f" ({by[b]['nfe']:.0f})"))
                     if b in by else "-" for b in budgets]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        best, ours = s["best_fixed"], s["adaptive"]
        first = ", ".join(f"`{k}` {v:.0f}" for k, v in s["fixed_first_nfe_within_target"].items())
        lines += ["", f"Cheapest NFE within {TARGET_RATIO}x the floor: fixed-step "
                  f"{first or 'none within the budgets'}; "
                  + (f"`adaptive_sde` {ours['nfe']:.1f} (rtol={ours['options']['rtol']:g}, "
                     f"atol={ours['options']['atol']:g}, {ours['paired']:.2f}x)." if ours else
                     "`adaptive_sde` none of its tolerances.")]
        if best and ours:
            lines.append(f"Target (<= {TARGET_CALLS}x the calls of the best fixed-step sampler, "
                         f"`{best['sampler']}` at {best['nfe']:.0f}): **{s['calls_ratio']:.2f}x, "
                         f"{'met' if s['target_met'] else 'not met'}**.")
        else:
            lines.append("Target: not decided (no run within the figure on one side).")
        lines += [f"Skipped: {'; '.join(res['skipped'])}." if res["skipped"] else "", ""]
    if digits:
        lines += ["## digits (bundled model)", "",
                  f"`{digits['command']}`: {digits['num']} samples (one prior draw and Brownian "
                  f"seed for all), `denoise=True`, clipped to [-1, 1]; {digits['seconds']:.0f} s. "
                  "Fréchet "
                  "distance in the digit classifier's features to the held-out split; floor: as "
                  "many training digits against it.", "",
                  "| sampler | options / steps | NFE | Fréchet | floor | ratio |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| `{r['sampler']}` | "
                  + (", ".join(f"{k}={v:g}" for k, v in r["options"].items()) or f"{r['steps']} steps")
                  + f" | {r['nfe']} | {r['frechet']:.2f} | {r['floor']:.2f} | {r['ratio']:.2f} |"
                  for r in digits["rows"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="gmm2d,gmm64", help="comma-separated: gmm2d, gmm64")
    parser.add_argument("--num", type=int, help=f"samples per run (default {NUM})")
    parser.add_argument("--repeats", type=int, help=f"paired repeats (default {REPEATS})")
    parser.add_argument("--nfe", help="budgets of the fixed-step samplers (default "
                        + ",".join(map(str, BUDGETS)) + ")")
    parser.add_argument("--tols", help="rtol = atol of adaptive_sde (default "
                        + ",".join(map(str, TOLERANCES)) + "); its defaults always run too")
    parser.add_argument("--samplers", default=",".join(FIXED),
                        help=f"fixed-step samplers (default all: {', '.join(FIXED)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-tol", type=float, default=REFERENCE_TOL,
                        help=f"rtol = atol of the pathwise reference (default {REFERENCE_TOL})")
    parser.add_argument("--digits", action="store_true", help="also the bundled digits model")
    parser.add_argument("--digits-num", type=int, default=200, help="digits per run")
    add_output_arguments(parser, RESULTS, "a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        for key in ("num", "repeats", "nfe", "tols"):
            if getattr(args, key) is None:
                setattr(args, key, QUICK[key])
        args.digits_num = min(args.digits_num, QUICK["digits_num"])
        if args.reference_tol == REFERENCE_TOL:
            args.reference_tol = QUICK["reference_tol"]
    args.num = NUM if args.num is None else args.num
    args.repeats = REPEATS if args.repeats is None else args.repeats
    if not args.reference_tol > 0:
        raise SystemExit(f"--reference-tol must be positive, got {args.reference_tol}")
    if args.num < 2 or args.repeats < 1:
        raise SystemExit(f"--num must be >= 2 and --repeats >= 1, got {args.num}, {args.repeats}")
    budgets = parse_list(args.nfe or ",".join(map(str, BUDGETS)), int, "--nfe")
    tolerances = parse_list(args.tols or ",".join(map(str, TOLERANCES)), float, "--tols")
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]   # "" : digits only
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    for what, values, allowed in (("problem", problems, PROBLEMS), ("sampler", samplers, FIXED)):
        for value in values:
            if value not in allowed:
                raise SystemExit(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    out = results_folder(args, RESULTS, "adaptive_sde")
    start = time.perf_counter()

    def log(text):
        print(f"[{time.perf_counter() - start:7.1f} s] {text}", flush=True)

    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "benchmarks/bench_adaptive_sde.py", *given])
    results = [run_problem(name, args, budgets, tolerances, samplers, command, log)
               for name in problems]
    digits = run_digits(args.digits_num, args.seed, command, log) if args.digits else None
    previous = out / "adaptive_sde.json"
    if previous.exists():             # keep the sections of the problems not run this time
        kept = json.loads(previous.read_text())
        ran = {r["problem"] for r in results}
        results += [r for r in kept.get("problems", []) if r["problem"] not in ran]
        digits = digits or kept.get("digits")
    results.sort(key=lambda r: list(PROBLEMS).index(r["problem"]))
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "t_end": T_END,
            "defaults": DEFAULTS, "target": {"ratio": TARGET_RATIO, "calls": TARGET_CALLS},
            "last_command": command, "quick": args.quick, "seed": args.seed,
            "seconds": time.perf_counter() - start}
    text = markdown(results, digits, meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adaptive_sde.md").write_text(text)
    (out / "adaptive_sde.json").write_text(json.dumps(
        {"meta": meta, "problems": results, "digits": digits}, indent=2))
    print(text)
    print(f"written: {out / 'adaptive_sde.md'}, {out / 'adaptive_sde.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Image targets on the bundled digits model (or any digits checkpoint): issue 7's, and issue 17's
fast-solver defaults and fitted grids on a trained network.

    python benchmarks/bench_digits.py                      # bundled model, writes results/digits.*
    python benchmarks/bench_digits.py --checkpoint runs/digits --num 1000
    python benchmarks/bench_digits.py --num 200 --likelihood-num 20 --fit-iterations 20 --out /tmp/d
    python benchmarks/bench_digits.py --heun-grids     # only Heun's grid table (about 10 minutes)

For each sampler at 5, 10, 20 and 50 NFE with its default options and grid (counted network calls,
the final denoise included), from the same ``--num`` prior draws: the Fréchet distance to the
held-out digits in the features of the shipped digit classifier
(:mod:`sdediff.bench.digit_features`), with the real-vs-real floor (as many training digits
against the held-out split) and the predicted class histogram. Then held-out bits/dim: the
probability-flow ODE likelihood (dopri5, rtol = atol = 1e-5, t_min = 1e-5, Hutchinson divergence,
one Rademacher probe) of every held-out digit, uniformly dequantized over the 17 grey levels (bin
width 2/17, so the offset is log2(8.5) = 3.087 bits; a uniform density over
the range scores log2(17) = 4.087).

Then ``sd.sample(model, x_T=...)`` with nothing else (the default sampler at its default steps),
and **fitted grids** (:func:`sdediff.samplers.fitted.fit_grid`): for each of :data:`FITTED` at 10
NFE (9 calls and the final denoise), a grid fitted to a pilot batch of :data:`PILOT` prior draws
(seed 1234, never the evaluation draws; reference: the ``ode`` sampler at 1e-5), judged by the
Fréchet distance of the ``--num`` evaluation samples against the same solver on its default grid.

Targets: the best sampler's Fréchet distance at 50 NFE at most 2x the floor, every class
between 5% and 15% of its samples; every fast solver (:data:`FAST`) at 10 NFE at most 1.25x its
own 50-NFE figure; the default sampler at the floor's level (at most the best 50-NFE figure).

``--heun-grids`` (its own files ``digits_heun_grids.{json,md}``): ``heun`` at 10 and 50 NFE on
every named grid and on Karras et al.'s spacing with rho 3, 4 and 5 besides the default 7, from
the same prior draws: whether any grid brings Heun's 10-NFE figure within 1.25x of its 50-NFE one.
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
from sdediff.bench import digits_by_budget
from sdediff.bench.digit_features import digits_frechet
from sdediff.checkpoint import load_model
from sdediff.data import load_digits
from sdediff.ode import bits_per_dim, dequantize, log_likelihood
from sdediff.plotting import plot_image_panels
from sdediff.pretrained import default_checkpoint
from sdediff.samplers.fitted import fit_grid
from sdediff.samplers.grids import karras

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLERS = ("ddim", "heun", "dpm_solver++", "unipc", "ipndm", "lms", "euler_maruyama")
#: The fast solvers of the 1.25x target (``ddim`` and ``euler_maruyama`` are first order).
FAST = ("heun", "dpm_solver++", "unipc", "ipndm", "lms")
NFES = (5, 10, 20, 50)
#: Fitted-grid runs (item 6): solver, options, budget (the final denoise included).
FITTED = [("ipndm", {}, 10), ("unipc", {}, 10), ("dpm_solver++", {}, 10)]
PILOT, PILOT_SEED = 64, 1234
#: ``--heun-grids``: the named grids, then Karras et al.'s spacing with these rho (7 is ``karras``).
HEUN_GRIDS, HEUN_RHOS, HEUN_NFES = ("karras", "uniform", "logsnr", "quadratic", "edm"), (3, 4, 5), (10, 50)


def heun_grids(model, x_T: torch.Tensor, out: Path) -> None:
    """Heun's Fréchet distance at :data:`HEUN_NFES` on every grid of :data:`HEUN_GRIDS` and
    :data:`HEUN_RHOS`; writes ``digits_heun_grids.{json,md}``."""
    start = time.perf_counter()
    heun = sd.samplers.get("heun")
    grids = [(g, g) for g in HEUN_GRIDS] + [(f"rho {r}", r) for r in HEUN_RHOS]
    rows = []
    for label, grid in grids:
        for budget in HEUN_NFES:
            steps, _ = heun.steps_within(budget, model.sde, 1e-3, reserve=1)
            schedule = grid if isinstance(grid, str) else karras(model.sde, steps, 1e-3, rho=grid)
            r = sd.sample(model, x_T=x_T, sampler="heun", steps=steps, schedule=schedule,
                          return_info=True)
            rows.append({"grid": label, "budget": budget, "nfe": r.nfe,
                         "frechet": digits_frechet(r.x.clamp(-1, 1)).frechet})
            print(rows[-1], flush=True)
    seconds = time.perf_counter() - start
    (out / "digits_heun_grids.json").write_text(json.dumps({"seconds": seconds, "rows": rows}, indent=1))
    at = {(r["grid"], r["budget"]): r["frechet"] for r in rows}
    lines = ["# Heun on the digits model by grid", "",
             f"`python benchmarks/bench_digits.py --heun-grids` ({len(x_T)} samples per row, the "
             f"same prior draws; {platform.machine()}, {torch.get_num_threads()} threads, "
             f"{seconds:.0f} s). Fréchet distance in the digit classifier's features; NFE counts "
             "the final denoise (Heun's 2N - 1 calls: 5 steps at 10, 25 at 50).", "",
             "| grid | NFE 10 | NFE 50 | 10 / 50 NFE (goal <= 1.25) |", "|---|---|---|---|"]
    for label, _ in grids:
        lines.append(f"| {label} | {at[(label, 10)]:.2f} | {at[(label, 50)]:.2f} | "
                     f"{at[(label, 10)] / at[(label, 50)]:.2f} |")
    (out / "digits_heun_grids.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the bundled digits model")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--likelihood-num", type=int, help="held-out digits scored (default all)")
    parser.add_argument("--fit-iterations", type=int, default=200,
                        help="pilot runs per fitted grid (default 200)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--heun-grids", action="store_true",
                        help="only Heun's table by grid (digits_heun_grids.{json,md})")
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or default_checkpoint()
    model, config = load_model(checkpoint)
    data = load_digits()
    x_T = model.sde.prior_sample((args.num, *data.shape), generator=torch.Generator().manual_seed(0))
    if args.heun_grids:
        heun_grids(model, x_T, out)
        return
    rows, panels = [], {}
    for run in digits_by_budget(model, x_T, SAMPLERS, NFES):
        r, q = run.result, run.quality
        rows.append({"sampler": run.sampler, "budget": run.budget, "steps": run.steps,
                     "nfe": r.nfe, "frechet": q.frechet, "floor": q.floor, "ratio": q.ratio,
                     "classes": q.classes, "seconds_per_sample": r.seconds / args.num})
        panels[f"{run.sampler}, {r.nfe} NFE: FD {q.frechet:.1f}"] = run.x[:36]
        print(f"{run.sampler:<15} NFE {r.nfe:>3}  Fréchet {q.frechet:7.2f}  floor {q.floor:.2f}  "
              f"ratio {q.ratio:5.2f}  classes {min(q.classes):.3f}..{max(q.classes):.3f}  "
              f"{r.seconds:.1f} s")
    plot_image_panels(panels, out / "digits_samplers.png", ncols=len(NFES), nrow=6)

    r = sd.sample(model, x_T=x_T, generator=torch.Generator().manual_seed(1), return_info=True)
    q = digits_frechet(r.x.clamp(-1, 1))
    default = {"sampler": sd.samplers.DEFAULT_SAMPLER, "nfe": r.nfe, "frechet": q.frechet,
               "floor": q.floor, "ratio": q.ratio, "classes": q.classes}
    print(f"sd.sample defaults ({default['sampler']}): NFE {r.nfe}  Fréchet {q.frechet:.2f}")

    fitted = []
    pilot = model.sde.prior_sample((PILOT, *data.shape),
                                   generator=torch.Generator().manual_seed(PILOT_SEED))
    for name, options, budget in FITTED:
        solver = sd.samplers.get(name, **options)
        steps, nfe = solver.steps_within(budget, model.sde, 1e-3, reserve=1)
        tic = time.perf_counter()
        grid = fit_grid(model, name, nfe, pilot=pilot, iterations=args.fit_iterations, **options)
        seconds = time.perf_counter() - tic
        r = sd.sample(model, x_T=x_T, **grid.sample_options(), return_info=True)
        q = digits_frechet(r.x.clamp(-1, 1))
        on_default = next(x for x in rows if x["sampler"] == name and x["budget"] == budget)
        fitted.append({"sampler": name, "options": options, "budget": budget, "nfe": r.nfe,
                       "init": grid.init, "pilot_error": grid.pilot_error,
                       "pilot_nfe": grid.pilot_nfe, "fit_seconds": seconds,
                       "times": grid.times.tolist(), "frechet": q.frechet,
                       "frechet_default_grid": on_default["frechet"],
                       "default_grid": solver.options["schedule"]})
        print(f"fitted {name} at {r.nfe} NFE: pilot RMS {grid.pilot_error['init']:.3f} -> "
              f"{grid.pilot_error['fitted']:.3f}; Fréchet {q.frechet:.2f} (default grid "
              f"{on_default['frechet']:.2f}); {seconds:.0f} s")

    g = torch.Generator().manual_seed(0)
    held_out = data.test[: args.likelihood_num] if args.likelihood_num else data.test
    x = dequantize(held_out, data.n_levels, data.data_range, generator=g)
    lik = log_likelihood(model, x, generator=g, return_info=True)
    nll, D = lik.nll.double(), x[0].numel()
    bpd = bits_per_dim(float(nll.mean()), D, n_levels=data.n_levels, data_range=data.data_range)
    bpd_se = float(nll.std()) / (math.sqrt(len(nll)) * D * math.log(2))
    likelihood = {"bits_per_dim": bpd, "standard_error": bpd_se, "n": len(nll), "nfe": lik.nfe,
                  "seconds_per_digit": lik.seconds / len(nll), "n_levels": data.n_levels,
                  "uniform_bits_per_dim": math.log2(data.n_levels)}
    print(f"held-out bits/dim {bpd:.3f} +- {bpd_se:.3f} ({len(nll)} digits, NFE {lik.nfe}, "
          f"{lik.seconds / len(nll):.3f} s per digit)")

    at = {(r["sampler"], r["budget"]): r for r in rows}
    best50 = min((r for r in rows if r["budget"] == 50), key=lambda r: r["frechet"])
    fast_10_over_50 = {n: at[(n, 10)]["frechet"] / at[(n, 50)]["frechet"] for n in FAST
                       if (n, 10) in at and (n, 50) in at}
    targets = {
        "best_at_50": best50["sampler"], "best_at_50_ratio_to_floor": best50["ratio"],
        "best_at_50_class_range": [min(best50["classes"]), max(best50["classes"])],
        "fast_10_over_own_50": fast_10_over_50,
        "default_over_best_50": default["frechet"] / best50["frechet"]}
    meta = {"checkpoint": str(checkpoint), "num": args.num, "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "seconds": time.perf_counter() - start}
    (out / "digits.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "default": default, "fitted": fitted,
         "likelihood": likelihood, "targets": targets}, indent=2))
    lines = ["# Digits: the bundled model by sampler and NFE", "",
             f"`python benchmarks/bench_digits.py` ({args.num} samples per row, same prior draws, "
             f"sampled without a class; {meta['machine']}, {meta['seconds']:.0f} s in all). "
             "Fréchet distance in the digit classifier's features to the held-out split; floor: "
             f"as many training digits against the held-out split ({best50['floor']:.2f}). "
             "Every sampler at its default options and grid; NFE counts the final denoise.", "",
             "| sampler | grid | " + " | ".join(f"NFE {b}" for b in NFES)
             + " | 10 / 50 NFE | classes at 50 NFE |", "|---|---|" + "---|" * (len(NFES) + 2)]
    for name in SAMPLERS:
        cells = [(f"{at[(name, b)]['frechet']:.2f}" + ("" if at[(name, b)]["nfe"] == b
                                                      else f" ({at[(name, b)]['nfe']})"))
                 if (name, b) in at else "-" for b in NFES]
        ratio = (f"{at[(name, 10)]['frechet'] / at[(name, 50)]['frechet']:.2f}"
                 if (name, 10) in at and (name, 50) in at else "-")
        classes = at[(name, 50)]["classes"] if (name, 50) in at else None
        lines.append(f"| `{name}` | {sd.samplers.get(name).options.get('schedule', '-')} | "
                     + " | ".join(cells) + f" | {ratio} | "
                     + ("-" if classes is None else f"{min(classes):.3f}..{max(classes):.3f}")
                     + " |")
    lines += ["", "Seconds per sample at 50 NFE: " + ", ".join(
        f"`{r['sampler']}` {r['seconds_per_sample'] * 1e3:.1f} ms" for r in rows
        if r["budget"] == 50) + ".", "",
        f"`sd.sample(model, x_T=x_T)` with nothing else (`{default['sampler']}`, {default['nfe']} "
        f"NFE): Fréchet **{default['frechet']:.2f}**, {default['ratio']:.2f}x the floor, "
        f"{targets['default_over_best_50']:.2f}x the best 50-NFE figure.", "",
        f"Class histogram of `{best50['sampler']}` at 50 NFE (digits 0-9): "
        + ", ".join(f"{c:.3f}" for c in best50["classes"]), "",
        f"Targets: best at 50 NFE `{best50['sampler']}` at **{best50['ratio']:.2f}x** the "
        f"floor (goal <= 2); classes {min(best50['classes']):.3f}..{max(best50['classes']):.3f}"
        f" (goal 0.05..0.15); fast solvers at 10 NFE over their own 50-NFE figure (goal <= 1.25): "
        + ", ".join(f"`{n}` **{v:.2f}**" for n, v in fast_10_over_50.items()) + ".", "",
        f"Fitted grids ({PILOT} pilot draws, seed {PILOT_SEED}; {args.fit_iterations} pilot runs "
        "each): Fréchet distance of the same evaluation samples.", "",
        "| solver | NFE | default grid | Fréchet, default grid | fitted from | pilot RMS "
        "(init -> fitted) | Fréchet, fitted grid | pilot calls | seconds |",
        "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{f['sampler']}` | {f['nfe']} | {f['default_grid']} | "
              f"{f['frechet_default_grid']:.2f} | {f['init']} | "
              f"{f['pilot_error']['init']:.3f} -> {f['pilot_error']['fitted']:.3f} | "
              f"{f['frechet']:.2f} | {f['pilot_nfe']} | {f['fit_seconds']:.0f} |" for f in fitted]
    lines += ["", f"Held-out likelihood: **{bpd:.3f} +- {bpd_se:.3f} bits/dim** over {len(nll)} "
              f"digits (uniform dequantization over 17 levels; a uniform density scores "
              f"{math.log2(17):.3f}); {lik.nfe} NFE for the batch, "
              f"{lik.seconds / len(nll):.3f} s per digit.", "",
              "![samples](digits_samplers.png)", ""]
    (out / "digits.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

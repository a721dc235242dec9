"""Issue 7's image targets on the bundled digits model (or any digits checkpoint).

    python benchmarks/bench_digits.py                      # bundled model, writes results/digits.*
    python benchmarks/bench_digits.py --checkpoint runs/digits --num 1000

For each sampler at 10 and 50 NFE (counted network calls, the final denoise included), from the
same ``--num`` prior draws: the Fréchet distance to the held-out digits in the features of the
shipped digit classifier (:mod:`sdediff.bench.digit_features`), with the real-vs-real floor (as
many training digits against the held-out split) and the predicted class histogram. Then held-out
bits/dim: the probability-flow ODE likelihood (dopri5, rtol = atol = 1e-5, t_min = 1e-5,
Hutchinson divergence, one Rademacher probe) of every held-out digit, uniformly dequantized over
the 17 grey levels (bin width 2/17, so the offset is log2(8.5) = 3.087 bits; a uniform density over
the range scores log2(17) = 4.087).

Targets: the best sampler's Fréchet distance at 50 NFE at most 2x the floor, every class
between 5% and 15% of its samples; the best fast solver at 10 NFE at most 1.25x its own 50-NFE
figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from sdediff.bench import digits_by_budget
from sdediff.checkpoint import load_model
from sdediff.data import load_digits
from sdediff.ode import bits_per_dim, dequantize, log_likelihood
from sdediff.plotting import plot_image_panels
from sdediff.pretrained import default_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLERS = ("ddim", "dpm_solver++", "unipc", "ipndm", "heun", "euler_maruyama")
FAST = ("dpm_solver++", "unipc", "ipndm")
NFES = (10, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the bundled digits model")
    parser.add_argument("--num", type=int, default=1000)
    parser.add_argument("--likelihood-num", type=int, help="held-out digits scored (default all)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or default_checkpoint()
    model, config = load_model(checkpoint)
    data = load_digits()
    x_T = model.sde.prior_sample((args.num, *data.shape), generator=torch.Generator().manual_seed(0))
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
    fast10 = min((at[(n, 10)] for n in FAST if (n, 10) in at), key=lambda r: r["frechet"])
    targets = {
        "best_at_50": best50["sampler"], "best_at_50_ratio_to_floor": best50["ratio"],
        "best_at_50_class_range": [min(best50["classes"]), max(best50["classes"])],
        "best_fast_at_10": fast10["sampler"],
        "fast_10_over_own_50": fast10["frechet"] / at[(fast10["sampler"], 50)]["frechet"]}
    meta = {"checkpoint": str(checkpoint), "num": args.num, "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "seconds": time.perf_counter() - start}
    (out / "digits.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "likelihood": likelihood, "targets": targets}, indent=2))
    lines = ["# Digits: the bundled model by sampler and NFE", "",
             f"`python benchmarks/bench_digits.py` ({args.num} samples per row, same prior draws; "
             f"{meta['machine']}). Fréchet distance in the digit classifier's features to the "
             "held-out split; floor: as many training digits against the held-out split.", "",
             "| sampler | NFE | Fréchet | floor | ratio | smallest class | largest class | "
             "s / sample |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| `{r['sampler']}` | {r['nfe']} | {r['frechet']:.2f} | {r['floor']:.2f} | "
              f"{r['ratio']:.2f} | {min(r['classes']):.3f} | {max(r['classes']):.3f} | "
              f"{r['seconds_per_sample'] * 1e3:.2f} ms |" for r in rows]
    lines += ["", f"Class histogram of `{best50['sampler']}` at 50 NFE (digits 0-9): "
              + ", ".join(f"{c:.3f}" for c in best50["classes"]), "",
              f"Targets: best at 50 NFE `{best50['sampler']}` at **{best50['ratio']:.2f}x** the "
              f"floor (goal <= 2); classes {min(best50['classes']):.3f}..{max(best50['classes']):.3f}"
              f" (goal 0.05..0.15); best fast solver at 10 NFE `{fast10['sampler']}` at "
              f"**{targets['fast_10_over_own_50']:.2f}x** its own 50-NFE figure (goal <= 1.25).",
              "", f"Held-out likelihood: **{bpd:.3f} +- {bpd_se:.3f} bits/dim** over {len(nll)} "
              f"digits (uniform dequantization over 17 levels; a uniform density scores "
              f"{math.log2(17):.3f}); {lik.nfe} NFE for the batch, "
              f"{lik.seconds / len(nll):.3f} s per digit.", "",
              "![samples](digits_samplers.png)", ""]
    (out / "digits.md").write_text("\n".join(lines))
    print("\n".join(lines[-8:]))


if __name__ == "__main__":
    main()

"""Issue 16's digits targets: class-conditional sampling by classifier-free guidance weight.

    python benchmarks/bench_guidance.py                 # bundled model, writes results/guidance.*
    python benchmarks/bench_guidance.py --quick         # 20 per class, writes to a temp folder
    python benchmarks/bench_guidance.py --checkpoint runs/digits --per-class 100

For each guidance weight w in {0, 1, 2, 4}, every digit 0..9 is sampled ``--per-class`` times
from the same prior draws at 20 NFE (forward passes of the network, the final denoise included;
each pass is a batch of 2B when w > 0, so 40 network evaluations per sample) with
``dpm_solver++`` (order 2, multistep: the DPM-Solver++ recommendation for guided sampling). Per
weight: the digit classifier's accuracy on the class asked for (overall and per class) and the
Fréchet distance of the pooled samples to the held-out digits beside its real-vs-real floor
(:mod:`sdediff.bench.guidance`). Then the unconditional Fréchet distance of the same model (its
null class) at 50 NFE, for comparison with the unconditional model it replaced.

Targets: accuracy >= 95% at some weight whose Fréchet distance is <= 1.5x the floor; the
unconditional Fréchet distance <= 1.2x the floor.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sdediff.bench import digits_by_budget
from sdediff.bench.guidance import digits_by_guidance
from sdediff.bench.report import add_output_arguments, results_folder
from sdediff.checkpoint import load_classifier, load_model
from sdediff.plotting import plot_image_panels
from sdediff.pretrained import default_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
GUIDANCES = (0.0, 1.0, 2.0, 4.0)
BUDGET = 20
UNCONDITIONAL = ("dpm_solver++", 50)


def guidance_rows(runs, symbol: str) -> tuple[list[dict], dict]:
    """The table rows of ``runs`` (:class:`~sdediff.bench.guidance.GuidanceRun`), printed as they
    come, and a panel of 8 samples per class for each."""
    rows, panels = [], {}
    for run in runs:
        q = run.quality
        rows.append({"guidance": run.guidance, "steps": run.steps, "nfe": run.nfe,
                     "evaluations": run.evaluations, "accuracy": run.accuracy,
                     "class_accuracy": run.class_accuracy, "frechet": q.frechet, "floor": q.floor,
                     "ratio": q.ratio, "seconds": run.seconds})
        per_class = len(run.x) // 10
        panels[f"{symbol} = {run.guidance:g}: accuracy {run.accuracy:.3f}, FD {q.ratio:.2f}x floor"] = (
            run.x.reshape(10, per_class, *run.x.shape[1:])[:, :8].reshape(80, *run.x.shape[1:]))
        print(f"{symbol} {run.guidance:<4g} accuracy {run.accuracy:.3f} (worst class "
              f"{min(run.class_accuracy):.2f})  Fréchet {q.frechet:6.2f}  floor {q.floor:.2f}  "
              f"ratio {q.ratio:.2f}  NFE {run.nfe} ({run.evaluations} evaluations)  {run.seconds:.1f} s",
              flush=True)
    return rows, panels


def markdown_rows(rows: list[dict], symbol: str) -> list[str]:
    return ([f"| {symbol} | NFE | evaluations / sample | accuracy | worst class | Fréchet | floor | "
             "ratio | seconds |", "|---|---|---|---|---|---|---|---|---|"]
            + [f"| {r['guidance']:g} | {r['nfe']} | {r['evaluations']} | {r['accuracy']:.3f} | "
               f"{min(r['class_accuracy']):.2f} | {r['frechet']:.2f} | {r['floor']:.2f} | "
               f"{r['ratio']:.2f} | {r['seconds']:.1f} |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the bundled digits model")
    parser.add_argument("--per-class", type=int, default=100)
    add_output_arguments(parser, RESULTS, "20 per class")
    parser.add_argument("--classifier", help="also classifier guidance with this noisy classifier "
                        "(a sdediff train-classifier run) on the model's null class")
    args = parser.parse_args()
    per_class = 20 if args.quick else args.per_class
    out = results_folder(args, RESULTS, "guidance")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    checkpoint = args.checkpoint or default_checkpoint()
    model, _ = load_model(checkpoint)
    rows, panels = guidance_rows(digits_by_guidance(model, GUIDANCES, per_class, budget=BUDGET), "w")
    plot_image_panels(panels, out / "guidance.png", ncols=len(GUIDANCES), nrow=8)

    sampler, budget = UNCONDITIONAL
    n = 10 * per_class
    x_T = model.sde.prior_sample((n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    (plain,) = digits_by_budget(model, x_T, [sampler], [budget])
    unconditional = {"sampler": sampler, "nfe": plain.result.nfe, "n": n,
                     "frechet": plain.quality.frechet, "floor": plain.quality.floor,
                     "ratio": plain.quality.ratio, "classes": plain.quality.classes}
    print(f"unconditional ({sampler}, {plain.result.nfe} NFE, {n} samples): Fréchet "
          f"{plain.quality.frechet:.2f}, floor {plain.quality.floor:.2f}, ratio {plain.quality.ratio:.2f}")

    classifier_rows = []
    if args.classifier:
        classifier, _ = load_classifier(args.classifier)
        classifier_rows, classifier_panels = guidance_rows(
            digits_by_guidance(model, GUIDANCES, per_class, budget=BUDGET, classifier=classifier), "s")
        plot_image_panels(classifier_panels, out / "guidance_classifier.png", ncols=len(GUIDANCES), nrow=8)

    good = [r for r in rows if r["accuracy"] >= 0.95 and r["ratio"] <= 1.5]
    meta = {"checkpoint": str(checkpoint), "per_class": per_class, "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "seconds": time.perf_counter() - start}
    (out / "guidance.json").write_text(json.dumps(
        {"meta": meta, "rows": rows, "unconditional": unconditional,
         "classifier": args.classifier, "classifier_rows": classifier_rows}, indent=2))
    lines = ["# Class-conditional digits by guidance weight", "",
             f"`python benchmarks/bench_guidance.py` ({per_class} samples per class and weight, the "
             f"same prior draws for every weight; dpm_solver++ at {BUDGET} NFE; {meta['machine']}; "
             f"{meta['seconds']:.0f} s). Accuracy: the digit classifier agrees with the class asked "
             "for. Fréchet distance of the pooled samples to the held-out digits in the classifier's "
             "features; floor: as many training digits against the held-out split.", "",
             ""] + markdown_rows(rows, "guidance w")
    met = ", ".join(f"{r['guidance']:g}" for r in good)
    verdict = f"met at w = {met}" if good else "**not met** at any weight"
    lines += ["", f"Target (accuracy >= 0.95 with Fréchet <= 1.5x the floor): {verdict}.", "",
              f"Unconditional (the null class), {sampler} at {unconditional['nfe']} NFE, {n} samples: "
              f"Fréchet {unconditional['frechet']:.2f}, floor {unconditional['floor']:.2f}, "
              f"**{unconditional['ratio']:.2f}x** (target <= 1.2x).", "",
              "![class x guidance](guidance.png)", ""]
    if classifier_rows:
        lines += ["## Classifier guidance", "",
                  f"The same prior draws, sampler and budget; the model's null class guided by the noisy "
                  f"classifier `{args.classifier}` at scale s (`model.guide(classifier, c, scale=s)`; "
                  "its gradient costs a backward pass of the classifier, not counted in NFE).", ""]
        lines += markdown_rows(classifier_rows, "scale s")
        lines += ["", "![class x classifier scale](guidance_classifier.png)", ""]
    (out / "guidance.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out / 'guidance.md'}")


if __name__ == "__main__":
    main()

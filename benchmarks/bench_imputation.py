"""Inpainting / imputation: replacement, RePaint and SMC (MCGdiff) against exact posteriors.

    python benchmarks/bench_imputation.py              # part 1 (Gaussian mixtures), ~10 min
    python benchmarks/bench_imputation.py --digits     # also part 2 (held-out digits)
    python benchmarks/bench_imputation.py --digits --no-gmm   # part 2 only (keeps part 1's results)
    python benchmarks/bench_imputation.py --quick      # a smoke run, written to a temp folder

**Part 1, Gaussian mixtures** (VP linear process, float64, the mixture's exact score as the
model, so every error is the method's own). Two mixtures, chosen once and not tuned:

- ``gmm2d``: 2-D, 4 components, means ``(0.75, 2.5) * N(0, I)`` (seed 0), stds
  0.25/0.5/0.35/0.6 (isotropic), weights 0.4/0.3/0.2/0.1; coordinate 0 observed;
- ``gmm8d``: 8-D, 6 components, means ``N(0, I)`` scaled by 0.5 on coordinates 0-3 and by 1.5
  on 4-7 (seed 1), per-coordinate stds ``0.3 + 0.4 U(0, 1)`` (seed 1), weights
  0.3/0.25/0.2/0.12/0.08/0.05; coordinates 0-3 observed.

In both the components overlap on the observed coordinates and separate on the hidden ones: the
observation leaves several components possible, so the posterior is a mixture whose weights
differ from the prior's, the case where imputation methods differ.

Two observations each: ``rare``, the observed block of the mean of the lowest-weight component
(``y`` points at the component the prior neglects: where replacement's bias is largest), and
``draw``, the observed block of one draw from the mixture (seed 2). For each, ``n`` samples of
``x.expand(n, ...)`` per method; the error is the energy distance to ``n`` exact posterior draws
(:meth:`GaussianMixture.sample_posterior`) as a multiple of the two-sample floor (the same
distance between two exact sets of ``n``, :func:`~sdediff.bench.metrics.two_sample_floor`): 1 is
a perfect sampler. ``occupancy``: total variation between the component occupancy of the samples
and of the exact draws, each sample given to the posterior component of highest responsibility
for its unobserved block. NFE: network calls (batched), the final denoise included;
``evaluations``: per sample (``K`` per call for SMC).

Methods: replacement with ``euler_maruyama`` (the reverse SDE, 500 steps), ``dpm_solver++``
(order 2, 20 steps) and ``ode`` (dopri5, rtol = atol = 1e-5); RePaint (``ddim`` with eta = 1,
50 steps, j = r = 10: 410 NFE); SMC (MCGdiff, 50 DDIM steps with eta = 1, ``kappa = 1e-4``) at
``K`` = 1, 4, 16, 64, 256 particles, at ``K = 64`` with the reference code's every-step
resampling (``ess_threshold=1``), and at ``K = 256`` on 100 steps (uniform and quadratic grids).

SMC converges (as ``K`` grows) to the posterior of the model's own DDIM chain, not to the exact
posterior: the two differ by the chain's discretisation, which an unconditional comparison hardly
shows but a posterior that hinges on a component's tail at ``y`` does. Measured once by slicing
400,000 unconditional draws of the 50-step chain at ``|x^O - y| < 0.03`` on ``gmm2d rare``: the
chain gives the favoured component 0.987 (0.971 with 200 steps) where the exact mixture gives
0.946 on the same slice, and SMC with many particles lands on the chain's value. Hence the 100-step
row, and the 100-step row on the ``quadratic`` grid (``t_k`` quadratic in ``k``: finer steps near
``t = 0``, where the chain's bias arises); measured on ``gmm2d rare`` at K = 256 (one run each),
the quadratic grid gives 4.0 / 2.0 / 1.8x the floor at 50 / 100 / 200 steps where the uniform grid
gives 6.4 / 4.4x at 50 / 100. More steps at fixed ``K`` are not free either: every step adds
weight noise, so the particles needed grow with the steps.

**Part 2, digits** (``--digits``; the bundled model, or ``--checkpoint``): the first ``--num-digits``
held-out digits with their left or top half hidden, inpainted by each method; the digit
classifier's (:func:`sdediff.bench.digit_features.predict_digits`) agreement with the true label,
beside its accuracy on the untouched originals. On a 2-core CPU the default 200 digits take
about 50 minutes (SMC's K = 64 particles dominate); ``--quick`` runs 10.

Writes ``benchmarks/results/imputation.md`` and ``.json`` (``--quick``: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import sdediff as sd
from sdediff.bench.metrics import energy_distance, two_sample_floor
from sdediff.bench.report import add_output_arguments, results_folder
from sdediff.plotting import plot_inpainting

RESULTS = Path(__file__).resolve().parent / "results"
SDE = sd.VPSDE()
SMC_STEPS, REPAINT_STEPS = 50, 50
PARTICLES = (1, 4, 16, 64, 256)
FIGURE_DIGITS = 12
#: (label, inpaint keyword arguments) of part 1.
GMM_METHODS = [
    ("replacement, euler_maruyama 500", {"method": "replacement", "sampler": "euler_maruyama",
                                          "steps": 500}),
    ("replacement, dpm_solver++ 20", {"method": "replacement", "sampler": "dpm_solver++",
                                       "steps": 20}),
    ("replacement, ode dopri5", {"method": "replacement", "sampler": "ode"}),
    ("repaint, ddim eta=1 50, j=r=10", {"method": "repaint", "steps": REPAINT_STEPS}),
    *[(f"smc K={k}", {"method": "smc", "particles": k, "steps": SMC_STEPS}) for k in PARTICLES],
    ("smc K=64, resampling every step", {"method": "smc", "particles": 64, "steps": SMC_STEPS,
                                         "ess_threshold": 1.0}),
    (f"smc K=256, {2 * SMC_STEPS} steps", {"method": "smc", "particles": 256,
                                           "steps": 2 * SMC_STEPS}),
    (f"smc K=256, {2 * SMC_STEPS} steps, quadratic grid",
     {"method": "smc", "particles": 256, "steps": 2 * SMC_STEPS, "schedule": "quadratic"}),
]
#: (label, inpaint keyword arguments) of part 2.
DIGIT_METHODS = [
    ("replacement, dpm_solver++ 20", {"method": "replacement", "sampler": "dpm_solver++",
                                       "steps": 20}),
    ("replacement, ddpm 100", {"method": "replacement", "sampler": "ddpm", "steps": 100}),
    ("repaint, ddim eta=1 50, j=r=10", {"method": "repaint", "steps": REPAINT_STEPS}),
    ("smc K=16", {"method": "smc", "particles": 16, "steps": SMC_STEPS}),
    ("smc K=64", {"method": "smc", "particles": 64, "steps": SMC_STEPS}),
]


def mixtures() -> dict:
    """``name -> (mixture, mask)``: the two problems of part 1 (see the module docstring)."""
    g = torch.Generator().manual_seed(0)
    means2 = torch.randn(4, 2, generator=g, dtype=torch.float64) * torch.tensor([0.75, 2.5],
                                                                                dtype=torch.float64)
    stds2 = torch.tensor([0.25, 0.5, 0.35, 0.6], dtype=torch.float64)[:, None].expand(4, 2)
    gmm2 = sd.GaussianMixture(means2, stds2, torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64),
                              labels=list(range(4)))
    g = torch.Generator().manual_seed(1)
    means8 = torch.randn(6, 8, generator=g, dtype=torch.float64) * torch.tensor(
        [0.5] * 4 + [1.5] * 4, dtype=torch.float64)
    stds8 = 0.3 + 0.4 * torch.rand(6, 8, generator=g, dtype=torch.float64)
    gmm8 = sd.GaussianMixture(means8, stds8,
                              torch.tensor([0.3, 0.25, 0.2, 0.12, 0.08, 0.05], dtype=torch.float64),
                              labels=list(range(6)))
    return {"gmm2d": (gmm2, torch.tensor([1, 0])),
            "gmm8d": (gmm8, torch.tensor([1, 1, 1, 1, 0, 0, 0, 0]))}


def observations(gmm: sd.GaussianMixture) -> dict:
    """``rare``: the mean of the lowest-weight component; ``draw``: one draw (seed 2). Only the
    observed block is used."""
    return {"rare": gmm.means[int(gmm.weights.argmin())].clone(),
            "draw": gmm.sample(1, torch.Generator().manual_seed(2))[0]}


def occupancy(posterior: sd.GaussianMixture, x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Fraction of samples per component (labels of the full mixture), each sample given to the
    posterior component of highest responsibility for its unobserved block."""
    best = posterior.class_log_probs(x[:, hidden]).argmax(1)
    return torch.bincount(best, minlength=posterior.num_classes).double() / len(x)


def gmm_part(n: int, quick: bool) -> list[dict]:
    rows = []
    methods = [m for m in GMM_METHODS if not quick or "K=256" not in m[0]]
    for name, (gmm, mask) in mixtures().items():
        model, hidden = gmm.score_model(SDE), mask == 0
        for obs_name, x in observations(gmm).items():
            posterior = gmm.posterior(x, mask)
            exact = gmm.sample_posterior(x, mask, n, torch.Generator().manual_seed(11))
            floor = two_sample_floor(lambda m, g, x=x, mask=mask, gmm=gmm:
                                     gmm.sample_posterior(x, mask, m, g), n)
            exact_occupancy = occupancy(posterior, exact, hidden)
            print(f"{name} / {obs_name}: posterior weights "
                  f"{[round(w, 3) for w in posterior.weights.tolist()]} (components "
                  f"{posterior.labels.tolist()}), prior {gmm.weights.tolist()}, floor {floor:.2e}")
            for label, kwargs in methods:
                r = sd.inpaint(model, x.expand(n, -1), mask, generator=torch.Generator().manual_seed(3),
                               return_info=True, **kwargs)
                tv = float((occupancy(posterior, r.x, hidden) - exact_occupancy).abs().sum() / 2)
                row = {"problem": name, "observation": obs_name, "method": label,
                       "ratio": energy_distance(r.x, exact) / floor, "occupancy_tv": tv,
                       "nfe": r.nfe, "evaluations": r.evaluations, "seconds": r.seconds}
                rows.append(row)
                print(f"  {label:34s} {row['ratio']:8.2f}x floor  occupancy TV {tv:.3f}  NFE "
                      f"{r.nfe:4d}  evaluations {r.evaluations:6d}  {r.seconds:6.1f} s", flush=True)
    return rows


def digits_part(num: int, checkpoint: str | None, out: Path) -> list[dict]:
    from sdediff.bench.digit_features import predict_digits
    from sdediff.checkpoint import load_model
    from sdediff.data import load_dataset
    from sdediff.pretrained import default_checkpoint

    model, _ = load_model(checkpoint or default_checkpoint())
    data = load_dataset("digits")
    x, labels = data.test[:num], data.test_labels[:num]
    accuracy = float((predict_digits(x) == labels).double().mean())
    rows, shown = [], {}
    for region in ("left", "top"):
        mask = torch.ones(1, 8, 8)
        if region == "left":
            mask[..., :4] = 0
        else:
            mask[..., :4, :] = 0
        for label, kwargs in DIGIT_METHODS:
            r = sd.inpaint(model, x, mask, generator=torch.Generator().manual_seed(3),
                           return_info=True, **kwargs)
            agree = float((predict_digits(r.x.clamp(-1, 1)) == labels).double().mean())
            if region == "left":
                shown[label] = r.x[:FIGURE_DIGITS]
            rows.append({"mask": region, "method": label, "agreement": agree,
                         "original_accuracy": accuracy, "nfe": r.nfe, "evaluations": r.evaluations,
                         "seconds": r.seconds, "num": len(x)})
            print(f"{region:5s} {label:34s} agreement {agree:.3f} (originals {accuracy:.3f})  NFE "
                  f"{r.nfe}  evaluations {r.evaluations}  {r.seconds:.1f} s", flush=True)
        if region == "left":
            plot_inpainting(x[:FIGURE_DIGITS], mask, shown, out / "imputation_digits.png")
    return rows


def markdown(results: dict) -> str:
    lines = ["# Inpainting / imputation", "",
             "`python benchmarks/bench_imputation.py` (see its docstring for the problems and methods).", ""]
    gmm = results.get("gmm")
    if gmm:
        meta = gmm["meta"]
        lines += ["## Gaussian mixtures: energy distance to the exact posterior", "",
                  f"{meta['n']} samples per row against {meta['n']} exact posterior draws; ratio = energy "
                  "distance / two-sample floor (1 = perfect); occupancy TV = total variation between "
                  "component occupancies of the samples and of the exact draws. Exact mixture score, "
                  f"float64, `t_end = 1e-3`, denoised. {meta['machine']}, torch {meta['torch']}, "
                  f"{meta['seconds']:.0f} s in all.", ""]
        rows = gmm["rows"]
        cases = list(dict.fromkeys((r["problem"], r["observation"]) for r in rows))
        header = "| method | NFE | evaluations / sample | " + " | ".join(
            f"{p} {o}: ratio (TV)" for p, o in cases) + " | seconds (all four) |"
        lines += [header, "|---" * (4 + len(cases)) + "|"]
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = {(r["problem"], r["observation"]): r for r in rows if r["method"] == method}
            first = next(iter(mine.values()))
            nfe = sorted({r["nfe"] for r in mine.values()})
            cells = [f"{mine[c]['ratio']:.2f} ({mine[c]['occupancy_tv']:.3f})" if c in mine else "-"
                     for c in cases]
            lines.append(f"| {method} | {'-'.join(map(str, (nfe[0], nfe[-1]))) if len(nfe) > 1 else nfe[0]}"
                         f" | {first['evaluations']} | " + " | ".join(cells)
                         + f" | {sum(r['seconds'] for r in mine.values()):.1f} |")
        lines += ["", "SMC converges, as K grows, to the posterior of the model's own DDIM chain (here "
                  "the exact score on 50 or 100 steps), which differs from the exact posterior by the "
                  "chain's discretisation; at fixed K, more steps add weight noise (see the script's "
                  "docstring); the quadratic grid (finer steps near t = 0) shrinks that bias. "
                  "Replacement and RePaint plateau at a bias that neither more steps nor "
                  "another sampler removes.", "",
                  "Posterior component weights of each case (prior weights in brackets):", ""]
        lines += [f"- {c}" for c in meta["posteriors"]]
        lines.append("")
    digits = results.get("digits")
    if digits:
        meta = digits["meta"]
        lines += ["## Digits: the classifier's agreement with the true label", "",
                  f"The first {meta['num']} held-out digits with the named half hidden, inpainted by the "
                  f"{meta['checkpoint']} model; agreement = the digit classifier's prediction on the "
                  "inpainted image equals the true label (on the untouched originals: "
                  f"{digits['rows'][0]['original_accuracy']:.3f}). {meta['machine']}, "
                  f"{meta['seconds']:.0f} s.", "",
                  "| mask | method | NFE | evaluations / sample | agreement | seconds |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['mask']} | {r['method']} | {r['nfe']} | {r['evaluations']} | "
                  f"{r['agreement']:.3f} | {r['seconds']:.1f} |" for r in digits["rows"]]
        lines += ["", f"The first {FIGURE_DIGITS} digits, left half hidden (red), by each method:", "",
                  "![digits inpainted](imputation_digits.png)", ""]
    return "\n".join(lines)


def save(out: Path, part: str, result: dict) -> None:
    """Write ``part``'s results into ``out/imputation.json`` (read afresh, so that a run of the other
    part, e.g. ``--digits --no-gmm`` beside a part-1 run, keeps its results) and rewrite the
    Markdown from the whole file."""
    path = out / "imputation.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[part] = result
    path.write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (out / "imputation.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per row of part 1 (default 1000)")
    parser.add_argument("--digits", action="store_true", help="also run part 2 (held-out digits)")
    parser.add_argument("--no-gmm", action="store_true",
                        help="skip part 1 (its previous results in the JSON are kept)")
    parser.add_argument("--num-digits", type=int, default=200, help="held-out digits of part 2")
    parser.add_argument("--checkpoint", help="part 2's model (default: the bundled digits model)")
    add_output_arguments(parser, RESULTS, "200 samples, no K=256, 10 digits")
    args = parser.parse_args()
    torch.set_num_threads(1)      # small batches on a shared machine: one thread is fastest
    out = results_folder(args, RESULTS, "imputation")
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} thread"
    if not args.no_gmm:
        start = time.perf_counter()
        n = 200 if args.quick else args.n
        rows = gmm_part(n, args.quick)
        posteriors = []
        for name, (gmm, mask) in mixtures().items():
            for obs_name, x in observations(gmm).items():
                post = gmm.posterior(x, mask)
                weights = ", ".join(f"{c}: {w:.3f} [{gmm.weights[c]:.2f}]"
                                    for c, w in zip(post.labels.tolist(), post.weights.tolist(),
                                                    strict=True) if w > 5e-4)
                posteriors.append(f"{name} {obs_name}: {weights}")
        save(out, "gmm", {"meta": {"n": n, "quick": args.quick, "machine": machine,
                                   "torch": torch.__version__, "posteriors": posteriors,
                                   "seconds": time.perf_counter() - start}, "rows": rows})
    if args.digits:
        start = time.perf_counter()
        num = 10 if args.quick else args.num_digits
        rows = digits_part(num, args.checkpoint, out)
        save(out, "digits", {"meta": {"num": num, "checkpoint": args.checkpoint or "bundled digits",
                                      "machine": machine, "seconds": time.perf_counter() - start},
                             "rows": rows})
    print(f"wrote {out / 'imputation.md'} and {out / 'imputation.json'}")


if __name__ == "__main__":
    main()

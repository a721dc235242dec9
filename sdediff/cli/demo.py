"""``sdediff demo``: the main job on built-in data, written up in one ``report.md``.

1. **Points**: the bundled 2-D MLP (``8gaussians``; ``--steps N`` trains one here), then every
   registered sampler; each sampler's samples over the data density, probability-flow
   trajectories, the energy distance to held-out points beside the two-sample floor and, where the
   density is known, the off-mode share and exact log-density of the samples beside held-out
   data's and beside the same sampler's on the exact score.
2. **Images**, with the bundled digits model (:mod:`sdediff.pretrained`; no training): several
   samplers at 10 and 50 NFE side by side with their Fréchet distance in classifier features
   (:mod:`sdediff.bench.digit_features`) and its real-vs-real floor; an encode -> decode round trip
   through the probability-flow ODE with its error; a latent interpolation strip; bits/dim on
   held-out digits; and held-out digits inpainted by each method. With a conditional model (the
   bundled one is): a class x guidance grid with the classifier's accuracy per guidance weight.
"""

from __future__ import annotations

import time
from pathlib import Path

from .common import OUTPUT_DIR, add_device_argument, fail, format_table, make_process, resolve_device
from .train import default_net

#: Steps per sampler in the points demo: fast solvers get few, SDE samplers need more, and edict
#: (built for inversion) diverges on a trained network below about 50 (82% of samples off-mode at
#: 25 steps, 4% at 50; on the exact score 1% at 25).
DEMO_STEPS = {"ddim": 50, "ddpm": 100, "euler_maruyama": 100, "sde": 100,
              "reverse_diffusion": 100, "pc": 50, "edict": 50}
DEMO_DEFAULT_STEPS = 25
#: Training steps of a points model trained by the demo (``--steps``, or a ``--data`` without a
#: bundled model).
DEMO_TRAIN_STEPS = 2000
#: The image demo's samplers, each run at every budget of IMAGE_NFE (network calls, counted).
IMAGE_SAMPLERS = ("ddim", "unipc", "euler_maruyama")     # the classic, the default, the SDE
IMAGE_NFE = (10, 50)
#: Samples per sampler and budget (Fréchet distance and its floor use this many).
IMAGE_NUM = 200
#: Digits in the round trip, interpolation pairs, and held-out digits scored for bits/dim.
ROUND_TRIP, PAIRS, LIKELIHOOD_NUM = 5, 4, 64
#: The demo's inpainting figure: held-out digits, and the methods (``sdediff.inpaint`` arguments),
#: sized for seconds (docs/guidance.md has the full-size comparison).
INPAINT_NUM = 10
INPAINT_METHODS = {
    "replacement, dpm_solver++ 20": {"method": "replacement", "sampler": "dpm_solver++", "steps": 20},
    "repaint, ddim 25, j=r=5": {"method": "repaint", "steps": 25, "jump_length": 5, "resamplings": 5},
    "smc, 16 particles, 25 steps": {"method": "smc", "particles": 16, "steps": 25},
}
#: The demo's class x guidance grid: weights, samples per class, NFE budget (forward passes).
GUIDANCES, GRID_PER_CLASS, GUIDANCE_NFE = (0.0, 1.0, 2.0, 4.0), 6, 20
#: rtol = atol of the dopri5 round trip. Its error (a trained network makes the flow stiff near
#: t_min) beside bdia's at a fraction of the calls is the point of the figure; the encoder's default
#: 1e-5 costs twice the calls for a few times less error (docs/encoding.md section 5).
ROUND_TRIP_TOL = 1e-4
#: Steps of the exactly invertible ``bdia`` round trip shown beside dopri5's.
ROUND_TRIP_EXACT_STEPS = 20


def _mixture_metrics(x, mixture) -> dict:
    """The off-mode fraction (percent) and mean exact log-density of the points ``x``."""
    from ..bench.metrics import mean_log_density, off_mode_fraction

    return {"off_mode": 100 * off_mode_fraction(x, mixture), "log_p": mean_log_density(x, mixture)}


def _points_model(args, dataset, out: Path, device=None):
    """The points part's model and a sentence on where it comes from: the bundled ``8gaussians``
    model (:data:`sdediff.pretrained.POINTS`) unless ``--steps`` asks for training here (or
    another ``--data`` needs it: :data:`DEMO_TRAIN_STEPS` steps by default)."""
    import torch

    from ..checkpoint import load_model
    from ..pretrained import POINTS, bundled
    from ..score import ScoreModel
    from ..train import TrainConfig, Trainer

    if args.steps is None and dataset.name == POINTS.name:
        model, config = load_model(bundled(POINTS.name), device=device)
        print(f"== Points: the bundled {dataset.name} model ({config['step']} training steps)", flush=True)
        return model, (f"The bundled MLP (`sdediff/pretrained/{POINTS.name}`, trained {config['step']} "
                       f"steps by `sdediff train --data {dataset.name} --steps {config['step']}`; "
                       "`sdediff demo --steps N` trains one here instead)")
    steps = DEMO_TRAIN_STEPS if args.steps is None else args.steps
    print(f"== Points: an MLP trained {steps} steps on {dataset.name}", flush=True)
    start = time.perf_counter()
    torch.manual_seed(0)
    trainer = Trainer(default_net(dataset, "mlp"), make_process("vp"), dataset.train,
                      out / "model", config=TrainConfig(steps=steps, batch_size=512, lr=2e-3,
                                                        ema_decay=0.995, checkpoint_every=steps),
                      meta=dataset.to_config(), progress=not args.no_progress, device=device)
    stats = trainer.fit()
    model = ScoreModel(trainer.ema_net, trainer.sde, prediction=trainer.prediction)
    return model, (f"An MLP trained here, {stats['steps']} steps in {time.perf_counter() - start:.1f} s "
                   f"(final loss {stats['final_loss']:.4f}; [loss curve](model/loss.png))")


def points_demo(args, out: Path, report: list[str], device=None) -> None:
    """Every sampler on the points model (:func:`_points_model`) on ``device``; appends its section
    to ``report``. Where the toy set's density is known (:func:`~sdediff.data.toy_distribution`),
    each sampler is also scored by the off-mode fraction and the exact mean log-density, and run
    on the exact score from the same seed: the model's error and the sampler's apart."""
    import torch

    from .. import samplers
    from ..bench.metrics import energy_distance, two_sample_floor
    from ..data import load_dataset, toy_distribution
    from ..plotting import plot_points, plot_trajectories

    dataset = load_dataset(args.data, seed=0)
    model, about = _points_model(args, dataset, out, device)
    mixture = toy_distribution(args.data)
    exact = None if mixture is None else mixture.score_model(model.sde)
    reference = dataset.test[: args.num]
    floor = two_sample_floor(lambda n, g: dataset.test[torch.randint(len(dataset.test), (n,),
                                                                     generator=g)], args.num)
    held_out = None if mixture is None else _mixture_metrics(reference, mixture)
    print(f"== Points: every registered sampler, {args.num} samples each"
          + ("" if exact is None else ", then the same sampler on the exact score"), flush=True)
    rows, panels = [], {}
    for name in samplers.available():
        # adaptive samplers choose their own steps (and refuse a step count)
        steps = None if samplers.get(name).adaptive else DEMO_STEPS.get(name, DEMO_DEFAULT_STEPS)
        result = samplers.sample(model, shape=(args.num, 2), sampler=name, steps=steps,
                                 generator=torch.Generator().manual_seed(1), return_info=True)
        result.x = result.x.cpu()         # run on the model's device, measured and plotted here
        distance = energy_distance(result.x, reference)
        row = {"sampler": name, "steps": "adaptive" if steps is None else steps,
               "nfe": result.nfe, "seconds": f"{result.seconds:.2f}",
               "energy_distance": f"{distance:.5f}"}
        line = f"  {name:<18} NFE {result.nfe:>5}  {result.seconds:6.2f} s  energy distance {distance:.5f}"
        if exact is not None:
            ideal = samplers.sample(exact, shape=(args.num, 2), sampler=name, steps=steps,
                                    generator=torch.Generator().manual_seed(1))
            ours, theirs = _mixture_metrics(result.x, mixture), _mixture_metrics(ideal, mixture)
            row.update({"off_mode_%": f"{ours['off_mode']:.1f}",
                        "exact_score_off_mode_%": f"{theirs['off_mode']:.1f}",
                        "log_p": f"{ours['log_p']:.2f}", "exact_score_log_p": f"{theirs['log_p']:.2f}"})
            line += (f"  off-mode {ours['off_mode']:4.1f}% (exact score {theirs['off_mode']:.1f}%)  "
                     f"log p {ours['log_p']:6.2f} (exact score {theirs['log_p']:.2f})")
        rows.append(row)
        panels[f"{name}: {result.nfe} NFE\nED {distance:.4f}"
               + ("" if exact is None else f", {row['off_mode_%']}% off-mode")] = result.x
        print(line, flush=True)
    data_row = {"sampler": "held-out data", "steps": "-", "nfe": "-", "seconds": "-",
                "energy_distance": f"{floor:.5f} (floor)"}
    if held_out is not None:
        data_row.update({"off_mode_%": f"{held_out['off_mode']:.1f}", "exact_score_off_mode_%": "-",
                         "log_p": f"{held_out['log_p']:.2f}", "exact_score_log_p": "-"})
    rows.append(data_row)
    panels[f"data (held out)\nED floor {floor:.4f}"
           + ("" if held_out is None else f", {held_out['off_mode']:.1f}% off-mode")] = reference
    plot_points(panels, dataset.train, out / "samplers.png")
    flow = samplers.sample(model, shape=(256, 2), sampler="ddim", steps=100,
                           generator=torch.Generator().manual_seed(2), keep_trajectory=True,
                           return_info=True)
    plot_trajectories(flow.trajectory.cpu(), dataset.train, out / "trajectories.png")
    table = format_table(rows, list(rows[0]))
    print(table)
    report += [
        f"## Points: {dataset.name}", "",
        f"{about}, then every registered sampler. Quality: energy distance of {args.num} samples to "
        f"{args.num} held-out points; the floor is two held-out sets of that size.", ""]
    if held_out is not None:
        report += [_points_verdict(rows[:-1], held_out), ""]
    report += ["```", table, "```", "", "![samplers](samplers.png)", "",
               "![trajectories](trajectories.png)", ""]


#: A sampler counts as at the floor by the mixture metric when its off-mode fraction is within
#: this many percentage points of held-out data's (its binomial noise at 2000 samples: 0.25).
OFF_MODE_SLACK = 1.0


def _points_verdict(rows: list[dict], held_out: dict) -> str:
    """What the mixture metrics say, in words: which samplers' samples are at held-out data's
    off-mode fraction (within :data:`OFF_MODE_SLACK` points), and how much of each gap the exact
    score closes (the sampler's share of it)."""
    floor = held_out["off_mode"] + OFF_MODE_SLACK
    at_floor = [r["sampler"] for r in rows if float(r["off_mode_%"]) <= floor]
    missed = [r for r in rows if float(r["off_mode_%"]) > floor]
    text = (f"The density of this set is known exactly (a Gaussian mixture), so each sampler is also "
            f"scored by the share of samples more than 3 standard deviations from every mode "
            f"(`off_mode_%`; held-out data {held_out['off_mode']:.1f}%) and their mean exact "
            f"log-density (`log_p`; held-out data {held_out['log_p']:.2f} nats), which see the "
            f"bridges between modes that the energy distance averages away. The same sampler on the "
            f"exact score (`exact_score_*`, same seed) is the sampler's own share. At the floor "
            f"(off-mode within {OFF_MODE_SLACK:g} point of held-out data's): "
            f"{', '.join(at_floor) if at_floor else 'none'}.")
    if missed:
        share = sorted(float(r["off_mode_%"]) for r in missed)
        own = [r["sampler"] for r in missed if float(r["exact_score_off_mode_%"]) > floor]
        text += (f" Not at the floor: the other {len(missed)} ({share[0]:.1f}-{share[-1]:.1f}% off-mode). "
                 f"On the exact score {len(missed) - len(own)} of them reach it, so their gap is the "
                 "model's error"
                 + (f"; {', '.join(own)} {'misses' if len(own) == 1 else 'miss'} it there too, so "
                    f"{'its gap' if len(own) == 1 else 'theirs'} is also the sampler's at these steps."
                    if own else "."))
    return text


def images_demo(args, out: Path, report: list[str], device=None) -> None:
    """The bundled digits model on ``device``: samplers at 10 and 50 NFE, round trip,
    interpolation, bits/dim (measured and plotted on the CPU)."""
    import torch

    from ..bench import digits_by_budget
    from ..data import load_digits
    from ..ode import bits_per_dim, decode, dequantize, encode, interpolate, log_likelihood
    from ..plotting import plot_image_panels, plot_image_rows
    from .common import load_checkpoint_model

    model, config = load_checkpoint_model(args.checkpoint, device)
    sde, data = model.sde, load_digits()
    shape = tuple(config["data"]["shape"])
    low, high = data.data_range
    x_T = sde.prior_sample((IMAGE_NUM, *shape), generator=torch.Generator().manual_seed(0))
    x_T = x_T.to(device)
    print(f"== Images: the bundled digits model, {', '.join(IMAGE_SAMPLERS)} at "
          f"{' and '.join(map(str, IMAGE_NFE))} NFE, {IMAGE_NUM} samples each", flush=True)
    rows, panels = [], {}
    for run in digits_by_budget(model, x_T, IMAGE_SAMPLERS, IMAGE_NFE):
        name, r, x, q = run.sampler, run.result, run.x, run.quality
        rows.append({"sampler": name, "steps": run.steps, "nfe": r.nfe,
                     "seconds": f"{r.seconds:.2f}", "frechet": f"{q.frechet:.2f}",
                     "floor": f"{q.floor:.2f}", "ratio": f"{q.ratio:.2f}",
                     "smallest_class": f"{min(q.classes):.3f}",
                     "largest_class": f"{max(q.classes):.3f}"})
        panels[f"{name}, {r.nfe} NFE: FD {q.frechet:.1f} (floor {q.floor:.1f} at {len(x)})"] = x[:36]
        print(f"  {name:<14} NFE {r.nfe:>3}  {r.seconds:5.2f} s  Fréchet {q.frechet:6.2f} "
              f"(floor {q.floor:.2f}, ratio {q.ratio:.2f})", flush=True)
    plot_image_panels(panels, out / "digits_samplers.png", ncols=len(IMAGE_NFE), nrow=6,
                      data_range=(low, high))
    samples_table = format_table(rows, list(rows[0]))

    originals = data.test[:ROUND_TRIP]
    print(f"== Images: encode -> decode round trip of {ROUND_TRIP} held-out digits, dopri5 at rtol = "
          f"atol = {ROUND_TRIP_TOL:g}, then bdia at {ROUND_TRIP_EXACT_STEPS} steps", flush=True)
    tol = {"rtol": ROUND_TRIP_TOL, "atol": ROUND_TRIP_TOL, "progress": not args.no_progress}
    z = encode(model, originals.to(device), return_info=True, **tol)
    back = decode(model, z.x, return_info=True, **tol)
    z.x, back.x = z.x.cpu(), back.x.cpu()
    # the cheap exact path beside it: BDIA, one call per step each way (docs/encoding.md)
    exact = {"sampler": "bdia", "steps": ROUND_TRIP_EXACT_STEPS}
    z_bdia = encode(model, originals.to(device), return_info=True, **exact)
    back_bdia = decode(model, z_bdia.x, return_info=True, **exact)

    def relative(x, reference):
        return (x.cpu() - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)

    def errors(x):
        e = relative(x, originals)
        return f"relative error max {float(e.max()):.1e}, mean {float(e.mean()):.1e}"

    steps = ROUND_TRIP_EXACT_STEPS
    bdia_latent = z_bdia.x[:, 0].cpu()               # the pair's state at T
    plot_image_rows({"held-out digits": originals,
                     "dopri5 latents z = x(T)": z.x.clamp(-3, 3) / 3,
                     f"dopri5 ({ROUND_TRIP_TOL:g}) decode(encode(x)): {z.nfe} + {back.nfe} calls,\nmax error "
                     f"{float(relative(back.x, originals).max()):.1e}": back.x,
                     f"bdia latents ({steps} steps)": bdia_latent.clamp(-3, 3) / 3,
                     f"bdia decode(encode(x)): {z_bdia.nfe} + {back_bdia.nfe} calls,\nmax error "
                     f"{float(relative(back_bdia.x, originals).max()):.1e}": back_bdia.x.cpu()},
                    out / "digits_round_trip.png", data_range=(low, high))
    round_trip = (f"Round trip of {ROUND_TRIP} held-out digits, t_min = 1e-5. Through the "
                  f"probability-flow ODE (dopri5, rtol = atol = {ROUND_TRIP_TOL:g}): encode {z.nfe} "
                  f"NFE, decode {back.nfe} NFE, {errors(back.x)}. Through the exactly invertible bdia "
                  f"sampler ({steps} steps): encode {z_bdia.nfe} NFE, decode {back_bdia.nfe} NFE, "
                  f"{errors(back_bdia.x)}. (Its latent's distance to the exact flow's, by steps: "
                  "docs/encoding.md section 5.)")
    print(f"  {round_trip}")

    a, b = data.test[ROUND_TRIP:ROUND_TRIP + PAIRS], data.test[ROUND_TRIP + PAIRS:][:PAIRS]
    print(f"== Images: latent interpolation of {PAIRS} pairs of held-out digits", flush=True)
    path = interpolate(model, a.to(device), b.to(device), 10).cpu()
    plot_image_rows({f"pair {k + 1}": path[k] for k in range(PAIRS)}, out / "digits_interpolation.png",
                    data_range=(low, high), endpoints=("held-out digit a", "held-out digit b"))

    print(f"== Images: bits/dim of {LIKELIHOOD_NUM} held-out digits", flush=True)
    g = torch.Generator().manual_seed(0)
    held_out = dequantize(data.test[:LIKELIHOOD_NUM], data.n_levels, data.data_range, generator=g)
    r = log_likelihood(model, held_out.to(device), generator=g, return_info=True)
    D = held_out[0].numel()
    nll = r.nll.cpu().double()
    bpd = bits_per_dim(float(nll.mean()), D, n_levels=data.n_levels, data_range=data.data_range)
    se = float(nll.std()) / (len(nll) ** 0.5 * D * 0.6931471805599453)
    estimate = float(r.error_estimate.mean()) / (D * 0.6931471805599453)
    likelihood = (f"{bpd:.3f} +- {se:.3f} bits/dim on {LIKELIHOOD_NUM} held-out digits "
                  f"(uniformly dequantized over their {data.n_levels} levels, bin width "
                  f"{(high - low) / data.n_levels:.4f}; a uniform density scores log2(17) = 4.09), "
                  f"Hutchinson divergence with 1 Rademacher probe, {r.nfe} NFE (the default "
                  f"20-call solver; its estimated error {estimate:.4f} bits/dim from "
                  f"{r.estimate_nfe} more), {r.seconds / len(nll):.3f} s per digit.")
    print(f"  {likelihood}")
    report += [
        "## Images: the bundled digits model", "",
        f"Each sampler from the same {IMAGE_NUM} prior draws at {' and '.join(map(str, IMAGE_NFE))} "
        "NFE (network calls, counted; the final denoise included). Fréchet distance to the "
        "held-out digits in the features of a small digit classifier; the floor is as many "
        "training digits against the held-out ones. Both fall as the sample count grows: at "
        f"{IMAGE_NUM} samples the floor is {rows[0]['floor']} here, at the 1000 of "
        "`benchmarks/bench_digits.py` 20.9 (`benchmarks/results/digits.md`), so compare a sampler "
        "with the floor at its own count. Class fractions by the same classifier.", "",
        "```", samples_table, "```", "", "![samplers](digits_samplers.png)", "",
        round_trip, "", "![round trip](digits_round_trip.png)", "",
        f"Spherical interpolation between the latents of {PAIRS} pairs of held-out digits (one pair a "
        "row; the two ends, framed in red, are the digits themselves), decoded:", "",
        "![interpolation](digits_interpolation.png)", "", f"Likelihood: {likelihood}", ""]
    inpainting_demo(model, data, out, report, device)
    if model.num_classes is not None:
        guidance_demo(model, out, report)


def inpainting_demo(model, data, out: Path, report: list[str], device=None) -> None:
    """:data:`INPAINT_NUM` held-out digits with their left half hidden, inpainted by each method of
    :data:`INPAINT_METHODS`, in one figure; appends its section with the digit classifier's
    agreement with the true labels."""
    import torch

    from ..bench.digit_features import predict_digits
    from ..inpaint import inpaint
    from ..plotting import plot_inpainting

    print(f"== Images: {INPAINT_NUM} held-out digits inpainted by {len(INPAINT_METHODS)} methods",
          flush=True)
    x = data.test[-INPAINT_NUM:]
    labels = data.test_labels[-INPAINT_NUM:]
    mask = torch.ones(x.shape[1:])
    mask[..., : x.shape[-1] // 2] = 0                   # the left half hidden
    rows, inpainted = [], {}
    for label, kwargs in INPAINT_METHODS.items():
        r = inpaint(model, x.to(device), mask.to(device), generator=torch.Generator().manual_seed(0),
                    return_info=True, **kwargs)
        inpainted[label] = r.x.cpu()
        agree = int((predict_digits(r.x.cpu().clamp(-1, 1)) == labels).sum())
        rows.append({"method": label, "nfe": r.nfe, "evaluations": r.evaluations,
                     "agreement": f"{agree}/{len(x)}", "seconds": f"{r.seconds:.2f}"})
        print(f"  inpaint {label:<30} NFE {r.nfe:>4}  agreement {agree}/{len(x)}  {r.seconds:.2f} s")
    plot_inpainting(x, mask, inpainted, out / "digits_inpainting.png", data.data_range)
    report += [
        "### Inpainting", "",
        f"The last {INPAINT_NUM} held-out digits with their left half hidden (red), filled in by each "
        "method (`sdediff.inpaint`; docs/guidance.md). Agreement: the digit classifier's label of the "
        "inpainted digit equals the original's.", "",
        "```", format_table(rows, list(rows[0])), "```", "", "![inpainting](digits_inpainting.png)", ""]


def guidance_demo(model, out: Path, report: list[str]) -> None:
    """A conditional digits model's class x guidance grid (every digit, each weight of
    :data:`GUIDANCES`) with the classifier's accuracy per weight; appends its section."""
    from ..bench.guidance import digits_by_guidance
    from ..plotting import plot_image_panels

    print(f"== Images: class x guidance grid, w in {', '.join(f'{w:g}' for w in GUIDANCES)}",
          flush=True)
    rows, panels = [], {}
    for run in digits_by_guidance(model, GUIDANCES, GRID_PER_CLASS, budget=GUIDANCE_NFE):
        q = run.quality
        rows.append({"guidance": f"{run.guidance:g}", "nfe": run.nfe, "evaluations": run.evaluations,
                     "accuracy": f"{run.accuracy:.3f}", "frechet": f"{q.frechet:.2f}",
                     "floor": f"{q.floor:.2f}", "seconds": f"{run.seconds:.2f}"})
        panels[f"w = {run.guidance:g}: accuracy {run.accuracy:.2f}"] = run.x
        print(f"  guidance {run.guidance:<4g} accuracy {run.accuracy:.3f}  Fréchet {q.frechet:6.2f} "
              f"(floor {q.floor:.2f})  {run.evaluations} evaluations per sample")
    plot_image_panels(panels, out / "digits_guidance.png", ncols=len(GUIDANCES), nrow=GRID_PER_CLASS)
    table = format_table(rows, list(rows[0]))
    report += [
        "### Class-conditional digits and classifier-free guidance", "",
        f"Each digit 0..9 (one row each), {GRID_PER_CLASS} samples, at guidance w in "
        f"{', '.join(f'{w:g}' for w in GUIDANCES)} ({GUIDANCE_NFE} NFE of dpm_solver++, each a "
        "forward pass of 2B when w > 0: `evaluations` per sample). Accuracy: the digit classifier "
        "agrees with the class asked for. Fréchet distance of the pooled samples to the held-out "
        "digits (few samples: the floor is high).", "", "```", table, "```", "",
        "![class x guidance](digits_guidance.png)", ""]


def cmd_demo(args) -> int:
    from ..data import load_dataset

    out = Path(args.out)
    if load_dataset(args.data, seed=0).kind != "points":
        return fail(f"the demo needs a 2-D toy data set for --data, got {args.data!r}; allowed: "
                    "swissroll, moons, 8gaussians, checkerboard, gmm")
    device = resolve_device(args.device)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = ["# sdediff demo", ""]
    points_demo(args, out, report, device)
    if not args.no_images:
        images_demo(args, out, report, device)
    report.append(f"Written by `sdediff demo` in {time.perf_counter() - start:.0f} s.")
    (out / "report.md").write_text("\n".join(report) + "\n")
    print(f"demo finished in {time.perf_counter() - start:.1f} s; wrote {out / 'report.md'} and "
          f"its figures in {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job on built-in data: every sampler on 2-D points "
                       "and on the bundled digits model")
    p.add_argument("--out", default=f"{OUTPUT_DIR}/demo", help="folder of report.md and its figures")
    p.add_argument("--data", default="8gaussians", help="the 2-D toy set of the points part")
    p.add_argument("--steps", type=int, help="train the points part's MLP here for this many steps "
                   f"(default: the bundled 8gaussians model; {DEMO_TRAIN_STEPS} for another --data)")
    p.add_argument("--num", type=int, default=1000, help="samples per sampler (points part)")
    p.add_argument("--checkpoint", help="image model of the images part (default: the bundled "
                   "digits model)")
    p.add_argument("--no-images", action="store_true", help="the points part only")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

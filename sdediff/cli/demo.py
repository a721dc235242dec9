"""``sdediff demo``: the main job on built-in data, written up in one ``report.md``.

1. **Points**: train an MLP on a 2-D toy set (seconds), then every registered sampler; each
   sampler's samples over the data density, probability-flow trajectories, and the energy
   distance to held-out points beside the two-sample floor.
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

from .common import add_device_argument, fail, format_table, make_process, resolve_device
from .train import default_net

#: Steps per sampler in the points demo: fast solvers get few, SDE samplers need more.
DEMO_STEPS = {"ddim": 50, "ddpm": 200, "euler_maruyama": 200, "sde": 200,
              "reverse_diffusion": 200, "pc": 100}
DEMO_DEFAULT_STEPS = 25
#: The image demo's samplers, each run at every budget of IMAGE_NFE (network calls, counted).
IMAGE_SAMPLERS = ("ddim", "dpm_solver++", "unipc", "ipndm", "euler_maruyama")
IMAGE_NFE = (10, 50)
#: Samples per sampler and budget (Fréchet distance and its floor use this many).
IMAGE_NUM = 256
#: Digits in the round trip, interpolation pairs, and held-out digits scored for bits/dim.
ROUND_TRIP, PAIRS, LIKELIHOOD_NUM = 10, 4, 100
#: The demo's inpainting figure: held-out digits, and the methods (``sdediff.inpaint`` arguments),
#: sized for seconds (docs/guidance.md has the full-size comparison).
INPAINT_NUM = 10
INPAINT_METHODS = {
    "replacement, dpm_solver++ 20": {"method": "replacement", "sampler": "dpm_solver++", "steps": 20},
    "repaint, ddim 25, j=r=5": {"method": "repaint", "steps": 25, "jump_length": 5, "resamplings": 5},
    "smc, 16 particles, 25 steps": {"method": "smc", "particles": 16, "steps": 25},
}
#: The demo's class x guidance grid: weights, samples per class, NFE budget (forward passes).
GUIDANCES, GRID_PER_CLASS, GUIDANCE_NFE = (0.0, 1.0, 2.0, 4.0), 8, 20
#: rtol = atol of the round trip: a trained network makes the flow stiff near t_min, and the
#: default 1e-5 leaves a visible error on the digits (the error by tolerance: docs/encoding.md).
ROUND_TRIP_TOL = 1e-6
#: Steps of the exactly invertible ``bdia`` round trip shown beside dopri5's.
ROUND_TRIP_EXACT_STEPS = 20


def points_demo(args, out: Path, report: list[str], device=None) -> None:
    """Train an MLP on a toy set and run every sampler on ``device``; appends its section to
    ``report``."""
    import torch

    from .. import samplers
    from ..bench.metrics import energy_distance, two_sample_floor
    from ..data import load_dataset
    from ..plotting import plot_points, plot_trajectories
    from ..score import ScoreModel
    from ..train import TrainConfig, Trainer

    start = time.perf_counter()
    dataset = load_dataset(args.data, seed=0)
    torch.manual_seed(0)
    trainer = Trainer(default_net(dataset, "mlp"), make_process("vp"), dataset.train,
                      out / "model", config=TrainConfig(steps=args.steps, batch_size=512, lr=2e-3,
                                                        ema_decay=0.995,
                                                        checkpoint_every=args.steps),
                      meta=dataset.to_config(), progress=not args.no_progress, device=device)
    stats = trainer.fit()
    train_seconds = time.perf_counter() - start
    model = ScoreModel(trainer.ema_net, trainer.sde, prediction=trainer.prediction)
    reference = dataset.test[: args.num]
    floor = two_sample_floor(lambda n, g: dataset.test[torch.randint(len(dataset.test), (n,),
                                                                     generator=g)], args.num)
    rows, panels = [], {}
    for name in samplers.available():
        # adaptive samplers choose their own steps (and refuse a step count)
        steps = None if samplers.get(name).adaptive else DEMO_STEPS.get(name, DEMO_DEFAULT_STEPS)
        result = samplers.sample(model, shape=(args.num, 2), sampler=name, steps=steps,
                                 generator=torch.Generator().manual_seed(1), return_info=True)
        result.x = result.x.cpu()         # run on the model's device, measured and plotted here
        distance = energy_distance(result.x, reference)
        rows.append({"sampler": name, "steps": "adaptive" if steps is None else steps,
                     "nfe": result.nfe, "seconds": f"{result.seconds:.2f}",
                     "energy_distance": f"{distance:.4f}", "floor": f"{floor:.4f}"})
        panels[f"{name}: {result.nfe} NFE, ED {distance:.3f}"] = result.x
        print(f"  {name:<18} NFE {result.nfe:>5}  {result.seconds:6.2f} s  energy distance "
              f"{distance:.4f} (floor {floor:.4f})")
    panels[f"data (held out), floor {floor:.3f}"] = reference
    plot_points(panels, dataset.train, out / "samplers.png")
    flow = samplers.sample(model, shape=(256, 2), sampler="ddim", steps=100,
                           generator=torch.Generator().manual_seed(2), keep_trajectory=True,
                           return_info=True)
    plot_trajectories(flow.trajectory.cpu(), dataset.train, out / "trajectories.png")
    table = format_table(rows, ["sampler", "steps", "nfe", "seconds", "energy_distance", "floor"])
    print(table)
    report += [
        f"## Points: {dataset.name}", "",
        f"An MLP trained {stats['steps']} steps in {train_seconds:.1f} s (final loss "
        f"{stats['final_loss']:.4f}), then every registered sampler. Quality: energy distance of "
        f"{args.num} samples to {args.num} held-out points; the floor is two held-out sets of "
        "that size.", "", "```", table, "```", "", "![samplers](samplers.png)", "",
        "![trajectories](trajectories.png)", ""]


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
              f"(floor {q.floor:.2f}, ratio {q.ratio:.2f})")
    plot_image_panels(panels, out / "digits_samplers.png", ncols=len(IMAGE_NFE), nrow=6,
                      data_range=(low, high))
    samples_table = format_table(rows, list(rows[0]))

    originals = data.test[:ROUND_TRIP]
    tol = {"rtol": ROUND_TRIP_TOL, "atol": ROUND_TRIP_TOL}
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
                     f"dopri5 decode(encode(x)): {z.nfe} + {back.nfe} calls,\nmax error "
                     f"{float(relative(back.x, originals).max()):.1e}": back.x,
                     f"bdia latents ({steps} steps)": bdia_latent.clamp(-3, 3) / 3,
                     f"bdia decode(encode(x)): {z_bdia.nfe} + {back_bdia.nfe} calls,\nmax error "
                     f"{float(relative(back_bdia.x, originals).max()):.1e}": back_bdia.x.cpu()},
                    out / "digits_round_trip.png", data_range=(low, high))
    round_trip = (f"Round trip of {ROUND_TRIP} held-out digits, t_min = 1e-5. Through the "
                  f"probability-flow ODE (dopri5, rtol = atol = {ROUND_TRIP_TOL:g}): encode {z.nfe} "
                  f"NFE, decode {back.nfe} NFE, {errors(back.x)}. Through the exactly invertible bdia "
                  f"sampler ({steps} steps): encode {z_bdia.nfe} NFE, decode {back_bdia.nfe} NFE, "
                  f"{errors(back_bdia.x)}; its latent's mean relative distance to dopri5's "
                  f"{float(relative(bdia_latent, z.x).mean()):.3f}.")
    print(f"  {round_trip}")

    a, b = data.test[ROUND_TRIP:ROUND_TRIP + PAIRS], data.test[ROUND_TRIP + PAIRS:][:PAIRS]
    path = interpolate(model, a.to(device), b.to(device), 10).cpu()
    plot_image_rows({f"pair {k}": path[k] for k in range(PAIRS)}, out / "digits_interpolation.png",
                    data_range=(low, high))

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
        "Spherical interpolation between the latents of two held-out digits, decoded:", "",
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
    p.add_argument("--out", default="sdediff-demo", help="folder of report.md and its figures")
    p.add_argument("--data", default="8gaussians", help="the 2-D toy set of the points part")
    p.add_argument("--steps", type=int, default=2000, help="training steps of the points part")
    p.add_argument("--num", type=int, default=2000, help="samples per sampler (points part)")
    p.add_argument("--checkpoint", help="image model of the images part (default: the bundled "
                   "digits model)")
    p.add_argument("--no-images", action="store_true", help="the points part only")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

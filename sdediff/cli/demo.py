"""``sdediff demo``: the main job on built-in data."""

from __future__ import annotations

import time
from pathlib import Path

from .common import fail, format_table, make_process
from .train import default_net

#: Steps per sampler in the demo: fast solvers get few, SDE samplers need more.
DEMO_STEPS = {"ode": None, "ddim": 50, "ddpm": 200, "euler_maruyama": 200, "sde": 200,
              "reverse_diffusion": 200, "pc": 100}
DEMO_DEFAULT_STEPS = 25


def cmd_demo(args) -> int:
    import torch

    from .. import samplers
    from ..data import load_dataset
    from ..metrics import energy_distance, two_sample_floor
    from ..plotting import plot_points, plot_trajectories
    from ..score import ScoreModel
    from ..train import TrainConfig, Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = load_dataset(args.data, seed=0)
    if dataset.kind != "points":
        return fail(f"the demo needs a 2-D toy data set, got {args.data!r} ({dataset.kind})")
    torch.manual_seed(0)
    trainer = Trainer(default_net(dataset, "mlp"), make_process("vp"), dataset.train,
                      out / "model", config=TrainConfig(steps=args.steps, batch_size=512, lr=2e-3,
                                                        ema_decay=0.995,
                                                        checkpoint_every=args.steps),
                      meta=dataset.to_config(), progress=not args.no_progress)
    stats = trainer.fit()
    train_seconds = time.perf_counter() - start
    model = ScoreModel(trainer.ema_net, trainer.sde, prediction=trainer.prediction)
    reference = dataset.test[: args.num]
    floor = two_sample_floor(lambda n, g: dataset.test[torch.randint(len(dataset.test), (n,),
                                                                     generator=g)], args.num)
    rows, panels = [], {}
    for name in samplers.available():
        steps = DEMO_STEPS.get(name, DEMO_DEFAULT_STEPS)
        result = samplers.sample(model, shape=(args.num, 2), sampler=name, steps=steps,
                                 generator=torch.Generator().manual_seed(1), return_info=True)
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
    plot_trajectories(flow.trajectory, dataset.train, out / "trajectories.png")
    table = format_table(rows, ["sampler", "steps", "nfe", "seconds", "energy_distance", "floor"])
    (out / "summary.md").write_text(
        f"# sdediff demo\n\nData: {dataset.name}; MLP trained {stats['steps']} steps in "
        f"{train_seconds:.1f} s (final loss {stats['final_loss']:.4f}).\n"
        f"Quality: energy distance of {args.num} samples to {args.num} held-out points "
        f"(floor: two held-out sets of that size).\n\n```\n{table}\n```\n\n"
        "![samplers](samplers.png)\n\n![trajectories](trajectories.png)\n")
    print(table)
    print(f"demo finished in {time.perf_counter() - start:.1f} s; wrote {out / 'samplers.png'}, "
          f"{out / 'trajectories.png'}, {out / 'summary.md'} and the model in {out / 'model'}")
    return 0



def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job on built-in data: train, then every sampler")
    p.add_argument("--out", default="sdediff-demo")
    p.add_argument("--data", default="8gaussians")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--num", type=int, default=2000, help="samples per sampler")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

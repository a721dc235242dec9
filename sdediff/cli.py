"""The ``sdediff`` command.

Every user error (bad name, bad number, missing file) is one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .checks import NumericalError

#: Training defaults per kind of data; command-line flags override them.
PRESETS = {
    "points": {"model": "mlp", "steps": 3000, "batch_size": 512, "lr": 1e-3, "warmup": 100,
               "checkpoint_every": 1000},
    "images": {"model": "unet", "steps": 5000, "batch_size": 128, "lr": 5e-4, "warmup": 200,
               "checkpoint_every": 500},
}
PROCESSES = ("vp", "vp-cosine", "subvp", "ve")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2)."""

    def error(self, message):
        raise SystemExit(_fail(message))


def _fail(message: str) -> int:
    print(f"sdediff: error: {message}", file=sys.stderr)
    return 2


def make_process(name: str):
    from .checks import check_choice
    from .sde import VESDE, VPSDE, SubVPSDE

    check_choice("process", name, PROCESSES)
    return {"vp": lambda: VPSDE(), "vp-cosine": lambda: VPSDE("cosine"), "subvp": SubVPSDE,
            "ve": VESDE}[name]()


def default_net(dataset, model: str):
    """The network for a data set: an MLP for points, a U-Net sized to the images."""
    from .checks import check_choice
    from .nets import MLP, UNet

    check_choice("model", model, ("mlp", "unet"))
    if model == "mlp":
        if dataset.kind != "points":
            raise ValueError(f"model 'mlp' needs point data of shape (D,), got images of shape "
                             f"{dataset.shape}; use --model unet")
        return MLP(data_dim=dataset.dim)
    if dataset.kind != "images":
        raise ValueError(f"model 'unet' needs images (C, H, W), got points of shape "
                         f"{dataset.shape}; use --model mlp")
    channels, size = dataset.shape[0], dataset.shape[-1]
    mult = (1, 2) if size <= 8 else (1, 2, 2) if size <= 16 else (1, 2, 2, 2)
    return UNet(in_channels=channels, image_size=size, base_channels=32 if size <= 8 else 64,
                channel_mult=mult, attention_resolutions=(min(size, 16) // 2,))


def cmd_train(args) -> int:
    from .checkpoint import read_config, resolve_checkpoint
    from .data import load_dataset
    from .nets import build_net
    from .sde import sde_from_config
    from .train import TrainConfig, Trainer, train_config_from

    out = Path(args.out)
    has_run = (out / "checkpoints" / "latest").is_file()
    if has_run and not args.resume:
        return _fail(f"{str(out)!r} already holds a training run; pass --resume to continue it "
                     "or choose another --out")
    if args.resume and not has_run:
        return _fail(f"--resume given but {str(out)!r} holds no checkpoint to resume")
    dataset = load_dataset(args.data, seed=args.seed)
    if args.resume:
        saved = read_config(resolve_checkpoint(out))
        train = saved["train"] | ({"steps": args.steps} if args.steps is not None else {})
        config = train_config_from(train)
        net, sde, prediction = (build_net(saved["net"]), sde_from_config(saved["sde"]),
                                saved["prediction"])
    else:
        preset = dict(PRESETS[dataset.kind])
        model = args.model or preset.pop("model")
        preset.pop("model", None)
        for key in ("steps", "batch_size", "lr", "checkpoint_every"):
            if getattr(args, key) is not None:
                preset[key] = getattr(args, key)
        config = TrainConfig(**preset, weighting=args.weighting, seed=args.seed)
        net, sde, prediction = default_net(dataset, model), make_process(args.sde), args.prediction
    trainer = Trainer(net, sde, dataset.train, out, config=config, prediction=prediction,
                      meta=dataset.to_config(), progress=not args.no_progress)
    if args.resume:
        print(f"resuming {out} at step {trainer.resume()}")
    stats = trainer.fit()
    n_params = sum(p.numel() for p in net.parameters())
    print(f"trained {type(net).__name__} ({n_params:,} parameters) on {dataset.name} "
          f"for {stats['steps']} steps in {stats['seconds']:.1f} s "
          f"({stats['examples_per_second']:.0f} examples/s), final loss {stats['final_loss']:.4f}")
    print(f"checkpoint: {resolve_checkpoint(out)}")
    print(f"loss log: {out / 'loss.csv'}  loss curve: {out / 'loss.png'}")
    return 0


def sampler_rows() -> list[dict]:
    """One row per registered sampler, read from its declared metadata."""
    from . import samplers

    rows = []
    for name in samplers.available():
        sampler = samplers.get(name)
        per_10 = sampler.nfe(10)
        if per_10 is None:
            nfe = "adaptive"
        elif per_10 == 10 * sampler.nfe(1):
            nfe = str(sampler.nfe(1))
        else:
            nfe = f"{per_10} per 10 steps"
        rows.append({"name": name, "family": sampler.family,
                     "deterministic": "no" if sampler.is_stochastic() else "yes",
                     "order": f"{sampler.order:g}", "nfe_per_step": nfe,
                     "options": ", ".join(f"{k}={v}" for k, v in sampler.defaults.items())})
    return rows


def format_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


SAMPLER_COLUMNS = ["name", "family", "deterministic", "order", "nfe_per_step", "options"]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f"`{r[c]}`" if c == "name" else str(r[c]) for c in columns) + " |"
              for r in rows]
    return "\n".join(lines)


def cmd_samplers(args) -> int:
    rows = sampler_rows()
    print(markdown_table(rows, SAMPLER_COLUMNS) if args.markdown
          else format_table(rows, SAMPLER_COLUMNS))
    return 0


def parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values become int, float, bool or stay strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"sampler option {pair!r} must look like key=value (e.g. eta=0.5)")
        for convert in (int, float):
            try:
                options[key] = convert(value)
                break
            except ValueError:
                continue
        else:
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def write_samples(x, out: Path, data_config: dict, data=None) -> list[Path]:
    """Samples as .npy (or .pt) plus a PNG: a scatter over the data's density for points,
    an image grid for images."""
    import numpy as np
    import torch

    from .plotting import plot_points, save_image_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        torch.save(x.cpu(), out)
    else:
        out = out.with_suffix(".npy")
        np.save(out, x.cpu().numpy())
    png = out.with_suffix(".png")
    if data_config.get("kind") == "images":
        save_image_grid(x[:100], png, data_range=tuple(data_config.get("data_range", (-1, 1))))
    else:
        plot_points({f"{len(x)} samples": x[:, :2]}, None if data is None else data[:, :2], png)
    return [out, png]


def cmd_sample(args) -> int:
    import torch

    from . import samplers
    from .checkpoint import load_model
    from .checks import check_int
    from .data import load_dataset

    model, config = load_model(args.checkpoint)
    check_int("--num", args.num, minimum=1)
    shape = (args.num, *config["data"]["shape"])
    options = parse_options(args.option)
    samplers.get(args.sampler, **options)  # unknown names and options fail before any work
    result = samplers.sample(model, shape=shape, sampler=args.sampler, steps=args.steps,
                             generator=torch.Generator().manual_seed(args.seed),
                             progress=not args.no_progress, return_info=True, **options)
    data = None
    if config["data"].get("kind") == "points":
        try:
            data = load_dataset(config["data"]["name"]).test
        except (ValueError, FileNotFoundError):
            data = None  # the training data is gone: plot the samples alone
    files = write_samples(result.x, Path(args.out), config["data"], data)
    print(f"{args.sampler}: {args.num} samples, NFE {result.nfe}, {result.seconds:.2f} s; "
          f"wrote {', '.join(str(f) for f in files)}")
    return 0


#: Steps per sampler in the demo: fast solvers get few, SDE samplers need more.
DEMO_STEPS = {"ode": None, "ddim": 50, "ddpm": 200, "euler_maruyama": 200, "sde": 200,
              "reverse_diffusion": 200, "pc": 100}
DEMO_DEFAULT_STEPS = 25


def cmd_demo(args) -> int:
    import torch

    from . import samplers
    from .data import load_dataset
    from .metrics import energy_distance, two_sample_floor
    from .plotting import plot_points, plot_trajectories
    from .score import ScoreModel
    from .train import TrainConfig, Trainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset = load_dataset(args.data, seed=0)
    if dataset.kind != "points":
        return _fail(f"the demo needs a 2-D toy data set, got {args.data!r} ({dataset.kind})")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdediff", description="Score-based diffusion through SDEs and ODEs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a score model by denoising score matching")
    p.add_argument("--data", required=True,
                   help="swissroll, moons, 8gaussians, checkerboard, gmm, digits, a .npy file "
                        "or an image folder")
    p.add_argument("--out", required=True, help="run directory (checkpoints, loss.csv, loss.png)")
    p.add_argument("--steps", type=int, help="total training steps (default per data kind)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--model", choices=("mlp", "unet"), help="default: mlp for points, unet for "
                   "images")
    p.add_argument("--sde", default="vp", choices=PROCESSES)
    p.add_argument("--prediction", default="eps", choices=("eps", "x0", "v", "score"))
    p.add_argument("--weighting", default="eps", choices=("eps", "likelihood"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("samplers", help="list the registered samplers")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (docs)")
    p.set_defaults(func=cmd_samplers)

    p = sub.add_parser("sample", help="generate samples from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run directory or checkpoint folder")
    p.add_argument("--sampler", default="ddim", help="a name from `sdediff samplers`")
    p.add_argument("--steps", type=int, help="steps (default per sampler)")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.npy", help=".npy or .pt; a .png is written beside")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler option, e.g. -o eta=0.5 -o schedule=logsnr")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="the main job on built-in data: train, then every sampler")
    p.add_argument("--out", default="sdediff-demo")
    p.add_argument("--data", default="8gaussians")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--num", type=int, default=2000, help="samples per sampler")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, NumericalError) as err:
        return _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())

"""The ``sdediff`` command.

Every user error (bad name, bad number, missing file) is one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import json
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


def cmd_demo(args) -> int:
    from .data import load_dataset
    from .train import TrainConfig, Trainer

    out = Path(args.out)
    dataset = load_dataset("8gaussians", seed=0)
    start = time.perf_counter()
    trainer = Trainer(default_net(dataset, "mlp"), make_process("vp"), dataset.train,
                      out / "model", config=TrainConfig(steps=args.steps, batch_size=512, lr=1e-3,
                                                        checkpoint_every=args.steps),
                      meta=dataset.to_config(), progress=not args.no_progress)
    stats = trainer.fit()
    summary = {"data": dataset.name, "steps": stats["steps"],
               "seconds": round(time.perf_counter() - start, 2),
               "final_loss": round(stats["final_loss"], 5), "model": str(out / "model")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"demo: trained a 2-D score model on {dataset.name} in {summary['seconds']} s; "
          f"results in {out} (model/, model/loss.png, summary.json)")
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

    p = sub.add_parser("demo", help="the main job on built-in data")
    p.add_argument("--out", default="sdediff-demo")
    p.add_argument("--steps", type=int, default=1500)
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

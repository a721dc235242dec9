"""``sdediff train``: denoising score matching with atomic checkpoints and exact resume."""

from __future__ import annotations

from pathlib import Path

from ..checks import InputValueError
from .common import PROCESSES, add_compile_argument, add_device_argument, make_process, resolve_device

#: Training defaults per kind of data; command-line flags override them.
PRESETS = {
    "points": {"model": "mlp", "steps": 3000, "batch_size": 512, "lr": 1e-3, "warmup": 100,
               "checkpoint_every": 1000},
    "images": {"model": "unet", "steps": 5000, "batch_size": 128, "lr": 5e-4, "warmup": 200,
               "checkpoint_every": 500},
}

#: The networks ``--model`` names: the built-in MLP and U-Net, and diffusers' ``UNet2DModel``.
MODELS = ("mlp", "unet", "diffusers-unet")
#: The process a run trains on when ``--sde`` is not given.
DEFAULT_PROCESS = "vp"
#: The processes a model may train on, where it is restricted (the first is its default): a
#: diffusers U-Net trains on diffusers' chain of betas, so that ``sdediff export`` can write the
#: run as a diffusers pipeline (a diffusers scheduler describes no other process).
MODEL_PROCESSES = {"diffusers-unet": ("discrete",)}


def resolve_process(model: str, sde: str | None) -> str:
    """The process name of a new run: ``--sde``, else the model's default; a process the model
    cannot train on is a one-line error naming both and the allowed ones."""
    allowed = MODEL_PROCESSES.get(model)
    if allowed is None:
        return DEFAULT_PROCESS if sde is None else sde
    if sde is None:
        return allowed[0]
    if sde not in allowed:
        raise InputValueError(f"--sde {sde!r} cannot train --model {model}; allowed: "
                              f"{', '.join(allowed)} (diffusers' chain of betas, so that the run "
                              "exports to a diffusers pipeline), or leave --sde out")
    return sde


def check_model_prediction(model: str, prediction: str) -> None:
    """A diffusers U-Net must predict what a diffusers scheduler can read (``score`` is not one of
    them): refuse it now rather than at ``sdediff export``, after training."""
    from ..interop import DIFFUSERS_PREDICTION_TYPES

    if model == "diffusers-unet" and prediction not in DIFFUSERS_PREDICTION_TYPES:
        raise InputValueError(f"--prediction {prediction!r} cannot train --model {model} (diffusers "
                              f"has no such prediction_type); allowed: "
                              f"{', '.join(DIFFUSERS_PREDICTION_TYPES)}")


def _needs_images(model: str, dataset) -> None:
    if dataset.kind != "images":
        raise InputValueError(f"model {model!r} needs images (C, H, W), got points of shape "
                              f"{dataset.shape}; use --model mlp")


def dataset_classes(dataset) -> int:
    """The number of classes of a labelled data set (``max label + 1``), for ``--conditional``;
    a set without labels is a one-line error naming the labelled ones."""
    from ..data import DATASETS, TOY_CLASSES

    if dataset.train_labels is None:
        labelled = [name for name in DATASETS if name in TOY_CLASSES or name in ("digits", "mnist")]
        raise InputValueError(f"--conditional needs labelled data, and {dataset.name!r} has no labels; "
                              f"labelled sets: {', '.join(labelled)}, mnist:FOLDER")
    return int(dataset.train_labels.max()) + 1


def default_net(dataset, model: str, sde=None, num_classes: int | None = None):
    """The network for a data set: an MLP for points, a U-Net sized to the images, or diffusers'
    ``UNet2DModel`` (``diffusers-unet``) on the chain of ``sde``, a
    :class:`~sdediff.sde.DiscreteVPSDE` (default: diffusers' default chain). ``num_classes``
    makes the MLP or U-Net conditional (a class embedding and a null class)."""
    from ..checks import check_choice
    from ..nets import MLP, DiffusersUNet, UNet
    from ..nets.diffusers_unet import default_unet_config
    from ..sde import DiscreteVPSDE

    check_choice("model", model, MODELS)
    if model == "mlp":
        if dataset.kind != "points":
            raise InputValueError(f"model 'mlp' needs point data of shape (D,), got images of shape "
                                  f"{dataset.shape}; use --model unet")
        return MLP(data_dim=dataset.dim, num_classes=num_classes)
    _needs_images(model, dataset)
    if model == "diffusers-unet":
        if num_classes is not None:
            raise InputValueError("--conditional is not available for --model diffusers-unet (its "
                                  "class embedding differs from sdediff's); allowed: --model unet or mlp")
        chain = DiscreteVPSDE() if sde is None else sde
        return DiffusersUNet(default_unet_config(dataset.shape), chain.num_train_timesteps)
    channels, size = dataset.shape[0], dataset.shape[-1]
    mult = (1, 2) if size <= 8 else (1, 2, 2) if size <= 16 else (1, 2, 2, 2)
    attention = min(size, 16) // 2
    if size % 8 == 4:  # e.g. MNIST's 28: three levels 28 -> 14 -> 7, attention at the last
        mult, attention = (1, 2, 2), size // 4
    return UNet(in_channels=channels, image_size=size, base_channels=32 if size <= 8 else 64,
                channel_mult=mult, attention_resolutions=(attention,), num_classes=num_classes)


def cmd_train(args) -> int:
    """``sdediff train``; under torchrun, rank 0 alone prints (and writes, see Trainer). Input and
    numerical errors are met alike on every rank (the same arguments and data, and the non-finite
    decision is all-reduced), so only rank 0 reports them (:func:`sdediff.cli.main`)."""
    from ..distributed import rank_world

    return _train(args, rank_world()[0])


def check_run_folder(path, resume: bool) -> Path:
    """``--out`` as a ``Path``: a new folder, or (with ``resume``) one holding a run; else a
    one-line error saying which."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputValueError(f"--out {str(out)!r} is a file; allowed: a new directory, or a run "
                              "directory to continue with --resume")
    has_run = (out / "checkpoints" / "latest").is_file()
    if has_run and not resume:
        raise InputValueError(f"{str(out)!r} already holds a training run; pass --resume to continue "
                              "it or choose another --out")
    if resume and not has_run:
        raise InputValueError(f"--resume given but {str(out)!r} holds no checkpoint to resume")
    return out


def resumed_config(out: Path, dataset, data_name: str, classifier: bool) -> dict:
    """The config of the run in ``out`` to resume, refused if it is of the other kind (a score
    model for ``train-classifier``, a classifier for ``train``) or was trained on data of another
    shape."""
    from ..checkpoint import read_config, resolve_checkpoint
    from ..losses import LOGITS

    saved = read_config(resolve_checkpoint(out))
    if (saved["prediction"] == LOGITS) != classifier:
        held, command = (("a classifier", "train-classifier") if not classifier
                         else ("a score-model run", "train"))
        raise InputValueError(f"{str(out)!r} holds {held}, not a "
                              f"{'classifier' if classifier else 'score-model'} run; resume it with "
                              f"sdediff {command} --resume, or choose another --out")
    if list(saved.get("data", {}).get("shape", dataset.shape)) != list(dataset.shape):
        raise InputValueError(f"--data {data_name!r} has examples of shape {dataset.shape} but the run "
                              f"in {str(out)!r} was trained on {saved['data'].get('name')!r} of "
                              f"shape {tuple(saved['data']['shape'])}; resume with that data")
    return saved


def resumed_train(saved: dict, out: Path, **overrides) -> dict:
    """The saved run's training settings with the flags given (``None``: keep), its ``steps``
    refused below the checkpoint's step."""
    train = saved["train"] | {k: v for k, v in overrides.items() if v is not None}
    if train.get("steps", 0) <= saved["step"]:
        given = f"--steps {train['steps']}" if overrides.get("steps") is not None else \
            f"the run's --steps {train['steps']}"
        raise InputValueError(f"{given} leaves nothing to train: the checkpoint in {str(out)!r} is at "
                              f"step {saved['step']}; pass --steps above {saved['step']} (the total, "
                              "not the steps still to go)")
    return train


#: Exit status of a run stopped by Ctrl-C (128 + SIGINT, the shell's convention).
INTERRUPTED = 130


def interrupted(out: Path, args, rank: int) -> int:
    """After Ctrl-C: which step the last checkpoint holds and the command that continues from
    it; exit status :data:`INTERRUPTED`."""
    import shlex
    import sys

    from ..checkpoint import read_config, resolve_checkpoint

    if rank == 0:
        try:
            folder = resolve_checkpoint(out)
            held = f"the last checkpoint, {folder}, holds step {read_config(folder)['step']}"
        except (OSError, ValueError, KeyError):
            held = "no checkpoint was written yet (the run restarts from step 0)"
        command = ["sdediff", "train", "--data", args.data, "--out", str(out), "--resume"]
        if args.steps is not None:
            command += ["--steps", str(args.steps)]
        print(f"sdediff: interrupted; {held}; continue with: {shlex.join(command)}", file=sys.stderr)
    return INTERRUPTED


def _train(args, rank: int) -> int:
    import torch

    from ..checkpoint import resolve_checkpoint
    from ..data import load_dataset
    from ..distributed import init_distributed
    from ..nets import build_net
    from ..sde import sde_from_config
    from ..train import TrainConfig, Trainer, train_config_from

    device = init_distributed(resolve_device(args.device))
    say = print if rank == 0 else (lambda *a, **k: None)
    out = check_run_folder(args.out, args.resume)
    dataset = load_dataset(args.data, seed=args.seed)
    if args.resume:
        saved = resumed_config(out, dataset, args.data, classifier=False)
        config = train_config_from(resumed_train(saved, out, steps=args.steps,
                                                 on_nonfinite=args.on_nonfinite))
        net, sde, prediction = (build_net(saved["net"]), sde_from_config(saved["sde"]),
                                saved["prediction"])
    else:
        preset = dict(PRESETS[dataset.kind])
        model = args.model or preset.pop("model")
        preset.pop("model", None)
        for key in ("steps", "batch_size", "lr", "checkpoint_every", "micro_batches"):
            if getattr(args, key) is not None:
                preset[key] = getattr(args, key)
        if args.label_dropout is not None and not args.conditional:
            raise InputValueError("--label-dropout applies only to --conditional training; add "
                                  "--conditional or leave it out")
        num_classes = dataset_classes(dataset) if args.conditional else None
        dropout = {} if args.label_dropout is None else {"label_dropout": args.label_dropout}
        config = TrainConfig(**preset, weighting=args.weighting, seed=args.seed,
                             on_nonfinite=args.on_nonfinite or "stop", autocast=args.autocast,
                             **dropout)
        sde, prediction = make_process(resolve_process(model, args.sde)), args.prediction
        check_model_prediction(model, prediction)
        # The initial weights come from --seed too, so one command line gives one run (and a run
        # killed before its first checkpoint restarts from the same weights).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            net = default_net(dataset, model, sde, num_classes)
    from ..guidance import network_classes

    labels = None
    if network_classes(net) is not None:
        if dataset_classes(dataset) > network_classes(net):
            raise InputValueError(f"--data {args.data!r} has {dataset_classes(dataset)} classes but the "
                                  f"run's network has {network_classes(net)}; resume with its data")
        labels = dataset.train_labels
    trainer = Trainer(net, sde, dataset.train, out, config=config, prediction=prediction,
                      meta=dataset.to_config(), progress=not args.no_progress, device=device,
                      compile=args.compile, labels=labels)
    if args.resume:
        say(f"resuming {out} at step {trainer.resume()}")
        saved_world, world = saved.get("world_size", 1), trainer.world_size
        if saved_world != world:
            say(f"note: the run trained on {saved_world} process(es) and resumes on {world}: its "
                f"global batch changes from {saved_world * config.batch_size} to "
                f"{world * config.batch_size}, so it continues differently from an uninterrupted run")
    try:
        stats = trainer.fit()
    except KeyboardInterrupt:
        return interrupted(out, args, rank)
    n_params = sum(p.numel() for p in net.parameters())
    final = "n/a" if stats["final_loss"] is None else f"{stats['final_loss']:.4f}"
    skipped = f", {len(trainer.skipped)} non-finite steps skipped" if trainer.skipped else ""
    say(f"trained {type(net).__name__} ({n_params:,} parameters) on {dataset.name} "
        f"for {stats['steps']} steps in {stats['seconds']:.1f} s "
        f"({stats['examples_per_second']:.0f} examples/s), final loss {final}{skipped}")
    say(f"checkpoint: {resolve_checkpoint(out)}")
    say(f"loss log: {out / 'loss.csv'}  loss curve: {out / 'loss.png'}")
    warning = divergence_warning(out / "loss.csv", config.lr)
    if warning and rank == 0:
        import sys

        print(warning, file=sys.stderr)
    return 0


#: The loss logged last above this multiple of the first logged loss: training diverged.
DIVERGED = 10.0


def divergence_warning(loss_csv: Path, lr: float) -> str | None:
    """A one-line warning when the loss in ``loss_csv`` ends above :data:`DIVERGED` times where
    it started (``--lr 1e3`` ends at 2.8e8), else ``None``."""
    import csv
    import math

    if not loss_csv.is_file():
        return None
    with open(loss_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("loss")]
    if len(rows) < 2:
        return None
    first, last = float(rows[0]["loss"]), float(rows[-1]["loss"])
    if math.isfinite(last) and last <= DIVERGED * first:
        return None
    return (f"sdediff: warning: the loss rose from {first:.4g} (step {rows[0]['step']}) to {last:.4g} "
            f"(step {rows[-1]['step']}): training diverged; lower --lr (this run: {lr:g})")



def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a score model by denoising score matching")
    p.add_argument("--data", required=True,
                   help="swissroll, moons, 8gaussians, checkerboard, gmm, digits, mnist (the "
                        "5,000-image subset: pip install 'sdediff[mnist]'), mnist:FOLDER "
                        "(torchvision's MNIST files), a .npy file or an image folder")
    p.add_argument("--out", required=True, help="run directory (checkpoints, loss.csv, loss.png)")
    p.add_argument("--steps", type=int, help="total training steps (default per data kind)")
    p.add_argument("--batch-size", type=int, help="examples per step and process (default: 512 for "
                   "points, 128 for images)")
    p.add_argument("--lr", type=float, help="peak AdamW learning rate (default: 1e-3 for points, "
                   "5e-4 for images)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: 1000 "
                   "for points, 500 for images)")
    p.add_argument("--micro-batches", type=int,
                   help="split each process's batch into this many parts, one forward and backward "
                        "each (gradient accumulation); with --batch-size N*B and --micro-batches N one "
                        "process trains what N torchrun processes with --batch-size B train")
    p.add_argument("--model", choices=MODELS, help="default: mlp for points, unet for images; "
                   "diffusers-unet (images) is diffusers' UNet2DModel, exportable with sdediff export")
    p.add_argument("--sde", choices=PROCESSES,
                   help=f"forward process (default: {DEFAULT_PROCESS}; discrete, diffusers' chain, for "
                        "--model diffusers-unet, which allows only that one)")
    p.add_argument("--prediction", default="eps", choices=("eps", "x0", "v", "score"),
                   help="what the network predicts")
    p.add_argument("--weighting", default="eps", choices=("eps", "likelihood"),
                   help="loss weighting: eps (Ho et al.'s simple loss) or likelihood (g^2/sigma^2)")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the batches and the noise")
    p.add_argument("--on-nonfinite", choices=("stop", "skip"),
                   help="a non-finite loss or gradient: stop, keeping the last good checkpoint "
                        "(default), or skip the step")
    p.add_argument("--autocast", choices=("bfloat16",),
                   help="run the network in bfloat16 under torch.autocast (CPU or GPU)")
    p.add_argument("--conditional", action="store_true",
                   help="a class-conditional network (class embedding plus a null class) trained on "
                        "the data's labels with label dropout, so one model samples both "
                        "conditionally and unconditionally (classifier-free guidance)")
    p.add_argument("--label-dropout", type=float,
                   help="probability that a label is replaced by the null class (default 0.1, Ho & "
                        "Salimans 2022); --conditional only")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    add_compile_argument(p)
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

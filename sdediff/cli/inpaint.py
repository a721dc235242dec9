"""``sdediff inpaint``: fill in the hidden part of images (or points) with a checkpoint
(:func:`sdediff.inpaint`)."""

from __future__ import annotations

from pathlib import Path

from ..checks import InputValueError
from .common import (
    OUTPUT_DIR,
    add_checkpoint_argument,
    add_device_argument,
    load_checkpoint_model,
    output_file,
    parse_options,
    resolve_device,
    write_samples,
)

#: Named masks: the region each one **hides** (and so inpaints), for images ``(C, H, W)``.
HALVES = ("left", "right", "top", "bottom")
MASK_HELP = ("left|right|top|bottom: that half of every image is hidden and inpainted (the first or "
             "last floor(W/2) columns, floor(H/2) rows); random:P: each pixel of each example is "
             "hidden with probability P (0 < P < 1, seeded by --seed); FILE.npy: 0/1 of the data's "
             "shape or (N, *shape), 1 = observed")
#: Examples shown in the figure (its strips are one row each).
FIGURE_EXAMPLES = 16


#: Examples ``sdediff inpaint`` takes when ``--num`` is not given (all, when there are fewer).
INPAINT_DEFAULT_NUM = 8


def make_mask(spec: str, shape: tuple[int, ...], num: int, generator):
    """The 0/1 mask (1 = observed) of ``--mask spec`` for ``num`` examples of ``shape``: shape
    ``shape`` for a named half, ``(num, *shape)`` for ``random:P``, the file's for a ``.npy``."""
    import numpy as np
    import torch

    allowed = f"allowed: {', '.join(HALVES)}, random:P (0 < P < 1), or a .npy file of 0/1 (1 = observed)"
    if spec in HALVES:
        if len(shape) != 3:
            raise InputValueError(f"--mask {spec} needs images (C, H, W), but the checkpoint models "
                                  f"{shape}; use random:P or a .npy mask")
        mask = torch.ones(shape)
        H, W = shape[1], shape[2]
        region = {"left": (slice(None), slice(None, W // 2)), "right": (slice(None), slice(W - W // 2, None)),
                  "top": (slice(None, H // 2), slice(None)), "bottom": (slice(H - H // 2, None), slice(None))}
        mask[(slice(None), *region[spec])] = 0
        return mask
    if spec.startswith("random:"):
        try:
            p = float(spec[len("random:"):])
        except ValueError:
            p = float("nan")
        if not 0 < p < 1:
            raise InputValueError(f"--mask {spec!r}: P must be a number in (0, 1); {allowed}")
        return (torch.rand((num, *shape), generator=generator) >= p).float()
    if spec.lower().endswith(".npy"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"--mask file {spec!r} does not exist; {allowed}")
        return torch.from_numpy(np.load(path, allow_pickle=False))
    raise InputValueError(f"unknown --mask {spec!r}; {allowed}")


def cmd_inpaint(args) -> int:
    import torch

    from .. import samplers
    from ..checks import check_int
    from ..inpaint import inpaint
    from ..plotting import plot_inpainting
    from .ode import load_examples

    if args.num is not None:
        check_int("--num", args.num, minimum=1)
    out_file = output_file(args.out, (".npy", ".pt"))
    device = resolve_device(args.device)
    options = parse_options(args.option)
    if args.sampler is not None:
        samplers.get(args.sampler, **{k: v for k, v in options.items()
                                      if k not in ("kappa", "ess_threshold")})   # fail early
    model, config = load_checkpoint_model(args.checkpoint, device)
    is_path = Path(args.input).exists() or args.input.lower().endswith(".npy")
    x, what, _, data_range = load_examples(None if is_path else args.input,
                                           args.input if is_path else None, args.num, config)
    if args.num is None:        # the default is a cap: a smaller input is taken whole
        x = x[:INPAINT_DEFAULT_NUM]
    generator = torch.Generator().manual_seed(args.seed)
    mask = make_mask(args.mask, tuple(config["data"]["shape"]), len(x), generator)
    method_args = {"particles": args.particles, "jump_length": args.jump_length,
                   "resamplings": args.resamplings}
    result = inpaint(model, x.to(device), mask, sampler=args.sampler, steps=args.steps,
                     method=args.method, generator=generator, return_info=True,
                     progress=not args.no_progress,
                     **{k: v for k, v in method_args.items() if v is not None}, **options)
    out = result.x.cpu()
    files = write_samples(out, out_file, config["data"])
    if config["data"].get("kind") == "images":
        shown = slice(0, FIGURE_EXAMPLES)
        shown_mask = mask[shown] if mask.dim() == x.dim() else mask
        plot_inpainting(x[shown], shown_mask, out[shown], files[1], data_range)
    per_sample = "" if result.evaluations == result.nfe else (
        f" ({result.evaluations} network evaluations per sample)")
    print(f"inpaint {args.method}: {len(x)} examples of {what}, mask {args.mask}; NFE {result.nfe}"
          f"{per_sample}, {result.seconds:.2f} s; wrote {', '.join(str(f) for f in files)}")
    return 0


def add_parser(sub) -> None:
    from ..inpaint import METHODS, REPAINT_JUMP_LENGTH, REPAINT_RESAMPLINGS, SMC_PARTICLES
    from ..samplers import available

    p = sub.add_parser("inpaint", help="fill in hidden pixels (or coordinates) of examples with a "
                       "checkpoint: replacement, RePaint or SMC (MCGdiff)")
    p.add_argument("--input", required=True, help="a data set name (its held-out split, e.g. "
                   "digits) or a .npy file of examples in the checkpoint's data shape")
    p.add_argument("--mask", required=True, help=MASK_HELP)
    p.add_argument("--method", default="replacement", choices=METHODS,
                   help="replacement (any sampler, biased), repaint (Lugmayr et al.), smc "
                        "(MCGdiff, consistent as --particles grows)")
    add_checkpoint_argument(p)
    p.add_argument("--sampler", help=f"one of {', '.join(available())} (default: ddim; ddim "
                   "with eta=1 for repaint and smc, whose kernel is always ddim's)")
    p.add_argument("--steps", type=int, help="steps (default per sampler)")
    p.add_argument("--particles", type=int,
                   help=f"smc: particles per example (default {SMC_PARTICLES})")
    p.add_argument("--jump-length", type=int,
                   help=f"repaint: steps per jump back up (default {REPAINT_JUMP_LENGTH})")
    p.add_argument("--resamplings", type=int,
                   help=f"repaint: passes through each jump (default {REPAINT_RESAMPLINGS})")
    p.add_argument("--num", type=int, help="examples: the first --num of --input (default: "
                   f"{INPAINT_DEFAULT_NUM}, or all when there are fewer)")
    p.add_argument("--seed", type=int, default=0, help="seeds the random mask and every draw")
    p.add_argument("--out", default=f"{OUTPUT_DIR}/inpainted.npy",
                   help=".npy or .pt; a .png (original, masked, inpainted) is written beside")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler option (e.g. -o eta=0.5), or smc's kappa / ess_threshold")
    add_device_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_inpaint)

"""``sdediff encode``, ``decode``, ``likelihood``, ``interpolate`` (:mod:`sdediff.ode`)."""

from __future__ import annotations

from pathlib import Path

from ..checks import InputValueError
from ..distributed import gather, init_distributed, rank_world
from ..streams import SampleSeeds
from .common import (
    OUTPUT_DIR,
    add_checkpoint_argument,
    add_device_argument,
    load_checkpoint_model,
    on_ranks,
    output_file,
    parse_options,
    resolve_device,
    write_samples,
)

#: Examples per solve in the ODE commands (adaptive step sizes are shared within a batch).
ODE_BATCH_SIZE = 256


def _sidecar(path: Path) -> Path:
    """The JSON beside a latents file: how it was encoded (``t_min``, solver, input)."""
    return path.with_suffix(".json")


def _in_file_order(dataset):
    """All examples of a file-backed data set in the file's order (``data.py`` splits them into
    train and test by a fixed permutation, which is inverted here)."""
    import torch

    from ..data import FILE_TEST_FRACTION, _split

    n = len(dataset.train) + len(dataset.test)
    index = _split(torch.arange(n), FILE_TEST_FRACTION)
    x = torch.empty((n, *dataset.shape), dtype=dataset.train.dtype)
    x[index["train"]], x[index["test"]] = dataset.train, dataset.test
    return x


def load_examples(data: str | None, input_path: str | None, num: int | None, config: dict):
    """Examples for the ODE commands: ``--data NAME`` (its held-out split) or ``--input`` (a .npy
    file or an image folder, all examples in file order). Returns ``(x, description, n_levels,
    data_range)``; the examples must have the checkpoint's shape."""
    from ..checks import check_int
    from ..data import load_dataset

    if (data is None) == (input_path is None):
        raise InputValueError("give exactly one of --input FILE|FOLDER and --data NAME (its held-out "
                              "split)")
    if data is not None:
        dataset = load_dataset(data)
        x, what = dataset.test, f"{dataset.name} (held-out split)"
    else:
        path = Path(input_path)
        if not path.exists():
            raise FileNotFoundError(f"input {input_path!r} does not exist; allowed: a .npy file or "
                                    "a folder of .png/.jpg/.jpeg images")
        dataset = load_dataset(str(path))
        x, what = _in_file_order(dataset), str(path)
    if num is not None:
        check_int("--num", num, minimum=1)
        if num > len(x):
            raise InputValueError(f"--num {num} exceeds the {len(x)} examples of {what}; pass --num "
                                  f"{len(x)} or fewer")
        x = x[:num]
    shape = tuple(config["data"]["shape"])
    if tuple(x.shape[1:]) != shape:
        raise InputValueError(f"{what} holds examples of shape {tuple(x.shape[1:])} but the checkpoint "
                              f"models {shape}")
    return x, what, dataset.n_levels, tuple(dataset.data_range)


def _solver_options(args) -> dict:
    """The solver's options: ``-o KEY=VALUE`` plus the ``--method/--rtol/--atol`` shorthands."""
    options = parse_options(args.option)
    for key in ("method", "rtol", "atol"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def _my_batches(x, batch_size: int):
    """This rank's ``(start, batch)`` pairs: ``x`` in batches of ``batch_size`` (the batches a
    single process runs), batch ``k`` on rank ``k mod world`` (:mod:`sdediff.distributed`)."""
    from ..distributed import my_batches

    return [(a, x[a:b]) for a, b in my_batches(len(x), batch_size)]


def _transport_all(function, model, x, args, options: dict, t_min: float, sampler: str, steps,
                   device):
    """``encode`` or ``decode`` batch by batch on ``device``, shared out under torchrun; returns
    ``(result, nfe, seconds, error, estimate_nfe)`` with the whole result and the encoder's
    per-example error estimate (``None`` if it has none) on rank 0 (``None`` on the others), and
    this rank's calls and time."""
    import torch

    outs, errors, nfe, seconds, estimate_nfe = [], [], 0, 0.0, 0
    for start, batch in _my_batches(x, args.batch_size):
        r = function(model, batch.to(device), sampler=sampler, steps=steps, t_min=t_min,
                     progress=rank_world()[0] == 0 and not args.no_progress, return_info=True,
                     **options)
        outs.append((start, r.x))
        error = r.extra.get("error_estimate")       # every rank gathers: NaN where there is none
        errors.append((start, torch.full((len(batch),), float("nan")) if error is None else error))
        nfe, seconds = nfe + r.nfe, seconds + r.seconds
        estimate_nfe += r.extra.get("estimate_nfe", 0)
    error = gather(errors)
    return (gather(outs), nfe, seconds, None if error is None or bool(error.isnan().all()) else error,
            estimate_nfe)


def cmd_encode(args) -> int:
    import json

    import numpy as np

    from ..ode import encode

    out = output_file(args.out, (".npy",))
    device = init_distributed(resolve_device(args.device))
    model, config = load_checkpoint_model(args.checkpoint, device)
    x, what, _, _ = load_examples(args.data, args.input, args.num, config)
    options = _solver_options(args)
    t_min = model.sde.t_min if args.t_min is None else args.t_min
    z, nfe, seconds, error, estimate_nfe = _transport_all(encode, model, x, args, options, t_min,
                                                          args.sampler, args.steps, device)
    if z is None:          # not rank 0: rank 0 writes
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, z.numpy())
    _sidecar(out).write_text(json.dumps(
        {"checkpoint": args.checkpoint or "bundled digits", "t_min": t_min, "sampler": args.sampler,
         "steps": args.steps, "options": options, "data": args.data, "input": args.input,
         "num": len(x)}, indent=2))
    first = z if z.shape[1:] == x.shape[1:] else z[:, 0]      # a latent pair: the state at T
    estimate = "" if error is None else (f"; estimated relative latent error max {float(error.max()):.2e} "
                                         f"({estimate_nfe} more NFE)")
    print(f"encoded {len(x)} examples of {what} with {args.sampler} (t_min {t_min:g}): NFE {nfe}, "
          f"{seconds:.2f} s{on_ranks()}; mean latent norm / sqrt(D) "
          f"{float(first.flatten(1).norm(dim=1).mean()) / first[0].numel() ** 0.5:.3f} (about 1 for "
          f"N(0, I)){estimate}; wrote {out} and {_sidecar(out)}")
    return 0


def cmd_decode(args) -> int:
    import json

    import numpy as np
    import torch

    from ..ode import decode
    from ..samplers import paired

    out = output_file(args.out, (".png", ".npy"))
    device = init_distributed(resolve_device(args.device))
    model, config = load_checkpoint_model(args.checkpoint, device)
    path = Path(args.input)
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise FileNotFoundError(f"--input {args.input!r} must be a latents .npy file written by "
                                "`sdediff encode`")
    try:
        z = torch.from_numpy(np.load(path, allow_pickle=False)).float()
    except (OSError, ValueError) as err:
        raise InputValueError(f"cannot read {args.input!r} as a .npy array: {err}") from err
    # the encoder's settings, so that decoding inverts it (same t_min); flags override them
    meta = {}
    if _sidecar(path).is_file():
        try:
            meta = json.loads(_sidecar(path).read_text())
        except ValueError as err:
            raise InputValueError(f"{str(_sidecar(path))!r} (how the latents were encoded) is not valid "
                                  f"JSON ({err}); restore it or delete it and pass --sampler, --steps "
                                  "and --t-min as they were encoded") from err

    if args.sampler is not None:   # another solver than the encoder's: none of its settings
        meta = {k: v for k, v in meta.items() if k not in ("sampler", "steps", "options")}
    sampler = args.sampler or meta.get("sampler", "ode")
    shape = tuple(config["data"]["shape"])
    if sampler in paired():        # the latent pair (N, 2, ...) of an exactly invertible encoder
        shape = (2, *shape)
    if z.dim() < 2 or tuple(z.shape[1:]) != shape:
        raise InputValueError(f"latents in {args.input!r} have shape {tuple(z.shape)}; the checkpoint "
                              f"with sampler {sampler!r} needs (N, {', '.join(map(str, shape))})")
    steps = args.steps if args.steps is not None else meta.get("steps")
    options = {**meta.get("options", {}), **_solver_options(args)}
    t_min = args.t_min if args.t_min is not None else meta.get("t_min", model.sde.t_min)
    if not _sidecar(path).is_file() and rank_world()[0] == 0:
        import sys

        print(f"note: no {str(_sidecar(path))!r} beside the latents: decoding with the flags given "
              "and the defaults, which invert `sdediff encode` only if it ran with them too",
              file=sys.stderr)
    x, nfe, seconds, _, _ = _transport_all(decode, model, z, args, options, t_min, sampler, steps,
                                           device)
    if x is None:          # not rank 0: rank 0 writes
        return 0
    files = write_samples(x, out.with_suffix(".npy"), config["data"])
    message = (f"decoded {len(z)} latents with {sampler} (t_min {t_min:g}): NFE {nfe}, "
               f"{seconds:.2f} s{on_ranks()}")
    if meta.get("data") or meta.get("input"):
        try:
            original, _, _, _ = load_examples(meta.get("data"), meta.get("input"), meta.get("num"),
                                              config)
        except (ValueError, FileNotFoundError):
            original = None  # the encoded inputs are gone: no round-trip check
        if original is not None and original.shape == x.shape:
            rel = ((x - original).flatten(1).norm(dim=1) / original.flatten(1).norm(dim=1))
            message += (f"; round trip against the encoded inputs: relative error max "
                        f"{float(rel.max()):.2e}, mean {float(rel.mean()):.2e}")
    print(f"{message}; wrote {', '.join(str(f) for f in files)}")
    return 0


def cmd_likelihood(args) -> int:
    import math

    import numpy as np
    import torch

    from ..ode import bits_per_dim, dequantization_offset, dequantize, log_likelihood

    if args.out:
        output_file(args.out, (".npy",))
    device = init_distributed(resolve_device(args.device))
    model, config = load_checkpoint_model(args.checkpoint, device)
    x, what, n_levels, data_range = load_examples(args.data, args.input, args.num, config)
    if args.n_levels is not None:
        n_levels = args.n_levels
    seeds = SampleSeeds(args.seed)   # example i's dequantization and probes from (seed, i)
    options = _solver_options(args)
    t_min = model.sde.t_min if args.t_min is None else args.t_min
    hutchinson = args.divergence == "hutchinson"
    parts, nfe, seconds, estimate_nfe = [], 0, 0.0, 0
    for start, batch in _my_batches(x, args.batch_size):
        if n_levels is not None and not args.no_dequantize:
            batch = dequantize(batch, n_levels, data_range, generator=seeds.shifted(start))
        r = log_likelihood(model, batch.to(device), divergence=args.divergence,
                           generator=seeds.shifted(start), probes=args.probes, noise=args.noise,
                           t_min=t_min, sampler=args.sampler, steps=args.steps, return_info=True,
                           progress=rank_world()[0] == 0 and not args.no_progress, **options)
        nan = torch.full_like(r.nll, float("nan"))
        stderr = nan if r.stderr is None else r.stderr
        error = nan if r.error_estimate is None else r.error_estimate
        parts.append((start, torch.stack([r.nll, stderr, error], 1)))
        nfe, seconds, estimate_nfe = nfe + r.nfe, seconds + r.seconds, estimate_nfe + r.estimate_nfe
        probes = r.probes
    gathered = gather(parts)
    if gathered is None:   # not rank 0: rank 0 reports
        return 0
    nll, var, error = gathered[:, 0].double(), gathered[:, 1].double() ** 2, gathered[:, 2].double()
    N, D = len(nll), x[0].numel()
    mean = float(nll.mean())
    se = float(nll.std() / math.sqrt(N)) if N > 1 else float("nan")
    probes = f", {probes} {args.noise or 'rademacher'} probe{'s' if probes > 1 else ''}" \
        if hutchinson else ""
    lines = [f"likelihood of {N} examples of {what} ({args.divergence} divergence{probes}, "
             f"t_min {t_min:g}): NFE {nfe}, {seconds / N:.3g} s per example{on_ranks()}",
             f"  NLL {mean:.4f} +- {se:.3g} nats (standard error over examples), "
             f"{mean / D:.5f} nats/dim"]
    if hutchinson and not bool(var.isnan().any()):
        estimator = float(var.sum().sqrt() / N)
        lines.append(f"  Hutchinson estimator standard error of the mean NLL: {estimator:.3g} nats")
    if not bool(error.isnan().all()):
        bits = error / (D * math.log(2))
        lines.append(f"  estimated solver error (Richardson against half the steps, {estimate_nfe} more "
                     f"NFE): mean {float(bits.mean()):.2g}, max {float(bits.max()):.2g} bits/dim")
    if n_levels is not None:
        offset = dequantization_offset(n_levels, data_range)
        note = "dequantized" if not args.no_dequantize else "NOT dequantized: a meaningless bound"
        lines.append(f"  {bits_per_dim(mean, D, n_levels=n_levels, data_range=data_range):.4f} "
                     f"+- {se / (D * math.log(2)):.3g} bits/dim ({n_levels} levels over "
                     f"[{data_range[0]:g}, {data_range[1]:g}], {note}: offset "
                     f"{offset:+.4f})")
    else:
        lines.append("  continuous data (no number of levels): no bits/dim; pass --n-levels for "
                     "discrete data")
    if args.out:
        out = output_file(args.out, (".npy",))
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, nll.numpy())
        lines.append(f"  wrote the per-example NLL (nats) to {out}")
    print("\n".join(lines))
    return 0


def cmd_interpolate(args) -> int:
    import numpy as np

    from ..checks import check_int
    from ..ode import interpolate
    from ..plotting import plot_trajectories, save_image_grid

    out = output_file(args.out, (".png", ".npy")).with_suffix(".png")
    device = resolve_device(args.device)
    model, config = load_checkpoint_model(args.checkpoint, device)
    x, what, _, _ = load_examples(args.data, args.input, None, config)
    pairs = args.pair or [[0, 1]]
    for i, j in pairs:
        for k in (i, j):
            check_int("--pair index", k, minimum=0, maximum=len(x) - 1)
    check_int("--num-steps", args.num_steps, minimum=2)
    a, b = x[[i for i, _ in pairs]], x[[j for _, j in pairs]]
    t_min = model.sde.t_min if args.t_min is None else args.t_min
    path = interpolate(model, a.to(device), b.to(device), args.num_steps, sampler=args.sampler,
                       steps=args.steps, t_min=t_min, progress=not args.no_progress,
                       **_solver_options(args)).cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_suffix(".npy"), path.cpu().numpy())
    if config["data"].get("kind") == "images":
        save_image_grid(path.reshape(-1, *path.shape[2:]), out, nrow=args.num_steps,
                        data_range=tuple(config["data"].get("data_range", (-1, 1))))
    else:
        # one path per pair: (P, num_steps, D) -> (num_steps, P, 2), endpoints marked
        plot_trajectories(path[..., :2].transpose(0, 1), x[:, :2], out, n_paths=len(pairs),
                          labels=("start (example i)", "end (example j)"),
                          title=f"latent interpolation of {what}: {len(pairs)} pair(s)")
    print(f"interpolated {len(pairs)} pair(s) of {what} in {args.num_steps} steps (slerp of the "
          f"latents, decoded); wrote {out} and {out.with_suffix('.npy')}")
    return 0


def _add_input_arguments(p, num: bool = True) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--input", help="a .npy file or a folder of images (all examples, in order)")
    p.add_argument("--data", help="a data set name (its held-out split), e.g. digits, gmm")
    if num:
        p.add_argument("--num", type=int, help="only the first N examples")


def _add_solver_arguments(p, sampler: bool = True, sampler_default: str | None = "ode",
                          sampler_help: str | None = None) -> None:
    if sampler:
        from ..samplers import reversible

        fast = ", ".join(name for name in reversible() if name != "ode")
        default = ("the encoder's, from its .json" if sampler_default is None
                   else sampler_default)
        p.add_argument("--sampler", default=sampler_default, help=sampler_help or (
            f"'ode' (torchdiffeq) or a reversible fixed-step sampler ({fast}); default: {default}"))
    p.add_argument("--steps", type=int, help="steps of a fixed-step method or sampler")
    p.add_argument("--method", help="torchdiffeq method for the ode solver (default dopri5)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default 1e-5)")
    p.add_argument("--t-min", type=float, help="data end of the ODE (default the process's t_min: "
                   "1e-5 as Song et al.; 1/M for a diffusers model, its first index)")
    p.add_argument("--batch-size", type=int, default=ODE_BATCH_SIZE,
                   help="examples per solve (adaptive steps are shared within a batch)")
    add_device_argument(p)
    if sampler:
        p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                       help="solver option, e.g. -o schedule=logsnr")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parsers(sub) -> None:
    """``encode``, ``decode``, ``likelihood``, ``interpolate`` (:mod:`sdediff.ode`)."""
    p = sub.add_parser("encode", help="encode data to latents through the probability-flow ODE")
    _add_input_arguments(p)
    p.add_argument("--out", default=f"{OUTPUT_DIR}/latents.npy", help="latents .npy (a .json beside records "
                   "t_min and the solver, so that `sdediff decode` inverts it)")
    _add_solver_arguments(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode latents back to data (the inverse of encode)")
    add_checkpoint_argument(p)
    p.add_argument("--input", required=True, help="latents .npy written by `sdediff encode`")
    p.add_argument("--out", default=f"{OUTPUT_DIR}/decoded.png", help="PNG (and .npy beside)")
    _add_solver_arguments(p, sampler_default=None)  # default: the encoder's, from its .json
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("likelihood", help="exact NLL (nats, bits/dim) by the probability-flow ODE")
    _add_input_arguments(p)
    p.add_argument("--divergence", default="hutchinson", choices=("exact", "hutchinson"),
                   help="exact trace (D products per call: small D) or Hutchinson's estimate")
    p.add_argument("--probes", type=int, help="Hutchinson probes per example (default 1)")
    p.add_argument("--noise", choices=("rademacher", "gaussian"),
                   help="Hutchinson probe distribution (default rademacher)")
    p.add_argument("--seed", type=int, default=0, help="seeds the dequantization and the probes")
    p.add_argument("--n-levels", type=int, help="levels per dimension of discrete data (default: "
                   "the data's own, e.g. 17 for digits, 256 for 8-bit images)")
    p.add_argument("--no-dequantize", action="store_true",
                   help="evaluate discrete data as they are (bits/dim is then not a valid bound)")
    p.add_argument("--out", help="write the per-example NLL in nats to this .npy")
    _add_solver_arguments(p, sampler_default=None, sampler_help=(
        "default: dpm_solver++ (order 3, logsnr, 19 steps: 20 calls; --method or --rtol/--atol "
        "select 'ode'); any one-call-per-step reversible sampler, or 'ode' (torchdiffeq)"))
    p.set_defaults(func=cmd_likelihood)

    p = sub.add_parser("interpolate", help="decoded spherical interpolation between two latents")
    _add_input_arguments(p, num=False)
    p.add_argument("--pair", type=int, nargs=2, action="append", metavar=("I", "J"),
                   help="indices of the two examples (repeatable; default 0 1)")
    p.add_argument("--num-steps", type=int, default=8, help="points along the path, endpoints "
                   "included")
    p.add_argument("--out", default=f"{OUTPUT_DIR}/interpolation.png", help="PNG strip (and .npy beside)")
    _add_solver_arguments(p, sampler_default="bdia")
    p.set_defaults(func=cmd_interpolate)

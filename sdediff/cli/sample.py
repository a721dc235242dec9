"""``sdediff samplers`` (the registry as a table) and ``sdediff sample`` (from a checkpoint)."""

from __future__ import annotations

from .common import (
    OUTPUT_DIR,
    add_checkpoint_argument,
    add_compile_argument,
    add_device_argument,
    format_table,
    load_checkpoint_model,
    on_ranks,
    output_file,
    parse_options,
    resolve_device,
    write_samples,
)


def sampler_rows() -> list[dict]:
    """One row per registered sampler, read from its declared metadata."""
    from .. import samplers

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
                     "reversible": "yes" if sampler.reversible else "no",
                     "order": f"{sampler.order:g}", "nfe_per_step": nfe,
                     "options": ", ".join(f"{k}={v}" for k, v in sampler.defaults.items())})
    return rows


SAMPLER_COLUMNS = ["name", "family", "deterministic", "reversible", "order", "nfe_per_step",
                   "options"]


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


#: Samples per batch of ``sdediff sample`` (and the unit of work of a rank under torchrun).
SAMPLE_BATCH_SIZE = 64


def cmd_sample(args) -> int:
    """``sdediff sample``: sample ``i`` from ``SampleSeeds(--seed)``'s stream ``i``, in batches
    of ``--batch-size``; under torchrun the batches are shared out and rank 0 writes."""
    from .. import samplers
    from ..checks import check_int
    from ..data import load_dataset
    from ..distributed import gather, init_distributed, my_batches, rank_world
    from ..streams import SampleSeeds

    check_int("--num", args.num, minimum=1)
    check_int("--seed", args.seed, minimum=0)
    out = output_file(args.out, (".npy", ".pt"))
    device = init_distributed(resolve_device(args.device))
    rank = rank_world()[0]
    model, config = load_checkpoint_model(args.checkpoint, device)
    if args.compile:
        model = model.compiled()
    model = conditioned(model, args)
    options = parse_options(args.option)
    samplers.get(args.sampler, **options)  # unknown names and options fail before any work
    seeds = SampleSeeds(args.seed)
    parts, nfe, seconds = [], 0, 0.0
    for start, stop in my_batches(args.num, args.batch_size):
        result = samplers.sample(model, shape=(stop - start, *config["data"]["shape"]),
                                 sampler=args.sampler, steps=args.steps,
                                 generator=seeds.shifted(start), return_info=True, device=device,
                                 progress=rank == 0 and not args.no_progress, **options)
        parts.append((start, result.x))
        nfe, evaluations = result.nfe, result.evaluations
        seconds += result.seconds
    x = gather(parts)
    if x is None:          # not rank 0: rank 0 writes
        return 0
    data = None
    if config["data"].get("kind") == "points":
        try:
            data = load_dataset(config["data"]["name"]).test
        except (ValueError, FileNotFoundError):
            data = None  # the training data is gone: plot the samples alone
    files = write_samples(x, out, config["data"], data)
    guided = "" if evaluations == nfe else f" ({evaluations} network evaluations per sample)"
    which = "" if args.class_ is None else f" of class {args.class_} (guidance {args.guidance:g})"
    print(f"{args.sampler}: {args.num} samples{which}, NFE {nfe} per sample{guided}, {seconds:.2f} s"
          f"{on_ranks()}; wrote {', '.join(str(f) for f in files)}")
    return 0


def conditioned(model, args):
    """``model`` at ``--class`` with classifier-free guidance ``--guidance`` (unchanged without
    ``--class``); a guidance without a class, or a class the model lacks, is a one-line error."""
    from ..checks import InputValueError

    if args.class_ is None:
        if args.guidance is not None:
            raise InputValueError(f"--guidance {args.guidance:g} needs --class (the class to guide "
                                  "towards)")
        return model
    if model.num_classes is None:
        raise InputValueError(f"--class {args.class_} given, but the checkpoint's model is unconditional; "
                              "train one with sdediff train --conditional")
    return model.condition(args.class_, guidance=0.0 if args.guidance is None else args.guidance)


def add_class_arguments(p) -> None:
    p.add_argument("--class", dest="class_", type=int, metavar="C",
                   help="sample class C of a conditional model (0 .. num_classes - 1; the bundled "
                        "digits model: the digit)")
    p.add_argument("--guidance", type=float, metavar="W",
                   help="classifier-free guidance weight w >= 0: (1 + w) eps(x, t, C) - w eps(x, t, "
                        "null), one forward pass of 2B (default 0: the conditional model)")


def add_parsers(sub) -> None:
    p = sub.add_parser("samplers", help="list the registered samplers")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (docs)")
    p.set_defaults(func=cmd_samplers)

    p = sub.add_parser("sample", help="generate samples from a checkpoint")
    add_checkpoint_argument(p)
    from ..samplers import DEFAULT_SAMPLER, available

    p.add_argument("--sampler", default=DEFAULT_SAMPLER,
                   help=f"one of {', '.join(available())} (default {DEFAULT_SAMPLER}, chosen by "
                   "benchmarks/bench_defaults.py; `sdediff samplers` lists their orders and options)")
    p.add_argument("--steps", type=int, help="steps (default per sampler)")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="sample i depends only on (seed, i)")
    p.add_argument("--batch-size", type=int, default=SAMPLE_BATCH_SIZE,
                   help=f"samples per batch (default {SAMPLE_BATCH_SIZE}; bounds memory, and is "
                        "the unit of work of a rank under torchrun)")
    p.add_argument("--out", default=f"{OUTPUT_DIR}/samples.npy", help=".npy or .pt; a .png is written beside")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler option, e.g. -o eta=0.5 -o schedule=logsnr")
    add_class_arguments(p)
    add_device_argument(p)
    add_compile_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sample)

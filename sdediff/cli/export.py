"""``sdediff export``: a run trained with ``--model diffusers-unet`` as a diffusers pipeline folder."""

from __future__ import annotations

from pathlib import Path


def cmd_export(args) -> int:
    from ..checkpoint import load_model
    from ..export import check_out_folder, export_pipeline

    check_out_folder(Path(args.out))             # refuse before the weights are read
    model, config = load_model(args.run)         # the EMA weights, as sampling uses them
    out = export_pipeline(model, args.out)
    net = model.net
    n_params = sum(p.numel() for p in net.parameters())
    print(f"exported {args.run} (step {config.get('step', 'n/a')}, {n_params:,} parameters, "
          f"{model.sde!r}, prediction {model.prediction}) as a diffusers DDPMPipeline: {out}")
    low, high = config.get("data", {}).get("data_range", (-1.0, 1.0))
    if (low, high) != (-1.0, 1.0):
        # diffusers' pipelines turn [-1, 1] into [0, 1] images; say so where it does not hold
        print(f"note: the run's data lie in [{low:g}, {high:g}], but DDPMPipeline maps [-1, 1] to "
              "[0, 1] on output; use output_type='pt' or 'np' and rescale")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run trained with --model diffusers-unet as a "
                       "diffusers pipeline folder (DDPMPipeline.from_pretrained loads it)")
    p.add_argument("run", help="run directory or checkpoint folder (its EMA weights are exported)")
    p.add_argument("out", help="pipeline folder to write: new or empty (never overwritten)")
    p.set_defaults(func=cmd_export)

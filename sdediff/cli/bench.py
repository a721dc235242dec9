"""``sdediff bench``: samplers x NFE budgets against exact answers (:mod:`sdediff.bench`)."""

from __future__ import annotations

import sys


def cmd_bench(args) -> int:
    import torch

    from ..bench import run_bench, summary_lines
    from ..checks import check_int

    torch.set_num_threads(check_int("--threads", args.threads, minimum=1))
    command = "sdediff bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    result = run_bench(args.problem, samplers=args.samplers, nfe=args.nfe, tolerances=args.tols,
                       num=args.num, checkpoint=args.checkpoint, out=args.out, seed=args.seed,
                       progress=not args.no_progress, command=command)
    for note in result.notes:
        print(f"note: {note}")
    print("\n".join(summary_lines(result)))
    print(f"{len(result.rows)} rows in {result.meta['seconds']:.1f} s; wrote "
          f"{', '.join(str(f) for f in result.files)}")
    return 0


def add_parser(sub) -> None:
    """``bench``: samplers x NFE budgets against exact answers (:mod:`sdediff.bench`)."""
    p = sub.add_parser("bench", help="benchmark samplers by NFE budget (CSV, JSON, Markdown, "
                       "plots)")
    p.add_argument("--problem", required=True, help="gmm2d, gmm64 (exact mixtures) or digits "
                   "(a digits model: --checkpoint, default the bundled one)")
    p.add_argument("--samplers", default="all", help="all, sdediff, peers (the diffusers "
                   "schedulers) or comma-separated names (default all; digits: a small set)")
    p.add_argument("--nfe", help="comma-separated NFE budgets (default 5,10,20,50,100,200,1000; "
                   "digits: 10,20,50)")
    from ..samplers import available, get

    adaptive = ", ".join(name for name in available() if get(name).adaptive)
    p.add_argument("--tols", default="1e-2,1e-3,1e-4", help="rtol = atol of the adaptive "
                   f"samplers ({adaptive})")
    p.add_argument("--checkpoint", help="run directory or checkpoint folder (problem digits; "
                   "default: the bundled digits model)")
    p.add_argument("--out", default="bench", help="output folder (default ./bench)")
    p.add_argument("--num", type=int, help="samples per run (default 2000; digits 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the "
                   "mixtures' tensors are small, and timings are steadier)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)

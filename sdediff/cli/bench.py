"""``sdediff bench``: samplers x NFE budgets against exact answers (:mod:`sdediff.bench`), or,
with ``--checkpoint PATH`` alone (problem ``model``), on any model against a tight
probability-flow reference (:mod:`sdediff.bench.model`)."""

from __future__ import annotations

import sys

from .common import OUTPUT_DIR, add_device_argument, resolve_device

#: What to give when neither --problem nor --checkpoint is.
NO_PROBLEM = ("give --problem (gmm2d, gmm64, digits, model) or --checkpoint PATH (any model: a run "
              "directory, checkpoint folder or diffusers pipeline folder)")


def _problem(args) -> str:
    """``--problem``, or ``model`` when only ``--checkpoint`` is given."""
    from ..bench import MODEL_PROBLEM
    from ..checks import InputValueError

    if args.problem is not None:
        return args.problem
    if args.checkpoint is None:
        raise InputValueError(NO_PROBLEM)
    return MODEL_PROBLEM


def cmd_bench(args) -> int:
    import torch

    from ..bench import MODEL_PROBLEM, run_bench, summary_lines
    from ..checks import check_int
    from ..distributed import init_distributed

    torch.set_num_threads(check_int("--threads", args.threads, minimum=1))
    command = "sdediff bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    problem = _problem(args)
    device = init_distributed(resolve_device(args.device))   # torchrun: the runs shared out
    if args.device is None and problem not in ("digits", MODEL_PROBLEM):
        device = None          # the exact mixtures run on the CPU; say so only when asked
    result = run_bench(problem, samplers=args.samplers, nfe=args.nfe,
                       tolerances=args.tols, num=args.num, checkpoint=args.checkpoint,
                       out=args.out, seed=args.seed, progress=not args.no_progress,
                       command=command, reference_tol=args.ref_tol, dtype=args.dtype,
                       device=device)
    if result is None:         # not rank 0: rank 0 writes
        return 0
    for note in result.notes:
        print(f"note: {note}")
    print("\n".join(summary_lines(result)))
    print(f"{len(result.rows)} rows in {result.meta['seconds']:.1f} s; wrote "
          f"{', '.join(str(f) for f in result.files)}")
    return 0


def add_parser(sub) -> None:
    """``bench``: samplers x NFE budgets against exact answers (:mod:`sdediff.bench`)."""
    p = sub.add_parser("bench", help="benchmark samplers by NFE budget (CSV, JSON, Markdown, "
                       "plots); --checkpoint PATH alone: on any model")
    p.add_argument("--problem", help="gmm2d, gmm64 (exact mixtures), digits (a digits model: "
                   "--checkpoint, default the bundled one) or model (any model: --checkpoint, "
                   "against a tight probability-flow reference; the default when only "
                   "--checkpoint is given)")
    p.add_argument("--samplers", default="all", help="all, sdediff, peers (the diffusers "
                   "schedulers and the k-diffusion samplers), diffusers, kdiff (k-diffusion's "
                   "samplers on each of its grids: kdiff:euler, kdiff:heun, kdiff:dpm_2, kdiff:lms, "
                   "kdiff:dpmpp_2m, kdiff:dpmpp_3m_sde, kdiff:dpm_fast, kdiff:dpm_adaptive; the "
                   "mixtures only) or comma-separated names (default all; digits: a small set; "
                   "model: stochastic samplers are skipped)")
    p.add_argument("--nfe", help="comma-separated NFE budgets (default 5,10,20,50,100,200,1000; "
                   "digits: 10,20,50; model: 5,10,20,50)")
    from ..samplers import available, get

    adaptive = ", ".join(name for name in available() if get(name).adaptive)
    p.add_argument("--tols", default="1e-2,1e-3,1e-4", help="rtol = atol of the adaptive "
                   f"samplers ({adaptive}, kdiff:dpm_adaptive; default 1e-2,1e-3,1e-4; "
                   "adaptive_sde runs at 0.1,0.05,0.02)")
    p.add_argument("--checkpoint", help="run directory, checkpoint folder or diffusers pipeline "
                   "folder (problems model and digits; default: the bundled digits model)")
    p.add_argument("--ref-tol", type=float, help="problem model: rtol = atol of the reference "
                   "probability-flow solve (default 1e-7; its self-check runs at 10x)")
    p.add_argument("--dtype", default="float64", help="problem model: the network's and the "
                   "samples' dtype, float64 (default: float32 rounding, which the flow can "
                   "amplify, would mask the solvers' errors) or float32 (as deployed)")
    p.add_argument("--out", default=f"{OUTPUT_DIR}/bench", help="output folder")
    p.add_argument("--num", type=int, help="samples per run (default 2000; digits 500; model 16)")
    p.add_argument("--seed", type=int, default=0, help="seeds the prior draws and noise")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the "
                   "mixtures' tensors are small, and timings are steadier; a large model gains "
                   "from more)")
    add_device_argument(p)   # digits and model problems; the exact mixtures run on the CPU
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)

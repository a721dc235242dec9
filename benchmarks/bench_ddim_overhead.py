"""Per-step overhead of sdediff's fast samplers against diffusers' schedulers, and of the score
interface itself.

With a near-free model (``eps = 0.1 x`` on a batch of 256 x 2, one torch thread) the time per
step is the sampler's own overhead: coefficient arithmetic, bookkeeping, the model interface and
the tensor updates. Each row times a whole sampling run (grid and coefficients included, as
diffusers' ``set_timesteps`` is) and divides by the steps; the two sides of a row alternate
within every repeat and each keeps its best. The clock is this process's CPU time: with one
thread it is the wall time of an idle machine, and other processes sharing the cores (a test
suite on a 2-core box) do not enter it; the best wall-clock times are kept too (``wall_us``).

==================  ==============================================================  ==========
sdediff             against                                                         target
==================  ==============================================================  ==========
``ddim``            diffusers ``DDIMScheduler``                                     <= 0.5x
``dpm_solver++``    diffusers ``DPMSolverMultistepScheduler`` (``solver_order=2``,  <= 0.5x
(order 2)           ``algorithm_type="dpmsolver++"``)
``unipc``           diffusers ``UniPCMultistepScheduler`` (``solver_order=2``, bh2)  <= 0.5x
(order 2, bh2)
``ddim`` through    ``ddim`` with the eps network: what the interface's             <= 1.5x
``from_fn``         score -> eps conversion costs
==================  ==============================================================  ==========

diffusers runs on Ho et al.'s linear betas 1e-4 .. 0.02 over 1000 training steps, sdediff on
``VPSDE()``, whose chain these are. The ``from_fn`` row's score function is
``score = -0.1 x / sigma(t)``, the same model as ``eps = 0.1 x``; it looks ``sigma(t)`` up in a
table it fills on first sight of a time, so that it costs what the eps network does and the
ratio is the interface's conversion alone. diffusers is an optional extra
(``pip install diffusers``); without it only the ``from_fn`` row has a reference.

    python benchmarks/bench_ddim_overhead.py [--steps 50 100 200] [--repeats 20] [--out PATH]
    python benchmarks/bench_ddim_overhead.py --quick     # a smoke run: 3 repeats, 50 steps

Prints one row per sampler and step count (CPU microseconds per step, the ratio and its target) and
writes benchmarks/results/ddim_overhead.json with the conditions of the run (torch threads, load
average before and after, versions). ``--quick`` figures are too noisy to keep: it writes no file
unless ``--out`` is given, so the committed results are never overwritten by a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sdediff as sd

BATCH, DIM = 256, 2
RESULTS = Path(__file__).parent / "results" / "ddim_overhead.json"
#: Linear betas of Ho et al. (``VPSDE()``'s chain at N = 1000), for every diffusers scheduler.
DIFFUSERS_BETAS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                   "beta_schedule": "linear"}
#: Ratio targets: the sampler against diffusers, ``from_fn`` against the eps network.
TARGET_VS_DIFFUSERS = 0.5
TARGET_FROM_FN = 1.5
QUICK_REPEATS, QUICK_STEPS = 3, [50]


def near_free(x, t):
    """``eps = 0.1 x``: one elementwise product, so a step's time is the sampler's overhead."""
    return 0.1 * x


def near_free_score(sde) -> Callable:
    """``score = -0.1 x / sigma(t)``, the score of :func:`near_free`, with ``sigma`` looked up per
    time (the network receives one time for the whole batch) in a table filled on first sight."""
    sigma_of = {}

    def score_fn(x, t):
        key = float(t[0])
        if key not in sigma_of:
            sigma_of[key] = float(sde.alpha_sigma(torch.tensor(key, dtype=torch.float64))[1])
        return x * (-0.1 / sigma_of[key])

    return score_fn


def sdediff_run(model: sd.ScoreModel, sampler: str, steps: int, x_T: torch.Tensor) -> Callable:
    return lambda: sd.sample(model, x_T=x_T, sampler=sampler, steps=steps, denoise=False)


def diffusers_run(scheduler, steps: int, x_T: torch.Tensor) -> Callable:
    """diffusers' documented loop: ``set_timesteps``, then one ``step`` per timestep."""

    def run():
        scheduler.set_timesteps(steps)
        x = x_T
        for t in scheduler.timesteps:
            x = scheduler.step(near_free(x, t), t, x).prev_sample
        return x

    return run


def diffusers_schedulers() -> dict | None:
    """The three peers, configured as the module docstring says; ``None`` without diffusers."""
    try:
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
    except ImportError:
        return None
    return {
        "ddim": DDIMScheduler(**DIFFUSERS_BETAS, clip_sample=False, set_alpha_to_one=False),
        "dpm_solver++": DPMSolverMultistepScheduler(**DIFFUSERS_BETAS, solver_order=2,
                                                    algorithm_type="dpmsolver++"),
        "unipc": UniPCMultistepScheduler(**DIFFUSERS_BETAS, solver_order=2, solver_type="bh2"),
    }


def best_per_step(runs: list[Callable], steps: int, repeats: int) -> list[dict]:
    """Best time of each run over ``repeats`` rounds, in seconds per step, on two clocks: this
    process's CPU time (``time.process_time``; the figure reported: with one thread it is the
    wall time of an idle machine, and other processes' load does not enter it) and the wall
    clock. Within a round the runs alternate, so a passing load slows both sides alike."""
    for run in runs:                 # warm-up: first-call checks, lazy imports, allocator
        run()
    best = [{"cpu": float("inf"), "wall": float("inf")} for _ in runs]
    for _ in range(repeats):
        for k, run in enumerate(runs):
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            best[k] = {"cpu": min(best[k]["cpu"], cpu), "wall": min(best[k]["wall"], wall)}
    return [{clock: b[clock] / steps for clock in b} for b in best]


def machine(threads: int) -> dict:
    """What the figures depend on: threads, load, versions, processor."""
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = None
    return {"torch_threads": threads, "cpu_count": os.cpu_count(),
            "loadavg_before": list(os.getloadavg()), "torch": torch.__version__,
            "diffusers": diffusers_version, "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_REPEATS} repeats at {QUICK_STEPS} steps; writes "
                             "no file unless --out is given")
    parser.add_argument("--out", default=None,
                        help=f"JSON output (default {RESULTS}; none with --quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps = QUICK_REPEATS, QUICK_STEPS
    out = args.out if args.out is not None else (None if args.quick else str(RESULTS))
    threads = 1
    torch.set_num_threads(threads)   # overhead, not BLAS: one thread makes the figures repeatable
    info = machine(threads)
    x_T = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(0))
    sde = sd.VPSDE()
    eps_model = sd.ScoreModel(near_free, sde, prediction="eps")
    score_model = sd.ScoreModel.from_fn(near_free_score(sde), sde)
    peers = diffusers_schedulers()
    rows = []
    print(f"Per-step CPU time, near-free model, batch {BATCH} x {DIM}, {threads} thread, "
          f"best of {args.repeats}; load average {info['loadavg_before'][0]:.2f}")
    print(f"{'sdediff':>16} {'against':>12} {'steps':>6} {'sdediff us':>11} {'against us':>11} "
          f"{'ratio':>6} {'target':>7}")
    for sampler in ("ddim", "dpm_solver++", "unipc", "from_fn"):
        for steps in args.steps:
            if sampler == "from_fn":
                against, target = "ddim eps net", TARGET_FROM_FN
                runs = [sdediff_run(score_model, "ddim", steps, x_T),
                        sdediff_run(eps_model, "ddim", steps, x_T)]
            else:
                against, target = "diffusers", TARGET_VS_DIFFUSERS
                runs = [sdediff_run(eps_model, sampler, steps, x_T)]
                if peers is not None:
                    runs.append(diffusers_run(peers[sampler], steps, x_T))
            times = best_per_step(runs, steps, args.repeats)
            ours = times[0]["cpu"]
            theirs = times[1]["cpu"] if len(times) > 1 else None
            ratio = None if theirs is None else ours / theirs
            rows.append({"sampler": "ddim (from_fn)" if sampler == "from_fn" else sampler,
                         "against": against, "steps": steps, "sdediff_us": ours * 1e6,
                         "against_us": None if theirs is None else theirs * 1e6,
                         "ratio": ratio, "target": target,
                         "meets_target": None if ratio is None else ratio <= target,
                         "wall_us": [t["wall"] * 1e6 for t in times]})
            print(f"{rows[-1]['sampler']:>16} {against:>12} {steps:>6} {ours * 1e6:>11.1f} "
                  f"{'n/a' if theirs is None else f'{theirs * 1e6:.1f}':>11} "
                  f"{'n/a' if ratio is None else f'{ratio:.2f}':>6} {f'<= {target}':>7}")
    if peers is None:
        print("diffusers is not installed (pip install diffusers): no reference for the samplers")
    info["loadavg_after"] = list(os.getloadavg())
    result = {"batch": [BATCH, DIM], "repeats": args.repeats, "clock": "process CPU time",
              "conditions": info, "rows": rows}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""Per-step overhead of the DDIM loop: sdediff's `ddim` against diffusers' `DDIMScheduler.step`.

With a near-free model (``eps = 0.1 x`` on a batch of 256 x 2) the time per step is the sampler's
own overhead: coefficient arithmetic, bookkeeping and tensor updates. Both loops take the same
linear-VP betas (1e-4 .. 0.02) and return eps predictions directly. diffusers is an optional extra
(`pip install diffusers`); without it only sdediff's figure is printed.

    python benchmarks/bench_ddim_overhead.py [--steps 50 100 200] [--repeats 20]

Prints one row per step count (microseconds per step and the ratio) and writes
benchmarks/results/ddim_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import sdediff as sd

BATCH, DIM = 256, 2


def near_free(x, t):
    return 0.1 * x


def time_sdediff(steps: int, repeats: int, x_T: torch.Tensor) -> float:
    model = sd.ScoreModel(near_free, sd.VPSDE(), prediction="eps")
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sd.sample(model, x_T=x_T, sampler="ddim", steps=steps, denoise=False)
        best = min(best, time.perf_counter() - start)
    return best / steps


def time_diffusers(steps: int, repeats: int, x_T: torch.Tensor) -> float | None:
    try:
        from diffusers import DDIMScheduler
    except ImportError:
        return None
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear", clip_sample=False, set_alpha_to_one=False)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        scheduler.set_timesteps(steps)
        x = x_T
        for t in scheduler.timesteps:
            x = scheduler.step(near_free(x, t), t, x).prev_sample
        best = min(best, time.perf_counter() - start)
    return best / steps


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ddim_overhead.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # overhead, not BLAS: one thread makes the figures repeatable
    x_T = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(0))
    rows = []
    print(f"DDIM per-step time, near-free model, batch {BATCH} x {DIM}, best of {args.repeats}")
    print(f"{'steps':>6} {'sdediff us':>11} {'diffusers us':>13} {'ratio':>7}")
    for steps in args.steps:
        ours = time_sdediff(steps, args.repeats, x_T)
        theirs = time_diffusers(steps, args.repeats, x_T)
        ratio = None if theirs is None else ours / theirs
        rows.append({"steps": steps, "sdediff_us": ours * 1e6,
                     "diffusers_us": None if theirs is None else theirs * 1e6, "ratio": ratio})
        print(f"{steps:>6} {ours * 1e6:>11.1f} "
              f"{'n/a' if theirs is None else f'{theirs * 1e6:.1f}':>13} "
              f"{'n/a' if ratio is None else f'{ratio:.2f}':>7}")
    if rows[0]["diffusers_us"] is None:
        print("diffusers is not installed (pip install diffusers): only sdediff was timed")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"batch": [BATCH, DIM], "rows": rows}, indent=2))
    return {"rows": rows}


if __name__ == "__main__":
    main()

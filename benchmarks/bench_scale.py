"""Throughput of training and sampling on 1 and 2 processes, with and without ``--compile``.

Every figure comes from the ``sdediff`` commands a user runs (``torchrun --nproc_per_node=P -m
sdediff -- ...`` for P = 2), on the bundled digits U-Net (8x8):

- training: ``sdediff train --data digits`` at a global batch of 64 (P ranks of 64 / P);
  examples/s in the steady state, from ``loss.csv``'s per-step clock (steps after the first
  ``WARM`` ones: compilation and allocator warm-up excluded);
- sampling: ``sdediff sample`` with ``ddim``, 20 steps, batches of 64; samples/s in the steady
  state from two runs of N1 and N2 samples (the difference of rank 0's sampler time: start-up
  and compilation excluded).

``--compile`` is measured on one process. Conditions (cores, threads, load average) are written
beside the table: on a shared machine the figures are what that machine gave, not a ceiling.

    python benchmarks/bench_scale.py           # writes benchmarks/results/scale.{md,json}
    python benchmarks/bench_scale.py --quick   # fewer steps; writes benchmarks/results/quick/
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
WARM = 5
SAMPLE_STEPS, SAMPLE_BATCH = 20, 64
GLOBAL_BATCH = 64


def command(processes: int, argv: list[str]) -> list[str]:
    """``python -m sdediff ARGV``, or under torchrun (``--`` ends torchrun's own options)."""
    if processes == 1:
        return [sys.executable, "-m", "sdediff", *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", "sdediff", "--", *argv]


def run(cmd: list[str]) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return done.stdout, time.perf_counter() - start


def train_throughput(processes: int, compile: bool, steps: int, work: Path) -> dict:
    out = work / f"train_p{processes}_c{int(compile)}"
    argv = ["train", "--data", "digits", "--steps", str(steps), "--batch-size",
            str(GLOBAL_BATCH // processes), "--checkpoint-every", str(steps), "--out", str(out),
            "--no-progress", *(["--compile"] if compile else [])]
    _, wall = run(command(processes, argv))
    with open(out / "loss.csv", newline="") as fh:
        clock = [float(row["seconds"]) for row in csv.DictReader(fh)]
    steady = (len(clock) - WARM) * GLOBAL_BATCH / (clock[-1] - clock[WARM - 1])
    return {"task": "train", "processes": processes, "compile": compile, "steps": steps,
            "global_batch": GLOBAL_BATCH, "per_second": steady,
            "first_steps_seconds": clock[WARM - 1], "wall_seconds": wall}


def sample_seconds(processes: int, compile: bool, num: int, work: Path) -> tuple[float, float]:
    argv = ["sample", "--num", str(num), "--steps", str(SAMPLE_STEPS), "--batch-size",
            str(SAMPLE_BATCH), "--out", str(work / f"s_{processes}_{compile}_{num}.npy"),
            "--no-progress", *(["--compile"] if compile else [])]
    out, wall = run(command(processes, argv))
    return float(re.search(r"NFE \d+ per sample, ([0-9.]+) s", out).group(1)), wall


def sample_throughput(processes: int, compile: bool, nums: tuple[int, int], work: Path) -> dict:
    (t1, _), (t2, wall) = (sample_seconds(processes, compile, n, work) for n in nums)
    return {"task": "sample", "processes": processes, "compile": compile, "steps": SAMPLE_STEPS,
            "global_batch": SAMPLE_BATCH, "per_second": (nums[1] - nums[0]) / (t2 - t1),
            "first_steps_seconds": t1, "wall_seconds": wall}


def conditions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "threads_single_process": torch.get_num_threads(),
            "threads_per_rank": int(os.environ.get("OMP_NUM_THREADS", "1")),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def markdown(rows: list[dict], before: dict, after: dict, quick: bool) -> str:
    lines = [f"# Throughput: 1 and 2 processes, with and without --compile{' (QUICK run)' if quick else ''}",
             "",
             "`python benchmarks/bench_scale.py`" + (" --quick" if quick else "") +
             f"; bundled digits U-Net (8x8); {before['machine']}, torch {before['torch']}; one "
             f"process uses {before['threads_single_process']} threads, each torchrun rank "
             f"{before['threads_per_rank']} (torchrun's default); load average "
             f"{before['load_average']} at the start, {after['load_average']} at the end "
             f"({before['date']}).",
             "",
             "| task | processes | --compile | steady state | first steps / first run (s) | "
             "command wall time (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        unit = "examples/s" if r["task"] == "train" else "samples/s"
        lines.append(f"| {r['task']} | {r['processes']} | {'yes' if r['compile'] else 'no'} | "
                     f"{r['per_second']:.0f} {unit} | {r['first_steps_seconds']:.1f} | "
                     f"{r['wall_seconds']:.1f} |")
    lines += ["", "Training: global batch 64 (2 ranks: 32 each), steady state after the first "
              f"{WARM} steps (`loss.csv`'s clock). Sampling: `ddim`, {SAMPLE_STEPS} steps, batches "
              f"of {SAMPLE_BATCH}; steady state from two runs (the difference of their sampler "
              "times); 'first run' is the shorter run's sampler time, compilation included."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps; writes results/quick/")
    args = parser.parse_args()
    steps, nums = (30, (64, 192)) if args.quick else (200, (128, 640))
    out = RESULTS / "quick" if args.quick else RESULTS
    before = conditions()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for processes, compile in ((1, False), (2, False), (1, True)):
            for measure in (train_throughput, sample_throughput):
                row = measure(processes, compile, steps if measure is train_throughput else nums,
                              work)
                print(f"{row['task']:6s} P={processes} compile={compile!s:5s}: "
                      f"{row['per_second']:.0f}/s", flush=True)
                rows.append(row)
    after = conditions()
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"rows": rows, "before": before, "after": after},
                                               indent=2))
    (out / "scale.md").write_text(markdown(rows, before, after, args.quick))
    print((out / "scale.md").read_text())


if __name__ == "__main__":
    main()

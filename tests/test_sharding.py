"""Sampling, encoding, likelihoods and the benchmark split across torchrun ranks.

Two gloo ranks are forked as torchrun would start them (``tests/test_distributed.py``'s
``run_ranks``), each running the ``sdediff`` command itself, and their one output (written by
rank 0) is compared with a single process's: bit for bit, since the ranks run the batches a single
process runs and every process here has one thread. The real ``torchrun`` runs the issue's
command once. Sample ``i`` does not depend on ``--batch-size`` (1, 7 or 64), to float rounding of
the network's kernels, which may differ with the batch size.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdediff.cli import main
from tests.test_distributed import WORLD, run_ranks

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE = ["sample", "--steps", "4", "--no-progress"]


def run_command(rank, argv, out: Path, die_before_gather=False):
    """One rank of ``sdediff ARGV``; its exit status and stderr go to ``out/rank{rank}.*``."""
    import contextlib
    import io

    if die_before_gather and rank == 1:
        import sdediff.distributed as distributed

        def die(*args, **kwargs):
            os._exit(0)   # as a killed rank: no goodbye to the group (status 0: the test
            #               launcher would stop every rank at a failed one)

        distributed.gather_objects = die
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    (out / f"rank{rank}.status").write_text(str(status))
    (out / f"rank{rank}.err").write_text(err.getvalue())


def on_two_ranks(argv, out: Path, timeout=180.0, **kwargs):
    out.mkdir(parents=True, exist_ok=True)
    run_ranks(run_command, argv, out, *kwargs.values(), timeout=timeout)
    return [(int((out / f"rank{r}.status").read_text()), (out / f"rank{r}.err").read_text())
            for r in range(WORLD)]


@pytest.mark.parametrize("sampler", ["ddim", "euler_maruyama"])
def test_sample_on_two_ranks_equals_one_process_bit_for_bit(tmp_path, sampler):
    argv = [*SAMPLE, "--num", "10", "--batch-size", "3", "--seed", "3", "--sampler", sampler]
    assert main([*argv, "--out", str(tmp_path / "one.npy")]) == 0
    results = on_two_ranks([*argv, "--out", str(tmp_path / "two.npy")], tmp_path / "ranks")
    assert [status for status, _ in results] == [0, 0]
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert one.shape == (10, 1, 8, 8) and np.array_equal(one, two)


def test_sample_i_does_not_depend_on_the_batch_size(tmp_path):
    outs = {}
    for size in (1, 7, 64):
        out = tmp_path / f"b{size}.npy"
        assert main([*SAMPLE, "--num", "9", "--batch-size", str(size), "--sampler",
                     "euler_maruyama", "--out", str(out)]) == 0
        outs[size] = np.load(out)
    assert np.abs(outs[1] - outs[64]).max() < 1e-4 and np.abs(outs[7] - outs[64]).max() < 1e-4
    assert main([*SAMPLE, "--num", "9", "--seed", "1", "--sampler", "euler_maruyama", "--out",
                 str(tmp_path / "other.npy")]) == 0
    assert np.abs(np.load(tmp_path / "other.npy") - outs[64]).max() > 0.1


def test_encode_and_likelihood_on_two_ranks_equal_one_process(tmp_path):
    encode = ["encode", "--data", "digits", "--num", "7", "--batch-size", "2", "--sampler",
              "ddim", "--steps", "4", "--no-progress"]
    likelihood = ["likelihood", "--data", "digits", "--num", "5", "--batch-size", "2",
                  "--method", "rk4", "--steps", "3", "--no-progress"]
    for name, argv in (("z", encode), ("nll", likelihood)):
        assert main([*argv, "--out", str(tmp_path / f"{name}1.npy")]) == 0
        results = on_two_ranks([*argv, "--out", str(tmp_path / f"{name}2.npy")],
                               tmp_path / f"ranks_{name}")
        assert [status for status, _ in results] == [0, 0]
        one, two = np.load(tmp_path / f"{name}1.npy"), np.load(tmp_path / f"{name}2.npy")
        assert len(one) == int(argv[4]) and np.array_equal(one, two)


def test_bench_on_two_ranks_writes_the_rows_of_one_process(tmp_path):
    argv = ["bench", "--problem", "gmm2d", "--samplers", "ddim,heun,unipc", "--nfe", "5,10",
            "--num", "32", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    results = on_two_ranks([*argv, "--out", str(tmp_path / "two")], tmp_path / "ranks")
    assert [status for status, _ in results] == [0, 0]

    def rows(folder):
        with open(tmp_path / folder / "gmm2d.csv", newline="") as fh:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(fh)]

    assert len(rows("one")) == 12 and rows("one") == rows("two")


def test_more_ranks_than_samples_is_one_line_from_rank_0(tmp_path):
    results = on_two_ranks([*SAMPLE, "--num", "1", "--out", str(tmp_path / "s.npy")],
                           tmp_path / "ranks")
    assert [status for status, _ in results] == [2, 2]
    assert results[0][1] == ("sdediff: error: torchrun started 2 processes for 1 example(s); "
                             "allowed: --nproc_per_node <= 1, or more examples\n")
    assert results[1][1] == ""
    assert not (tmp_path / "s.npy").exists()


def test_a_rank_that_dies_stops_the_others_with_one_line_and_no_output(tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    run_ranks(run_command, [*SAMPLE, "--num", "4", "--batch-size", "1", "--out",
                            str(tmp_path / "s.npy")], out, True, timeout=120.0)
    assert (out / "rank0.status").read_text() == "2"
    message = (out / "rank0.err").read_text()
    assert message.startswith("sdediff: error: rank 0: another rank of the torchrun job stopped "
                              "before its results were gathered") and message.count("\n") == 1
    assert message.rstrip().endswith("no output written")
    assert not (out / "rank1.status").exists()
    assert not list(tmp_path.glob("s*.npy")) and not list(tmp_path.glob(".s*"))


def test_torchrun_sample_equals_one_process_bit_for_bit(tmp_path):
    """The issue's command, through the real torchrun. ``--`` ends torchrun's own options: its
    parser takes ``--num`` for an abbreviation of its ``--numa-binding``. torchrun gives each rank
    one thread (``OMP_NUM_THREADS=1``); the single process runs with the same."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["sample", "--num", "200", "--seed", "3", "--steps", "5", "--no-progress"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "sdediff", "--", *common, "--out",
                          str(tmp_path / "a.npy")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr
    one = subprocess.run([sys.executable, "-m", "sdediff", *common, "--out",
                          str(tmp_path / "b.npy")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (200, 1, 8, 8) and np.array_equal(a, b)

"""Distributed training: two gloo processes on the CPU train what one process trains.

- After N steps both ranks hold identical weights (model, EMA, optimizer state), equal to float
  rounding to one process trained on the same global batches: ``batch_size = 2 * b`` in
  ``micro_batches = 2``, i.e. the same two shards, each drawn from the generator of its shard
  (see :class:`sdediff.Trainer`).
- A nan on one rank only is seen by both: both skip the step, or both stop at it; no rank hangs,
  and ``sdediff train`` prints one error line, from rank 0.
- A ``torchrun`` job killed with SIGKILL (the launcher and both workers) mid-step, resumed under
  ``torchrun``, ends bit for bit where an uninterrupted 2-process run ends.

Most jobs are forked from this process (``torch.multiprocessing``, start method ``fork``: no
second import of torch, so a job takes a second or two), each rank with the environment torchrun
gives it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so the
command takes the path it takes under torchrun. The SIGKILL test runs the real
``python -m torch.distributed.run --standalone --nproc_per_node=2``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import sdediff as sd
import sdediff.train as train_module
from sdediff.checkpoint import read_config, resolve_checkpoint
from sdediff.cli import main
from sdediff.nets import MLP
from tests.test_reliability_faults import final_state, loss_rows

WORLD, BATCH, STEPS = 2, 16, 12

# One thread (tests/conftest.py): the forked ranks inherit it, and the single-process reference
# must run with the ranks' thread count.
pytestmark = pytest.mark.usefixtures("one_thread", "warm_imports")


@pytest.fixture(scope="module")
def warm_imports():
    """Import once here what a training run imports lazily (matplotlib for the loss curve,
    torch's compiler stack on the first optimizer), so that forked ranks inherit it."""
    import sdediff.plotting  # noqa: F401

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


# --- launching ranks ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank, port, target, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    target(rank, *args)


def run_ranks(target, *args, timeout=120.0):
    """``target(rank, *args)`` in :data:`WORLD` forked processes set up as torchrun sets them up;
    a rank that raises fails the test with its traceback, a rank still running after ``timeout``
    seconds (a hang) fails it too."""
    ctx = mp.start_processes(_rank_entry, args=(free_port(), target, args), nprocs=WORLD,
                             join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=0.5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"a rank was still running after {timeout:.0f} s (hung in a collective?)")


# --- the Trainer on two ranks -------------------------------------------------------------------

def small_trainer(out, batch_size, **config):
    torch.manual_seed(0)  # the same initial weights in every process
    data = torch.randn(500, 2, generator=torch.Generator().manual_seed(1)) * 0.5 + 1.0
    config = sd.TrainConfig(steps=STEPS, batch_size=batch_size, lr=3e-3, warmup=3,
                            checkpoint_every=STEPS // 2, seed=5, **config)
    net = MLP(data_dim=2, hidden=32, depth=2, emb_dim=16)
    return sd.Trainer(net, sd.VPSDE(), data, out, config=config, progress=False)


def state_of(trainer) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v for k, v in trainer.net.state_dict().items()}
    state |= {f"ema.{k}": v for k, v in trainer.ema_net.state_dict().items()}
    for i, s in trainer.optimizer.state_dict()["state"].items():
        state |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in s.items()}
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def poison_loss(trainer, steps) -> None:
    """This process's loss is nan at the given steps (through the Trainer's own call)."""
    real = train_module.dsm_loss

    def dsm_loss(model, x0, **kw):
        loss = real(model, x0, **kw)
        return loss * float("nan") if trainer.step in steps else loss

    train_module.dsm_loss = dsm_loss  # in a forked rank: gone with the process


def train_rank(rank, out, poisoned=None, config=None):
    """One rank of a Trainer run; saves its final state and outcome as ``out/rank{rank}.*``."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        trainer = small_trainer(out, BATCH, **(config or {}))
        if poisoned is not None and rank == poisoned[0]:
            poison_loss(trainer, poisoned[1])
        error = None
        try:
            trainer.fit()
        except sd.NumericalError as err:
            error = str(err)
        save_file(state_of(trainer), str(out / f"rank{rank}.safetensors"))
        (out / f"rank{rank}.json").write_text(json.dumps(
            {"step": trainer.step, "skipped": trainer.skipped, "error": error}))
    finally:
        dist.destroy_process_group()


def rank_results(out):
    return [(load_file(str(out / f"rank{r}.safetensors")),
             json.loads((out / f"rank{r}.json").read_text())) for r in range(WORLD)]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and len(a) > 10
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def loss_column(out) -> list[float]:
    with open(out / "loss.csv", newline="") as fh:
        return [float(row[1]) for row in list(csv.reader(fh))[1:]]


@pytest.mark.parametrize("parts", [1, 2])
def test_two_ranks_agree_and_equal_one_process_on_the_same_global_batches(tmp_path, parts):
    out = tmp_path / "ddp"
    out.mkdir()
    run_ranks(train_rank, out, None, {"micro_batches": parts})
    (state0, info0), (state1, info1) = rank_results(out)
    assert info0 == info1 == {"step": STEPS, "skipped": [], "error": None}
    assert all(torch.equal(state0[k], state1[k]) for k in state0)  # bit for bit, rank vs rank

    # One process, batch 2b in 2 * parts micro-batches: the same shards, each from its own seed.
    single = small_trainer(tmp_path / "one", WORLD * BATCH, micro_batches=WORLD * parts)
    single.fit()
    one = state_of(single)
    ranks_apart, single_apart = max_difference(state0, state1), max_difference(state0, one)
    print(f"\n{WORLD} ranks x {parts} micro-batch(es): max |rank 0 - rank 1| = {ranks_apart:.3g}, "
          f"max |{WORLD} ranks - 1 process| = {single_apart:.3g} over {len(one)} tensors after "
          f"{STEPS} steps")
    for k in one:
        torch.testing.assert_close(state0[k], one[k], rtol=1e-5, atol=1e-6, msg=k)
    # the logged loss is the mean over the global batch: the single process's, to rounding
    assert loss_column(out) == pytest.approx(loss_column(tmp_path / "one"), rel=1e-5)
    # Rank 0 alone wrote the run directory (its checkpoints name the world size)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("rank")) == [
        "checkpoints", "loss.csv", "loss.png"]
    assert read_config(resolve_checkpoint(out))["world_size"] == WORLD
    if parts == 1:  # ...while one process drawing the global batch as one shard is another run
        plain = small_trainer(tmp_path / "plain", WORLD * BATCH)
        plain.fit()
        assert max_difference(one, state_of(plain)) > 1e-4


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nan_on_one_rank_is_met_by_both(tmp_path, policy):
    out = tmp_path / "ddp"
    out.mkdir()
    run_ranks(train_rank, out, (1, {4}), {"on_nonfinite": policy})
    (state0, info0), (state1, info1) = rank_results(out)
    assert info0 == info1
    if policy == "skip":   # both dropped step 4 and went on to the end
        assert info0 == {"step": STEPS, "skipped": [4], "error": None}
        assert loss_column(out)[4] != loss_column(out)[4]  # the skipped step logs nan
    else:                  # both stopped before step 4 touched the weights
        assert info0["step"] == 4 and info0["error"].startswith("training loss at step 4 is nan")
    assert all(torch.equal(state0[k], state1[k]) for k in state0)


# --- the command on two ranks -------------------------------------------------------------------

TRAIN = ["train", "--data", "8gaussians", "--steps", "16", "--batch-size", "16",
         "--checkpoint-every", "8", "--lr", "3e-3", "--device", "cpu", "--no-progress"]


def cli_rank(rank, argv, control, poisoned_step=None):
    """``sdediff train`` as rank ``rank``: its stdout, stderr and exit status go to ``control``."""
    if poisoned_step is not None and rank == 1:
        real_init = train_module.Trainer.__init__

        def init(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            poison_loss(self, {poisoned_step})

        train_module.Trainer.__init__ = init
    with open(control / f"out{rank}", "w") as out, open(control / f"err{rank}", "w") as err:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    (control / f"status{rank}").write_text(str(status))


def test_cli_nan_on_one_rank_is_one_line_from_rank_0(tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    run_ranks(cli_rank, [*TRAIN, "--out", str(tmp_path / "run")], control, 11)
    statuses = [(control / f"status{r}").read_text() for r in range(WORLD)]
    assert statuses == ["2", "2"]
    err0, err1 = ((control / f"err{r}").read_text() for r in range(WORLD))
    assert err0.count("\n") == 1 and err1 == "", (err0, err1)
    assert err0.startswith("sdediff: error: training loss at step 11 is nan; lower --lr"), err0
    assert (control / "out1").read_text() == ""  # rank 1 prints nothing at all
    assert resolve_checkpoint(tmp_path / "run").name == "step-00000008"


def test_resuming_on_another_world_size_says_so(tmp_path, capsys):
    (tmp_path / "control").mkdir()
    run_ranks(cli_rank, [*TRAIN, "--steps", "2", "--out", str(tmp_path / "run")], tmp_path / "control")
    assert main([*TRAIN, "--steps", "3", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert ("note: the run trained on 2 process(es) and resumes on 1: its global batch changes from "
            "32 to 16") in capsys.readouterr().out


def test_cli_batch_that_does_not_split_into_micro_batches_is_one_line(tmp_path, capsys):
    assert main([*TRAIN, "--micro-batches", "3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == ("sdediff: error: batch_size 16 does not split into micro_batches=3 equal parts; "
                   "allowed: a batch_size that is a multiple of 3, or fewer micro-batches\n")


# --- SIGKILL of a torchrun job, then resume under torchrun ----------------------------------------

# A torchrun worker: writes its pid to CONTROL (the test kills every process of the job); in mode
# "stall:K" rank 0 stops inside step K, after the weight update and before the EMA update and the
# step counter, and waits there to be killed.
CHILD = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
control, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
rank = int(os.environ["RANK"])
with open(os.path.join(control, f"pid{rank}"), "w") as fh:
    fh.write(str(os.getpid()))
if mode.startswith("stall:") and rank == 0:
    nth, real, calls = int(mode[6:]) + 1, torch.optim.AdamW.step, [0]
    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == nth:
            open(os.path.join(control, "stalled"), "w").close()
            time.sleep(600)
        return out
    torch.optim.AdamW.step = step
from sdediff.cli import main
sys.exit(main(argv))
"""


def torchrun(child: Path, control: Path, mode: str, argv: list[str]) -> list[str]:
    control.mkdir(exist_ok=True)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={WORLD}", str(child), str(control), mode, *argv]


def child_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    return env


def test_sigkill_of_a_torchrun_job_then_resume_under_torchrun_is_bit_for_bit(tmp_path):
    # The uninterrupted 2-process reference (forked ranks, one thread each as in the workers).
    (tmp_path / "ref").mkdir()
    run_ranks(cli_rank, [*TRAIN, "--out", str(tmp_path / "straight")], tmp_path / "ref")

    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out, control = tmp_path / "killed", tmp_path / "control"
    job = subprocess.Popen(torchrun(child, control, "stall:11", [*TRAIN, "--out", str(out)]),
                           env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not (control / "stalled").exists():
        assert job.poll() is None, job.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "rank 0 never reached step 11"
        time.sleep(0.05)
    # The whole job, as a lost machine: the launcher first (so that it restarts nothing), then
    # both workers (torchrun starts each in a session of its own).
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    for rank in range(WORLD):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int((control / f"pid{rank}").read_text()), signal.SIGKILL)
    job.stderr.close()
    assert read_config(resolve_checkpoint(out))["step"] == 8  # the newest complete checkpoint

    resumed = subprocess.run(torchrun(child, control, "plain", [*TRAIN, "--out", str(out),
                                                                "--resume"]),
                             env=child_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"resuming {out} at step 8") == 1  # printed by rank 0 only
    assert resumed.stdout.count("trained MLP") == 1
    straight, again = final_state(tmp_path / "straight"), final_state(out)
    assert straight.keys() == again.keys() and len(straight) > 10
    different = [k for k in straight if not torch.equal(straight[k], again[k])]
    assert not different, different
    assert loss_rows(tmp_path / "straight") == loss_rows(out)
    assert len(loss_rows(out)) == 16 + 1

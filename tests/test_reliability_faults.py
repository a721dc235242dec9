"""Crash safety: ``sdediff train`` killed with SIGKILL at random points, resumed with ``--resume``,
ends bit for bit where an uninterrupted run ends, and never loses a completed checkpoint.

Most kills are injected at exact places inside the child (a small wrapper patches one function
to SIGKILL its own process on its n-th call, n drawn from a seeded generator), so the test knows
it hit the middle of a step or of a checkpoint write; one kill comes from outside, after a random
delay, through the plain ``python -m sdediff.cli`` entry point. SIGKILL cannot be caught: no
``finally`` block, no ``atexit``, no flush runs in the child.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sdediff as sd
import sdediff.train as train_module
from sdediff.checkpoint import load_model, read_config, resolve_checkpoint
from sdediff.cli import main
from sdediff.nets import MLP

STEPS, EVERY, BATCH = 80, 5, 32
TRAIN_ARGS = ["train", "--data", "8gaussians", "--steps", str(STEPS), "--batch-size", str(BATCH),
              "--checkpoint-every", str(EVERY), "--lr", "3e-3", "--no-progress"]

# The child: `sdediff train <argv>` with one function patched to SIGKILL this process on its
# n-th call (before or after the real call), or nothing patched for site "none".
CHILD = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
site, nth, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
count = [0]

def wrap(owner, name, after, when=lambda *a: True):
    real = getattr(owner, name)
    def patched(*args, **kwargs):
        hit = when(*args)
        if hit and not after:
            count[0] += 1
            if count[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if hit and after:
            count[0] += 1
            if count[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(owner, name, patched)

import sdediff.checkpoint as ck
name = lambda path: os.path.basename(os.fspath(path))
if site == "backward":    # gradients computed and clipped, weights not yet updated
    wrap(torch.nn.utils, "clip_grad_norm_", after=True)
elif site == "update":    # weights updated, EMA and the step counter not yet
    wrap(torch.optim.AdamW, "step", after=True)
elif site == "files":     # some files of a checkpoint written into its temporary folder
    wrap(ck, "_fsync_file", after=False)
elif site == "rename":    # the new folder renamed into place, `latest` not yet updated
    wrap(os, "rename", after=True, when=lambda src, dst: name(dst).startswith("step-"))
elif site == "latest":    # `latest` replaced, old folders not yet pruned
    wrap(os, "replace", after=True, when=lambda src, dst: name(dst) == "latest")
from sdediff.cli import main
sys.exit(main(argv))
"""

#: Calls of the patched function per training step / per checkpoint, to draw n in range.
PER_STEP = {"backward": 1, "update": 1}
PER_CHECKPOINT = {"files": 4, "rename": 1, "latest": 1}


# One thread (tests/conftest.py), as in the children: the uninterrupted reference must run with
# the children's thread count.
pytestmark = pytest.mark.usefixtures("one_thread")


def child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                         env.get("PYTHONPATH", "")])
    return env


def train_argv(out: Path) -> list[str]:
    resume = ["--resume"] if (out / "checkpoints" / "latest").is_file() else []
    return [*TRAIN_ARGS, "--out", str(out), *resume]


def latest_step(out: Path) -> int | None:
    try:
        return read_config(resolve_checkpoint(out))["step"]
    except FileNotFoundError:
        return None


def check_latest_loads(out: Path) -> None:
    """The folder `latest` names is complete: digests match, weights load into the network."""
    folder = resolve_checkpoint(out)
    model, config = load_model(out)
    load_model(out, ema=False)
    assert torch.load(folder / "optimizer.pt", weights_only=True)["state"]
    assert set(config["sha256"]) == {"model.safetensors", "ema.safetensors", "optimizer.pt"}


def final_state(out: Path) -> dict:
    folder = resolve_checkpoint(out)
    state = {f"model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    state |= {f"ema.{k}": v for k, v in load_file(str(folder / "ema.safetensors")).items()}
    opt = torch.load(folder / "optimizer.pt", weights_only=True)
    for i, s in opt["state"].items():
        state |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in s.items()}
    state["step"] = torch.tensor(read_config(folder)["step"])
    return state


def loss_rows(out: Path) -> list[list[str]]:
    with open(out / "loss.csv", newline="") as fh:
        return [row[:3] for row in csv.reader(fh)]  # step, loss, lr (not the wall time)


@pytest.mark.slow   # 45-90 s on 2 cores: `pytest -m slow`
def test_sigkill_anywhere_then_resume_is_bit_for_bit(tmp_path, capsys):
    # The uninterrupted reference, in this process with the children's single thread.
    assert torch.get_num_threads() == 1
    assert main([*TRAIN_ARGS, "--out", str(tmp_path / "straight")]) == 0
    capsys.readouterr()

    rng = random.Random(8)
    out = tmp_path / "killed"
    # "update" first and past the first checkpoint, so that every later child resumes.
    sites = ["update", "files", "backward", "rename", "latest"]
    report = []
    for site in sites:
        before = latest_step(out)
        per_step = PER_STEP.get(site)
        low = EVERY + 1 if before is None else 2
        nth = rng.randint(low, 2 * EVERY) if per_step else rng.randint(1, 2) * PER_CHECKPOINT[site] - (
            rng.randint(0, 2) if site == "files" else 0)
        proc = subprocess.run([sys.executable, "-c", CHILD, site, str(nth), *train_argv(out)],
                              env=child_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, (site, nth, proc.returncode, proc.stderr)
        after = latest_step(out)
        root = out / "checkpoints"
        # The kill landed where it was aimed: mid-write debris, or a folder `latest` misses.
        if site == "files":
            assert list(root.glob(".tmp-*")), "a killed checkpoint write leaves its temp folder"
        if site == "rename":
            steps = sorted(int(p.name[5:]) for p in root.glob("step-*"))
            assert steps[-1] > after, "the new folder is in place but not named by `latest`"
        # No completed checkpoint is lost: `latest` never moves back and always loads.
        assert after is not None and (before is None or after >= before), (site, before, after)
        check_latest_loads(out)
        report.append((site, nth, before, after))

    # One kill from outside, through the plain entry point, at a random moment after the next
    # checkpoint appears (so it lands in a step or in a checkpoint write, wherever it falls).
    before = latest_step(out)
    proc = subprocess.Popen([sys.executable, "-m", "sdediff.cli", *train_argv(out)],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while latest_step(out) == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.1))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the external kill"
    after = latest_step(out)
    assert after >= before
    check_latest_loads(out)
    report.append(("external", None, before, after))

    # Resume to the end; the result equals the uninterrupted run bit for bit.
    proc = subprocess.run([sys.executable, "-m", "sdediff.cli", *train_argv(out)],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout
    straight, resumed = final_state(tmp_path / "straight"), final_state(out)
    assert straight.keys() == resumed.keys() and len(straight) > 10
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, different
    assert loss_rows(tmp_path / "straight") == loss_rows(out)
    assert len(loss_rows(out)) == STEPS + 1
    # The debris of the kills is gone and the two newest checkpoints are kept.
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", f"step-{STEPS - EVERY:08d}",
                                                       f"step-{STEPS:08d}"]
    print(f"\nkills survived: {len(report)}, checkpoints lost: 0")
    for site, nth, before, after in report:
        print(f"  {site:>9} n={nth}: latest checkpoint step {before} -> {after}")


# --- training guards: a non-finite loss or gradient ---------------------------------------------

def guarded_trainer(out, **config):
    torch.manual_seed(0)
    data = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    net = MLP(data_dim=2, hidden=16, depth=1, emb_dim=8)
    config = sd.TrainConfig(steps=20, batch_size=16, lr=1e-3, warmup=2, checkpoint_every=5,
                            seed=2, **config)
    return sd.Trainer(net, sd.VPSDE(), data, out, config=config, progress=False)


def poison(monkeypatch, trainer, steps, where="loss"):
    """Make the loss (or its gradient) non-finite at the given steps, through the real code path."""
    real = train_module.dsm_loss

    def dsm_loss(model, x0, **kw):
        loss = real(model, x0, **kw)
        if trainer.step in steps:
            if where == "loss":
                return loss * float("nan")
            return _InfGrad.apply(loss)  # finite loss, infinite gradient
        return loss

    monkeypatch.setattr(train_module, "dsm_loss", dsm_loss)


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward (an overflow inside backward)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def snapshot(trainer):
    opt = trainer.optimizer.state_dict()["state"]
    return ([p.detach().clone() for p in trainer.net.parameters()]
            + [p.detach().clone() for p in trainer.ema_net.parameters()]
            + [v.clone() for s in opt.values() for v in s.values() if torch.is_tensor(v)])


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    reference = guarded_trainer(tmp_path / "ref")
    reference.fit(10)
    trainer = guarded_trainer(tmp_path / "run")
    poison(monkeypatch, trainer, {12})
    with pytest.raises(sd.NumericalError, match=r"training loss at step 12 is nan; lower --lr .*"
                       r"the last good checkpoint is kept \(or train with on_nonfinite='skip'\)"):
        trainer.fit()
    assert trainer.step == 12  # stopped before the bad step touched anything
    folder = resolve_checkpoint(tmp_path / "run")
    assert folder.name == "step-00000010"
    for name in ("model.safetensors", "ema.safetensors"):
        saved = load_file(str(folder / name))
        expected = load_file(str(resolve_checkpoint(tmp_path / "ref") / name))
        assert all(torch.equal(saved[k], expected[k]) for k in expected)
    # ...and the run resumes from it once the cause is gone
    monkeypatch.undo()
    again = guarded_trainer(tmp_path / "run")
    assert again.resume() == 10


def test_nonfinite_gradient_stops_too(tmp_path, monkeypatch):
    trainer = guarded_trainer(tmp_path)
    poison(monkeypatch, trainer, {7}, where="grad")
    with pytest.raises(sd.NumericalError, match=r"gradient norm at step 7 is (nan|inf)"):
        trainer.fit()
    assert resolve_checkpoint(tmp_path).name == "step-00000005"


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_skip_policy_drops_exactly_the_bad_step(tmp_path, monkeypatch, where):
    clean = guarded_trainer(tmp_path / "clean")
    clean.fit(12)
    skipping = guarded_trainer(tmp_path / "skip", on_nonfinite="skip")
    poison(monkeypatch, skipping, {12}, where=where)
    skipping.fit(13)
    assert skipping.skipped == [12]
    # step 12 changed nothing: the state after it is the clean state after step 11 (EMA too)
    for a, b in zip(snapshot(clean), snapshot(skipping), strict=True):
        assert torch.equal(a, b)
    skipping.fit()  # and training goes on to the end
    assert skipping.step == 20 and resolve_checkpoint(tmp_path / "skip").name == "step-00000020"
    rows = list(csv.reader(open(tmp_path / "skip" / "loss.csv")))
    assert rows[13][0] == "13" and (rows[13][1] == "nan" if where == "loss" else rows[13][1] != "nan")


def test_skip_policy_gives_up_after_max_skips(tmp_path, monkeypatch):
    trainer = guarded_trainer(tmp_path, on_nonfinite="skip", max_skips=3)
    poison(monkeypatch, trainer, set(range(6, 20)))
    with pytest.raises(sd.NumericalError, match=r"training loss at step 8 is nan; 3 consecutive "
                       r"steps were skipped \(max_skips=3\)"):
        trainer.fit()
    assert trainer.skipped == [6, 7, 8] and resolve_checkpoint(tmp_path).name == "step-00000005"


def test_cli_stops_on_nonfinite_loss_with_one_line(tmp_path, capsys, monkeypatch):
    real = train_module.dsm_loss
    monkeypatch.setattr(train_module, "dsm_loss", lambda *a, **k: real(*a, **k) * float("inf"))
    assert main(["train", "--data", "8gaussians", "--out", str(tmp_path / "r"), "--steps", "3",
                 "--batch-size", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("sdediff: error: training loss at step 0 is inf; lower --lr"), err


def test_replacing_the_latest_folder_is_crash_safe_and_debris_is_cleaned(tmp_path):
    trainer = guarded_trainer(tmp_path)
    trainer.fit(5)
    root = tmp_path / "checkpoints"
    before = load_file(str(root / "step-00000005" / "ema.safetensors"))
    trainer.save()  # the same step again: replaces the folder `latest` names
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000005"]
    # A kill between moving the old folder aside and renaming the new one into place:
    os.rename(root / "step-00000005", root / ".old-step-00000005")
    (root / ".tmp-killed").mkdir()
    assert resolve_checkpoint(tmp_path).name == ".old-step-00000005"
    model, config = load_model(tmp_path)
    assert config["step"] == 5
    assert all(torch.equal(v, before[k]) for k, v in load_file(
        str(root / ".old-step-00000005" / "ema.safetensors")).items())
    resumed = guarded_trainer(tmp_path)
    assert resumed.resume() == 5
    resumed.fit(7)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000005", "step-00000007"]

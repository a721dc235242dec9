"""The bad-input table: every user mistake is the right exception with a message that names the
bad value and what is allowed; through the CLI it is one line on stderr and exit status 2.

Two tables: ``API`` (Python calls) and ``CLI`` (``sdediff`` command lines). Each row is
``(id, call, exception type, regex)``; the regex must match the whole relevant part of the message,
so a reworded message fails here. ``docs/reliability.md`` lists both tables.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff.bench import problems
from sdediff.checkpoint import load_model
from sdediff.checks import InputError
from sdediff.cli import main
from sdediff.data import load_dataset
from sdediff.nets import MLP

ALLOWED_SAMPLERS = re.escape(", ".join(sd.samplers.available()))
ALLOWED_DATA = (r"allowed: swissroll, moons, 8gaussians, checkerboard, gmm, digits, mnist, mnist:FOLDER, "
                r"or a path")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Paths and objects the rows need: a tiny run, an empty folder, a broken image, bad arrays."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(b"not an image")
    (root / "afile").write_text("x")
    (root / "fresh").mkdir()
    nan = np.zeros((10, 2), dtype=np.float32)
    nan[3, 1] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "ints.npy", np.zeros((10, 2), dtype=np.int64))
    run = root / "run"
    assert main(["train", "--data", "8gaussians", "--out", str(run), "--steps", "2",
                 "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]) == 0
    x = torch.zeros(4, 2)
    x_nan, x_inf = x.clone(), x.clone()
    x_nan[1, 0], x_inf[0, 1] = float("nan"), float("inf")
    return {"root": root, "run": run, "model": problems.gmm2d().score_model(sd.VPSDE()), "x": x,
            "x_nan": x_nan, "x_inf": x_inf}


def sample(e, **kw):
    kw.setdefault("x_T", e["x"])
    return sd.sample(e["model"], steps=kw.pop("steps", 2), **kw)


VP = sd.VPSDE()

API = [
    # sampling: names, options, step counts, end time
    ("unknown sampler", lambda e: sample(e, sampler="dpm"), ValueError,
     rf"unknown sampler 'dpm'; allowed: {ALLOWED_SAMPLERS}"),
    ("unknown option", lambda e: sample(e, sampler="ddim", churn=1), ValueError,
     r"unknown option 'churn' for sampler 'ddim'; allowed: eta, schedule"),
    ("option out of range", lambda e: sample(e, sampler="ddim", eta=2), ValueError,
     r"eta must be in \[0.0, 1.0\], got 2.0"),
    ("unknown schedule", lambda e: sample(e, schedule="cosine"), ValueError,
     r"unknown schedule 'cosine'; allowed: uniform, logsnr, quadratic, karras, edm"),
    ("steps = 0", lambda e: sample(e, steps=0), ValueError, r"steps must be >= 1, got 0"),
    ("steps < 0", lambda e: sample(e, steps=-3), ValueError, r"steps must be >= 1, got -3"),
    ("steps float", lambda e: sample(e, steps=2.5), TypeError,
     r"steps must be an integer, got 2.5 \(float\)"),
    ("steps bool", lambda e: sample(e, steps=True), TypeError,
     r"steps must be an integer, got True \(bool\)"),
    ("t_end = 0", lambda e: sample(e, t_end=0.0), ValueError,
     r"t_end must be in \(0.0, 1.0\), got 0.0"),
    ("t_end = T", lambda e: sample(e, t_end=1.0), ValueError,
     r"t_end must be in \(0.0, 1.0\), got 1.0"),
    ("t_end < 0", lambda e: sample(e, t_end=-1e-3), ValueError,
     r"t_end must be in \(0.0, 1.0\), got -0.001"),
    ("t_end NaN", lambda e: sample(e, t_end=float("nan")), ValueError,
     r"t_end must be in \(0.0, 1.0\), got nan"),
    ("t_end string", lambda e: sample(e, t_end="0.1"), TypeError,
     r"t_end must be a number, got '0.1' \(str\)"),
    # latents and shapes
    ("x_T with NaN", lambda e: sample(e, x_T=e["x_nan"]), ValueError,
     r"x_T contains 1 non-finite value\(s\) \(NaN or inf\); all must be finite"),
    ("x_T with inf", lambda e: sample(e, x_T=e["x_inf"]), ValueError,
     r"x_T contains 1 non-finite value\(s\) \(NaN or inf\); all must be finite"),
    ("x_T integer", lambda e: sample(e, x_T=torch.zeros(4, 2, dtype=torch.long)), TypeError,
     r"x_T must have a floating dtype \(float32, float64, bfloat16, ...\), got torch.int64"),
    ("x_T not a tensor", lambda e: sample(e, x_T=[[0.0, 0.0]]), TypeError,
     r"x_T must be a torch.Tensor, got list"),
    ("x_T without batch", lambda e: sample(e, x_T=torch.zeros(2)), ValueError,
     r"x_T must have shape \(batch, ...\), got \(2,\)"),
    ("x_T vs shape", lambda e: sample(e, shape=(3, 2)), ValueError,
     r"x_T has shape \(4, 2\), expected \(3, 2\)"),
    ("shape with 0", lambda e: sample(e, x_T=None, shape=(0, 2)), ValueError,
     r"each entry of shape must be >= 1, got 0"),
    ("negative batch size", lambda e: sample(e, x_T=None, shape=(-4, 2)), ValueError,
     r"each entry of shape must be >= 1, got -4"),
    ("model not a ScoreModel", lambda e: sd.sample("model", x_T=e["x"]), TypeError,
     r"model must be a sdediff.ScoreModel, got str"),
    # the score interface
    ("unknown prediction", lambda e: sd.ScoreModel(MLP(), VP, prediction="noise"), ValueError,
     r"unknown prediction 'noise'; allowed: eps, x0, v, score"),
    ("net not callable", lambda e: sd.ScoreModel("net", VP), TypeError,
     r"net must be callable as net\(x, t\), got str"),
    ("unknown process object", lambda e: sd.ScoreModel(MLP(), "vp"), TypeError,
     r"sde must be a forward process \(VPSDE, SubVPSDE, VESDE, DiscreteVPSDE\), got str"),
    ("unknown autocast dtype", lambda e: sd.ScoreModel(MLP(), VP, autocast="float8"), ValueError,
     r"unknown autocast dtype 'float8'; allowed: bfloat16"),
    ("net output of wrong shape",
     lambda e: sd.ScoreModel.from_fn(lambda x, t: x[:, :1], VP).score(e["x"], 0.5), ValueError,
     r"net\(x, t\) output has shape \(4, 1\) but x has shape \(4, 2\); they must match"),
    # training
    ("negative batch_size", lambda e: sd.TrainConfig(batch_size=-8), ValueError,
     r"batch_size must be >= 1, got -8"),
    ("training steps = 0", lambda e: sd.TrainConfig(steps=0), ValueError,
     r"steps must be >= 1, got 0"),
    ("training steps string", lambda e: sd.TrainConfig(steps="10"), TypeError,
     r"steps must be an integer, got '10' \(str\)"),
    ("lr NaN", lambda e: sd.TrainConfig(lr=float("nan")), ValueError,
     r"lr must be in \(0.0, inf\), got nan"),
    ("ema_decay = 1", lambda e: sd.TrainConfig(ema_decay=1.0), ValueError,
     r"ema_decay must be in \[0.0, 1.0\), got 1.0"),
    ("unknown weighting", lambda e: sd.TrainConfig(weighting="snr"), ValueError,
     r"unknown weighting 'snr'; allowed: eps, likelihood"),
    ("unknown non-finite policy", lambda e: sd.TrainConfig(on_nonfinite="ignore"), ValueError,
     r"unknown on_nonfinite policy 'ignore'; allowed: stop, skip"),
    ("max_skips = 0", lambda e: sd.TrainConfig(max_skips=0), ValueError,
     r"max_skips must be >= 1, got 0"),
    ("training data with NaN", lambda e: sd.Trainer(MLP(), VP, e["x_nan"], e["root"] / "r"),
     ValueError, r"data contains 1 non-finite value\(s\) \(NaN or inf\); all must be finite"),
    ("empty training data", lambda e: sd.Trainer(MLP(), VP, torch.zeros(0, 2), e["root"] / "r"),
     ValueError, r"data is empty \(shape \(0, 2\)\); give at least one example"),
    ("Trainer prediction", lambda e: sd.Trainer(MLP(), VP, e["x"], e["root"] / "r",
                                                prediction="noise"), ValueError,
     r"unknown prediction 'noise'; allowed: eps, x0, v, score"),
    ("dsm_loss on NaN data", lambda e: sd.dsm_loss(e["model"], e["x_nan"]), ValueError,
     r"x0 contains 1 non-finite value\(s\) \(NaN or inf\); all must be finite"),
    # data and checkpoints
    ("unknown data set", lambda e: load_dataset("swiss"), ValueError,
     rf"unknown data set 'swiss'; {ALLOWED_DATA}"),
    ("missing data file", lambda e: load_dataset("/no/such/data.npy"), ValueError,
     rf"data path '/no/such/data.npy' does not exist; {ALLOWED_DATA}"),
    ("empty data folder", lambda e: load_dataset(str(e["root"] / "empty")), ValueError,
     r"no .png/.jpg/.jpeg found in '.*empty'"),
    ("unreadable image", lambda e: load_dataset(str(e["root"] / "broken")), ValueError,
     r"cannot read image '.*a\.png' \(.*\); allowed: 8-bit grayscale or colour .png/.jpg/.jpeg"),
    ("data size 0", lambda e: load_dataset("moons", n=0), ValueError, r"n must be >= 1, got 0"),
    ("missing checkpoint", lambda e: load_model("/no/such/dir"), FileNotFoundError,
     r"no checkpoint at '/no/such/dir'; expected a run directory written by `sdediff train`"),
    ("unknown divergence", lambda e: sd.log_likelihood(e["model"], e["x"], divergence="trace"),
     ValueError, r"unknown divergence 'trace'; allowed: exact, hutchinson"),
]


@pytest.mark.parametrize("call,error,pattern", [row[1:] for row in API], ids=[r[0] for r in API])
def test_api_bad_input(env, call, error, pattern):
    with pytest.raises(Exception) as info:
        call(env)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    # raised by the library's own input checks (the CLI prints these as one line), not by a bug
    assert isinstance(info.value, (InputError, OSError)), type(info.value).__name__
    assert re.search(pattern, str(info.value)), str(info.value)


def r(e, name):
    return str(e["root"] / name)


def train(e, *args, out=None):
    return ["train", "--data", "8gaussians", "--out", out or r(e, "new"), "--steps", "2",
            "--no-progress", *args]


def sample_cli(e, *args):
    return ["sample", "--checkpoint", str(e["run"]), "--num", "2", "--out", r(e, "s.npy"),
            "--no-progress", *args]


CLI = [
    ("unknown command", lambda e: ["frobnicate"], r"argument command: invalid choice: 'frobnicate'"),
    ("unknown data set", lambda e: ["train", "--data", "nope", "--out", r(e, "new")],
     rf"unknown data set 'nope'; {ALLOWED_DATA}"),
    ("missing data file", lambda e: ["train", "--data", "/no/such.npy", "--out", r(e, "new")],
     rf"data path '/no/such.npy' does not exist; {ALLOWED_DATA}"),
    ("empty data folder", lambda e: ["train", "--data", r(e, "empty"), "--out", r(e, "new")],
     r"no .png/.jpg/.jpeg found in '.*empty'"),
    ("unreadable image", lambda e: ["train", "--data", r(e, "broken"), "--out", r(e, "new")],
     r"cannot read image '.*a\.png' .*; allowed: 8-bit grayscale or colour"),
    ("NaN in data", lambda e: ["train", "--data", r(e, "nan.npy"), "--out", r(e, "new")],
     r"array in '.*nan\.npy' contains 1 non-finite value\(s\) \(NaN or inf\); all must be finite"),
    ("integer data", lambda e: ["train", "--data", r(e, "ints.npy"), "--out", r(e, "new")],
     r"has dtype int64; allowed: uint8 .* or a floating dtype"),
    ("negative batch size", lambda e: train(e, "--batch-size", "-8"),
     r"batch_size must be >= 1, got -8"),
    ("steps = 0", lambda e: train(e, "--steps", "0"), r"steps must be >= 1, got 0"),
    ("steps not a number", lambda e: train(e, "--steps", "x"),
     r"argument --steps: invalid int value: 'x'"),
    ("lr NaN", lambda e: train(e, "--lr", "nan"), r"lr must be in \(0.0, inf\), got nan"),
    ("lr < 0", lambda e: train(e, "--lr", "-1"), r"lr must be in \(0.0, inf\), got -1.0"),
    ("checkpoint every 0", lambda e: train(e, "--checkpoint-every", "0"),
     r"checkpoint_every must be >= 1, got 0"),
    ("negative seed", lambda e: train(e, "--seed", "-1"), r"seed must be >= 0, got -1"),
    ("unknown process", lambda e: train(e, "--sde", "foo"),
     r"argument --sde: invalid choice: 'foo' \(choose from .*vp.*\)"),
    ("unknown policy", lambda e: train(e, "--on-nonfinite", "ignore"),
     r"argument --on-nonfinite: invalid choice: 'ignore' \(choose from .*stop.*skip.*\)"),
    ("U-Net on points", lambda e: train(e, "--model", "unet"),
     r"model 'unet' needs images \(C, H, W\), got points of shape \(2,\); use --model mlp"),
    ("--out is a file", lambda e: train(e, out=r(e, "afile")),
     r"--out '.*afile' is a file; allowed: a new directory, or a run directory"),
    ("--out holds a run", lambda e: train(e, out=str(e["run"])),
     r"already holds a training run; pass --resume to continue it or choose another --out"),
    ("--resume without a run", lambda e: train(e, "--resume", out=r(e, "fresh")),
     r"--resume given but '.*fresh' holds no checkpoint to resume"),
    ("--resume below its step", lambda e: train(e, "--resume", "--steps", "1", out=str(e["run"])),
     r"--steps 1 leaves nothing to train: the checkpoint in '.*run' is at step 2; pass --steps above 2"),
    ("--resume on other data", lambda e: ["train", "--data", "digits", "--out", str(e["run"]),
                                          "--resume", "--no-progress"],
     r"--data 'digits' has examples of shape \(1, 8, 8\) but the run in '.*run' was trained on "
     r"'8gaussians' of shape \(2,\)"),
    ("missing checkpoint", lambda e: ["sample", "--checkpoint", "/no/such/dir"],
     r"no checkpoint at '/no/such/dir'; expected a run directory"),
    ("unknown sampler", lambda e: sample_cli(e, "--sampler", "dpm"),
     rf"unknown sampler 'dpm'; allowed: {ALLOWED_SAMPLERS}"),
    ("sample steps = 0", lambda e: sample_cli(e, "--steps", "0"), r"steps must be >= 1, got 0"),
    ("negative --num", lambda e: sample_cli(e, "--num", "-5"), r"--num must be >= 1, got -5"),
    ("option out of range", lambda e: sample_cli(e, "--sampler", "ddim", "-o", "eta=2"),
     r"eta must be in \[0.0, 1.0\], got 2.0"),
    ("unknown option", lambda e: sample_cli(e, "--sampler", "ddim", "-o", "churn=1"),
     r"unknown option 'churn' for sampler 'ddim'; allowed: eta, schedule"),
    ("unknown schedule", lambda e: sample_cli(e, "-o", "schedule=cosine"),
     r"unknown schedule 'cosine'; allowed: uniform, logsnr, quadratic, karras, edm"),
    ("option without value", lambda e: sample_cli(e, "-o", "eta"),
     r"sampler option 'eta' must look like key=value \(e.g. eta=0.5\)"),
    ("missing latents", lambda e: ["decode", "--checkpoint", str(e["run"]), "--input",
                                   "/no/such.npy"],
     r"--input '/no/such.npy' must be a latents .npy file written by `sdediff encode`"),
]


@pytest.mark.parametrize("argv,pattern", [row[1:] for row in CLI], ids=[r[0] for r in CLI])
def test_cli_bad_input(env, capsys, argv, pattern):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv(env)))
    assert info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("sdediff: error: "), err
    assert "Traceback" not in err + captured.out
    assert re.search(pattern, err), err


def test_tables_are_large_enough():
    assert len(API) >= 30 and len(CLI) >= 30


def test_console_entry_point_one_line_for_a_bad_checkpoint(tmp_path):
    """The installed entry point, in a fresh process: status 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "sdediff.cli", "sample", "--checkpoint",
                           str(tmp_path / "no" / "such"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "no checkpoint at" in proc.stderr

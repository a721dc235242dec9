"""Benchmarks on any model (issue 14, item 4): ``sdediff bench --checkpoint PATH`` on a tiny random
diffusers pipeline measures the samplers and diffusers' schedulers against a probability-flow
reference from the same ``x_T``; its files and schema, errors that fall with NFE, the reference's
self-check, the peers against sdediff on the same timesteps, the chain the peers run on, and
one-line errors for bad input."""

import contextlib
import csv
import io
import json
import math

import pytest
import torch

import sdediff as sd
from sdediff import bench
from sdediff.bench import model as model_bench
from sdediff.bench.metrics import rms
from sdediff.cli import main
from tests.test_cli import fails_with

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

BUDGETS = (5, 10)


def tiny_pipeline(folder):
    """A seeded random 8x8 ``UNet2DModel`` in a ``DDIMPipeline`` saved to ``folder``."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)
    diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One CLI run: two sdediff samplers, a stochastic one (skipped), the adaptive ``ode`` at one
    tolerance, and two peers, on 4 samples, the reference at 1e-5 (checked at 1e-4)."""
    root = tmp_path_factory.mktemp("bench_model")
    pipe, out = tiny_pipeline(root / "pipe"), root / "out"
    threads = torch.get_num_threads()
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            code = main(["bench", "--checkpoint", str(pipe), "--nfe", ",".join(map(str, BUDGETS)),
                         "--samplers", "ddim,dpm_solver++,ddpm,ode,diffusers:ddim,diffusers:euler",
                         "--tols", "1e-2", "--num", "4", "--ref-tol", "1e-5", "--out", str(out),
                         "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    saved = json.loads((out / "model.json").read_text())
    return pipe, out, saved, stdout.getvalue()


def values(saved, sampler):
    return {r["budget"]: r for r in saved["rows"] if r["sampler"] == sampler}


def test_writes_csv_json_markdown_plots_and_the_reference(ran):
    _, out, saved, stdout = ran
    assert {p.name for p in out.iterdir()} == {
        "model.csv", "model.json", "model.md", "model_rms_error.png", "model_time.png",
        "model_reference.pt"}
    with open(out / "model.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == bench.COLUMNS
        assert len(list(reader)) == len(saved["rows"])
    assert saved["columns"] == list(bench.COLUMNS)
    assert {"num", "seed", "budgets", "t_end", "checkpoint", "process", "reference", "dtype",
            "seconds", "diffusers"} <= set(saved["meta"])
    assert saved["meta"]["t_end"] == pytest.approx(1e-3) and saved["meta"]["num"] == 4
    floor = saved["meta"]["reference"]["check_rms"]
    runs = {(r["sampler"], r["budget"]) for r in saved["rows"]}
    assert runs == {(name, b) for name in ("ddim", "dpm_solver++", "diffusers:ddim",
                                           "diffusers:euler") for b in BUDGETS} | {("ode", None)}
    for r in saved["rows"]:
        assert tuple(r) == bench.COLUMNS and r["problem"] == "model" and r["metric"] == "rms_error"
        assert math.isfinite(r["value"]) and r["value"] > 0 and r["seconds"] > 0
        assert r["floor"] == floor
        if r["budget"] is not None:            # the final denoise counts: budget met exactly
            assert r["nfe"] == r["budget"], r
    assert values(saved, "ddim")[10]["steps"] == 9             # 9 steps + 1 denoise
    assert values(saved, "diffusers:ddim")[10]["steps"] == 10  # its last step is the x0
    for name in ("rms_error", "time"):
        assert (out / f"model_{name}.png").stat().st_size > 5000
    md = (out / "model.md").read_text()
    assert "| `dpm_solver++` |" in md and "| `diffusers:ddim` |" in md and "final output" in md
    assert "rms_error at NFE 10: best" in stdout and "diffusers:" in stdout


def test_error_falls_with_nfe(ran):
    _, _, saved, _ = ran
    error = {b: r["value"] for b, r in values(saved, "dpm_solver++").items()}
    # default grid `auto` (quadratic): 195 -> 143 on this small network (logsnr fell below 0.7x)
    assert error[10] < 0.8 * error[5], error


def test_reference_self_check_is_recorded_and_far_below_the_errors(ran):
    _, out, saved, _ = ran
    ref = saved["meta"]["reference"]
    assert (ref["rtol"], ref["check_rtol"], ref["method"]) == (1e-5, pytest.approx(1e-4), "dopri5")
    assert ref["nfe"] > ref["check_nfe"] > 0
    smallest = min(r["value"] for r in saved["rows"] if r["budget"] is not None)
    assert 0 < ref["check_rms"] < 0.25 * smallest, (ref, smallest)
    assert ref["check_ratio"] == pytest.approx(ref["check_rms"] / smallest)
    assert saved["notes"][0].startswith("reference: ode (dopri5) at rtol = atol = 1e-05")
    assert saved["notes"][0] in (out / "model.md").read_text()


def test_stochastic_samplers_are_skipped_with_a_note(ran):
    _, _, saved, stdout = ran
    assert not values(saved, "ddpm")
    assert "note: ddpm: skipped (stochastic" in stdout


def test_diffusers_ddim_is_sdediff_ddim_on_diffusers_timesteps(ran):
    # the peer's default 'leading' grid starts at t = 0.801 (N = 5) or 0.901 (N = 10), not T:
    # sdediff's ddim on that grid reproduces the peer's error, and its own grid, from T, beats it
    pipe, out, saved, _ = ran
    stored = torch.load(out / "model_reference.pt")
    model, _ = sd.load_model(pipe)
    model.net.double()
    for budget in BUDGETS:
        peer = values(saved, "diffusers:ddim")[budget]
        r = sd.sample(model, x_T=stored["x_T"], sampler="ddim", schedule="leading",
                      steps=peer["steps"], return_info=True)
        assert r.nfe == peer["nfe"]
        assert rms(r.x, stored["reference"]) == pytest.approx(peer["value"], rel=1e-4)
        assert values(saved, "ddim")[budget]["value"] < peer["value"]


def test_diffusers_euler_on_linspace_timesteps_is_sdediff_ddim(ran):
    # at N = 10 Euler's timesteps 999, 888, ..., 0 are sdediff's uniform grid 1 -> 1/M, and an
    # Euler step in (x / alpha, sigma / alpha) is a DDIM step: the same 10 calls, the same output
    _, _, saved, _ = ran
    ours, theirs = values(saved, "ddim")[10], values(saved, "diffusers:euler")[10]
    assert theirs["nfe"] == ours["nfe"] == 10
    assert theirs["value"] == pytest.approx(ours["value"], rel=1e-4)


def test_peers_run_on_the_models_chain():
    discrete = sd.ScoreModel.from_fn(lambda x, t: -x, sd.DiscreteVPSDE("scaled_linear", 500,
                                                                      8.5e-4, 1.2e-2), "eps")
    chain, why = model_bench.peer_chain(discrete)
    assert why is None and chain.kind == "eps" and chain.time_of(499) == 1.0
    scheduler = chain.scheduler("diffusers:dpm_solver++")
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.num_train_timesteps == 500
    assert torch.allclose(scheduler.alphas_cumprod.double(), discrete.sde.alpha(
        discrete.sde.index_to_time(torch.arange(500))) ** 2, rtol=1e-6)
    # a continuous VP process: the 1000-step chain with abar_k = alpha((k + 1)/1000)^2
    continuous = sd.ScoreModel.from_fn(lambda x, t: -x, sd.VPSDE())
    chain, why = model_bench.peer_chain(continuous)
    assert why is None and chain.kind == "eps" and chain.time_of(0) == pytest.approx(1e-3)
    scheduler = chain.scheduler("diffusers:ddim")
    assert scheduler.config.prediction_type == "epsilon" and not scheduler.config.clip_sample
    times = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    assert torch.allclose(scheduler.alphas_cumprod.double(), continuous.sde.alpha(times) ** 2,
                          rtol=1e-4)                # diffusers' float32 cumulative product
    chain, why = model_bench.peer_chain(sd.ScoreModel.from_fn(lambda x, t: -x, sd.VESDE()))
    assert chain is None and "variance-preserving" in why




@pytest.mark.parametrize("argv, pattern", [
    (["--checkpoint", "{empty}"], r"no checkpoint at .*empty"),
    ([], r"give --problem \(gmm2d, gmm64, digits, model\) or --checkpoint PATH"),
    (["--checkpoint", "{empty}", "--dtype", "float16"],
     r"unknown --dtype 'float16'; allowed: float64, float32$"),
    (["--checkpoint", "{empty}", "--ref-tol", "0"], r"--ref-tol must be in \(0.0, 0.1\]"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, pattern):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    fails_with(capsys, ["bench", *argv, "--out", str(tmp_path / "never")], pattern)
    assert not (tmp_path / "never").exists()

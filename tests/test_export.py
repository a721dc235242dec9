"""Models out: ``sdediff train --model diffusers-unet`` and ``sdediff export`` write a diffusers
pipeline that sdediff and diffusers alone load to the same model; bad requests are one line."""

import json

import pytest
import torch

import sdediff as sd
from sdediff.cli import main
from sdediff.pretrained import default_checkpoint
from tests.test_cli import fails_with

diffusers = pytest.importorskip("diffusers")

# A small U-Net on 8x8 images: two torch threads only wait on each other on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    """A diffusers U-Net trained 50 steps on the digits (25, then resumed to 50: the resume path
    rebuilds the network from its saved config) and its exported pipeline: ``(run, pipeline)``."""
    root = tmp_path_factory.mktemp("export")
    run, out = root / "run", root / "pipeline"
    common = ["train", "--data", "digits", "--out", str(run), "--model", "diffusers-unet",
              "--batch-size", "4", "--checkpoint-every", "25", "--no-progress"]
    assert main(common + ["--steps", "25"]) == 0
    assert main(common + ["--steps", "50", "--resume"]) == 0
    assert main(["export", str(run), str(out)]) == 0
    return run, out


def test_diffusers_unet_run_trains_on_the_discrete_chain_and_resumes(exported):
    run, _ = exported
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000050"
    model, config = sd.load_model(run)
    assert config["net"]["name"] == "diffusers_unet"
    assert config["sde"] == sd.DiscreteVPSDE().config()
    assert config["prediction"] == "eps"


def test_diffusers_unet_resume_is_bit_for_bit(tmp_path):
    from safetensors.torch import load_file

    common = ["train", "--data", "digits", "--model", "diffusers-unet", "--batch-size", "2",
              "--checkpoint-every", "2", "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "straight"), "--steps", "4"]) == 0
    assert main(common + ["--out", str(tmp_path / "resumed"), "--steps", "2"]) == 0
    assert main(common + ["--out", str(tmp_path / "resumed"), "--steps", "4", "--resume"]) == 0
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (load_file(tmp_path / run / "checkpoints" / "step-00000004" / name)
                for run in ("straight", "resumed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_export_writes_a_ddpm_pipeline(exported):
    _, out = exported
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDPMScheduler"
    assert {k: scheduler[k] for k in ("num_train_timesteps", "beta_schedule", "beta_start",
                                      "beta_end", "trained_betas", "steps_offset",
                                      "prediction_type", "clip_sample")} == {
        "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
        "beta_end": 0.02, "trained_betas": None, "steps_offset": 0, "prediction_type": "epsilon",
        "clip_sample": False}
    assert not [p.name for p in out.parent.iterdir() if p.name.endswith(".partial")]


def test_export_round_trip_gives_the_same_samples(exported):
    run, out = exported
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    models = {"run": sd.load_model(run)[0], "pipeline folder": sd.load_model(out)[0],
              "diffusers": sd.ScoreModel.from_diffusers(pipe.unet, pipe.scheduler)}
    x_T = torch.randn((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        samples = {name: sd.sample(m, x_T=x_T, sampler="ddim", steps=10) for name, m in models.items()}
    reference = samples["run"]
    assert torch.isfinite(reference).all()
    for name, x in samples.items():
        rel = ((x - reference).abs().max() / reference.abs().max()).item()
        assert rel <= 1e-5, (name, rel)


def test_exported_pipeline_samples_with_diffusers_alone(exported):
    _, out = exported
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=5, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 8, 8)
    assert torch.isfinite(images).all()


def test_export_refuses_a_built_in_unet(capsys, tmp_path):
    fails_with(capsys, ["export", str(default_checkpoint()), str(tmp_path / "out")],
               r"export needs a run trained with --model diffusers-unet "
               r"\(this run's network is 'unet'\)")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_out(capsys, exported, tmp_path):
    run, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    fails_with(capsys, ["export", str(run), str(out)],
               r"'.*out' already exists and is not empty; allowed: a new or empty folder")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]     # no staging folder left behind


def test_train_diffusers_unet_refuses_points(capsys, tmp_path):
    fails_with(capsys, ["train", "--data", "moons", "--out", str(tmp_path / "r"), "--model",
                        "diffusers-unet", "--no-progress"],
               r"model 'diffusers-unet' needs images \(C, H, W\), got points of shape \(2,\); "
               r"use --model mlp")


def test_train_diffusers_unet_refuses_another_process(capsys, tmp_path):
    fails_with(capsys, ["train", "--data", "digits", "--out", str(tmp_path / "r"), "--model",
                        "diffusers-unet", "--sde", "vp", "--no-progress"],
               r"--sde 'vp' cannot train --model diffusers-unet; allowed: discrete ")
    fails_with(capsys, ["train", "--data", "digits", "--out", str(tmp_path / "r"), "--model",
                        "diffusers-unet", "--prediction", "score", "--no-progress"],
               r"--prediction 'score' cannot train --model diffusers-unet .*allowed: eps, v, x0")
    assert not (tmp_path / "r").exists()


def test_encode_then_decode_a_loaded_pipeline_returns_the_input(exported):
    """The round trip through the loaded pipeline's probability flow, on the model's own samples
    (inversion of generated images). Real held-out digits are off this 50-step model's flow, where
    it amplifies the solver's error about 3000-fold (3.4e-3 at rtol 1e-6; docs/interop.md)."""
    _, out = exported
    model = sd.load_model(out)[0]
    z0 = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    x = sd.sample(model, x_T=z0, sampler="dpm_solver++", steps=20, t_end=model.sde.t_min,
                  denoise=False)                                   # a sample at t_min = 1/M
    tol = {"rtol": 1e-6, "atol": 1e-6}
    back = sd.decode(model, sd.encode(model, x, **tol), **tol)
    assert ((back - x).abs().max() / x.abs().max()).item() <= 1e-3

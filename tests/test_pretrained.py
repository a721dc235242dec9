"""The models bundled in the package: present, small, loadable, the CLI's default, and good."""

import torch

import sdediff as sd
from sdediff.bench.digit_features import digits_frechet
from sdediff.checkpoint import load_model
from sdediff.cli import main
from sdediff.pretrained import DIGITS, POINTS, bundled, default_checkpoint


def test_the_bundle_is_in_the_package_and_at_most_5_mb():
    files = {f.name: f.stat().st_size for f in DIGITS.iterdir()}
    assert set(files) == {"config.json", "ema.safetensors"}
    assert sum(files.values()) <= 5_000_000
    model, config = load_model(default_checkpoint())
    assert config["data"]["name"] == "digits" and tuple(config["data"]["shape"]) == (1, 8, 8)
    assert isinstance(model, sd.ScoreModel)


def test_sample_without_checkpoint_uses_the_bundle(capsys, tmp_path):
    assert main(["sample", "--sampler", "dpm_solver++", "--steps", "9", "--num", "8",
                 "--out", str(tmp_path / "digits.npy"), "--no-progress"]) == 0
    assert "NFE 10" in capsys.readouterr().out
    assert (tmp_path / "digits.png").stat().st_size > 500


def test_ten_nfe_samples_are_digits_of_every_class():
    model, _ = load_model(default_checkpoint())
    x = sd.sample(model, shape=(300, 1, 8, 8), sampler="unipc", steps=9,
                  generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    quality = digits_frechet(x)
    assert quality.ratio < 1.5                         # measured 1.0 at 1000 samples (docs)
    assert min(quality.classes) > 0.03 and max(quality.classes) < 0.2


def test_the_bundle_is_class_conditional_and_sample_class_guides(capsys, tmp_path):
    """One model for both uses: conditional (10 digits plus the null class) and unconditional."""
    import numpy as np

    from sdediff.bench.digit_features import predict_digits

    model, config = load_model(default_checkpoint())
    assert model.num_classes == 10 and config["train"]["label_dropout"] == 0.1
    out = tmp_path / "threes.npy"
    assert main(["sample", "--class", "3", "--guidance", "2.0", "--sampler", "dpm_solver++",
                 "--steps", "9", "--num", "20", "--out", str(out), "--no-progress"]) == 0
    assert "of class 3 (guidance 2), NFE 10 per sample (20 network evaluations per sample)" in \
        capsys.readouterr().out
    x = torch.from_numpy(np.load(out)).clamp(-1, 1)
    assert float((predict_digits(x) == 3).double().mean()) >= 0.9


def test_the_points_bundle_is_small_and_near_the_floor():
    """The demo's 8gaussians model: 2000 unipc samples within 3 points of held-out data's off-mode
    fraction (1.1%; measured 3.9% at 1000, the exact score 1.2%) and its mean log-density."""
    from sdediff.bench.metrics import mean_log_density, off_mode_fraction
    from sdediff.data import toy_distribution

    files = {f.name: f.stat().st_size for f in POINTS.iterdir()}
    assert set(files) == {"config.json", "ema.safetensors"} and sum(files.values()) <= 2_000_000
    model, config = load_model(bundled("8gaussians"))
    assert config["data"]["name"] == "8gaussians" and config["step"] == 30000
    mixture = toy_distribution("8gaussians")
    x = sd.sample(model, shape=(2000, 2), sampler="unipc", steps=25,
                  generator=torch.Generator().manual_seed(5))
    assert off_mode_fraction(x, mixture) < 0.011 + 0.03
    assert mean_log_density(x, mixture) > -0.31 - 0.4


def test_an_unknown_bundle_is_named():
    import pytest

    with pytest.raises(ValueError, match="bundled model.*'mnist'.*digits, 8gaussians"):
        bundled("mnist")

"""`sdediff encode / decode / likelihood / interpolate` on tiny checkpoints (points and images):
outputs written, numbers printed, and every user error one line with exit status 2."""

import json
import re

import numpy as np
import pytest

from sdediff.cli import load_examples, main
from tests.test_cli import fails_with

FAST = ["--method", "rk4", "--steps", "4", "--no-progress"]   # 16 network calls


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def points_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("runs") / "gmm"
    assert main(["train", "--data", "gmm", "--out", str(out), "--steps", "3", "--batch-size", "64",
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--data", "digits", "--out", str(out), "--steps", "3", "--batch-size",
                 "8", "--no-progress"]) == 0
    return out


def number_after(text, label):
    return float(re.search(label + r" ([0-9.e+-]+)", text).group(1))


def test_points_encode_then_decode_round_trip(capsys, points_run, tmp_path):
    lat = tmp_path / "lat.npy"
    assert main(["encode", "--checkpoint", str(points_run), "--data", "gmm", "--num", "32",
                 "--out", str(lat), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "encoded 32 examples of gmm (held-out split) with ode (t_min 1e-05): NFE" in out
    assert np.load(lat).shape == (32, 2)
    meta = json.loads(lat.with_suffix(".json").read_text())
    assert meta["t_min"] == 1e-5 and meta["sampler"] == "ode" and meta["data"] == "gmm"
    assert main(["decode", "--checkpoint", str(points_run), "--input", str(lat),
                 "--out", str(tmp_path / "dec.png"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "decoded 32 latents with ode (t_min 1e-05)" in out
    assert number_after(out, "relative error max") < 1e-2
    assert np.load(tmp_path / "dec.npy").shape == (32, 2)
    assert (tmp_path / "dec.png").stat().st_size > 1000


def test_points_likelihood_exact_is_in_nats(capsys, points_run, tmp_path):
    nll = tmp_path / "nll.npy"
    assert main(["likelihood", "--checkpoint", str(points_run), "--data", "gmm", "--num", "16",
                 "--divergence", "exact", "--out", str(nll), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "likelihood of 16 examples of gmm (held-out split) (exact divergence, t_min 1e-05)" in out
    assert re.search(r"NLL -?[0-9.]+ \+- [0-9.e-]+ nats \(standard error over examples\)", out)
    assert "continuous data (no number of levels): no bits/dim" in out
    assert np.load(nll).shape == (16,)


def test_digits_encode_decode_likelihood_interpolate(capsys, digits_run, tmp_path):
    lat = tmp_path / "lat.npy"
    assert main(["encode", "--checkpoint", str(digits_run), "--data", "digits", "--num", "4",
                 "--out", str(lat), *FAST]) == 0
    assert "NFE 16" in capsys.readouterr().out
    assert np.load(lat).shape == (4, 1, 8, 8)
    # decode takes the encoder's solver and t_min from lat.json
    assert main(["decode", "--checkpoint", str(digits_run), "--input", str(lat),
                 "--out", str(tmp_path / "dec.png"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "NFE 16" in out and "round trip against the encoded inputs: relative error" in out
    assert np.load(tmp_path / "dec.npy").shape == (4, 1, 8, 8)
    assert (tmp_path / "dec.png").stat().st_size > 500

    assert main(["likelihood", "--checkpoint", str(digits_run), "--data", "digits", "--num", "4",
                 "--probes", "2", *FAST]) == 0
    out = capsys.readouterr().out
    assert "(hutchinson divergence, 2 rademacher probes, t_min 1e-05): NFE 16" in out
    assert "Hutchinson estimator standard error of the mean NLL" in out
    assert re.search(r"[0-9.]+ \+- [0-9.e-]+ bits/dim \(17 levels over \[-1, 1\], dequantized: "
                     r"offset \+3\.0875\)", out), out
    nats, bits = number_after(out, "NLL"), float(re.search(r"\n  ([0-9.]+) \+-", out).group(1))
    assert bits == pytest.approx(nats / (64 * np.log(2)) + np.log2(8.5), abs=1e-3)

    strip = tmp_path / "strip.png"
    assert main(["interpolate", "--checkpoint", str(digits_run), "--data", "digits", "--pair",
                 "0", "1", "--pair", "2", "3", "--num-steps", "5", "--out", str(strip), "--steps", "4",
                 "--no-progress"]) == 0         # the default encoder, bdia
    assert "interpolated 2 pair(s)" in capsys.readouterr().out
    assert np.load(strip.with_suffix(".npy")).shape == (2, 5, 1, 8, 8)
    assert strip.stat().st_size > 500


def test_exact_encoder_round_trip_through_the_cli(capsys, digits_run, tmp_path):
    """`--sampler bdia`: the latent pair (N, 2, ...) written, read back by decode, the round trip
    at float32 rounding; the encoder's error estimate printed."""
    lat = tmp_path / "pair.npy"
    assert main(["encode", "--checkpoint", str(digits_run), "--data", "digits", "--num", "4",
                 "--sampler", "bdia", "--steps", "6", "--out", str(lat), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "with bdia" in out and "NFE 6" in out
    assert re.search(r"estimated relative latent error max [0-9.e+-]+ \(3 more NFE\)", out), out
    assert np.load(lat).shape == (4, 2, 1, 8, 8)
    assert main(["decode", "--checkpoint", str(digits_run), "--input", str(lat),
                 "--out", str(tmp_path / "dec.png"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "decoded 4 latents with bdia" in out and "NFE 5" in out
    assert number_after(out, "relative error max") < 1e-5
    fails_with(capsys, ["decode", "--checkpoint", str(digits_run), "--input", str(lat), "--sampler",
                        "ddim"], r"latents in '.*pair.npy' have shape \(4, 2, 1, 8, 8\); the checkpoint "
                                 r"with sampler 'ddim' needs \(N, 1, 8, 8\)")


def test_image_folder_input_is_8_bit(capsys, digits_run, tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(g.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    assert main(["likelihood", "--checkpoint", str(digits_run), "--input", str(folder),
                 *FAST]) == 0
    out = capsys.readouterr().out
    assert "likelihood of 3 examples" in out
    assert "(256 levels over [-1, 1], dequantized: offset +7.0000)" in out
    assert main(["encode", "--checkpoint", str(digits_run), "--input", str(folder), "--out",
                 str(tmp_path / "z.npy"), *FAST]) == 0
    assert np.load(tmp_path / "z.npy").shape == (3, 1, 8, 8)


def test_npy_input_is_read_in_file_order(tmp_path):
    x = np.random.default_rng(1).normal(size=(25, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    loaded, what, n_levels, _ = load_examples(None, str(tmp_path / "x.npy"), None,
                                              {"data": {"shape": [2]}})
    assert np.array_equal(loaded.numpy(), x) and n_levels is None


def test_errors_are_one_line(capsys, points_run, digits_run, tmp_path):
    digits, points = str(digits_run), str(points_run)
    np.save(tmp_path / "pts.npy", np.zeros((5, 2), dtype=np.float32))
    (tmp_path / "notes.txt").write_text("x")
    fails_with(capsys, ["encode", "--checkpoint", digits],
               r"give exactly one of --input FILE\|FOLDER and --data NAME")
    fails_with(capsys, ["encode", "--checkpoint", digits, "--data", "digits", "--input",
                        str(tmp_path / "pts.npy")], r"give exactly one of")
    fails_with(capsys, ["encode", "--checkpoint", digits, "--input", str(tmp_path / "pts.npy")],
               r"holds examples of shape \(2,\) but the checkpoint models \(1, 8, 8\)")
    fails_with(capsys, ["encode", "--checkpoint", digits, "--input", str(tmp_path / "nope.npy")],
               r"input '.*nope.npy' does not exist")
    fails_with(capsys, ["encode", "--checkpoint", points, "--data", "gmm", "--num", "4",
                        "--t-min", "2"], r"t_min must be in \(0.0, 1.0\), got 2.0")
    fails_with(capsys, ["encode", "--checkpoint", points, "--data", "gmm", "--num", "4",
                        "--sampler", "heun"], r"sampler 'heun' cannot run forward in time")
    fails_with(capsys, ["encode", "--checkpoint", points, "--data", "gmm", "--num", "4",
                        "--method", "rk5"], r"unknown method 'rk5'; allowed: dopri5")
    fails_with(capsys, ["encode", "--checkpoint", points, "--data", "gmm", "--num", "0"],
               r"--num must be >= 1, got 0")
    fails_with(capsys, ["decode", "--checkpoint", points, "--input", str(tmp_path / "notes.txt")],
               r"must be a latents .npy file written by `sdediff encode`")
    fails_with(capsys, ["decode", "--checkpoint", digits, "--input", str(tmp_path / "pts.npy")],
               r"latents in .* have shape \(5, 2\); the checkpoint with sampler 'ode' needs "
               r"\(N, 1, 8, 8\)")
    fails_with(capsys, ["likelihood", "--checkpoint", points, "--data", "gmm", "--probes", "0"],
               r"probes must be >= 1, got 0")
    fails_with(capsys, ["likelihood", "--checkpoint", points, "--data", "gmm", "--divergence",
                        "exact", "--probes", "4"], r"probes=4 given with divergence='exact'")
    fails_with(capsys, ["likelihood", "--checkpoint", points, "--data", "gmm",
                        "--divergence", "trace"], r"invalid choice: 'trace'")
    fails_with(capsys, ["likelihood", "--checkpoint", points, "--data", "gmm", "--num", "4",
                        "-o", "tol=1"], r"unknown option 'tol' for sampler 'dpm_solver\+\+'")
    fails_with(capsys, ["likelihood", "--checkpoint", points, "--data", "gmm", "--num", "4",
                        "--sampler", "bdia"], r"log_likelihood: sampler 'bdia' cannot carry the likelihood")
    fails_with(capsys, ["interpolate", "--checkpoint", points, "--data", "gmm", "--pair", "0",
                        "99999"], r"--pair index must be <= ")
    fails_with(capsys, ["interpolate", "--checkpoint", points, "--data", "gmm",
                        "--num-steps", "1"], r"--num-steps must be >= 2, got 1")

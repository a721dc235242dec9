"""The `sdediff` command: outputs written, and every user error one line with exit status 2."""

import re
import subprocess
import sys

import numpy as np
import pytest

import sdediff as sd
from sdediff.cli import main


def fails_with(capsys, argv, pattern):
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdediff: error: "), err
    assert pytest.importorskip("re").search(pattern, err), err


def test_unknown_data_set_is_one_line(capsys, tmp_path):
    fails_with(capsys, ["train", "--data", "nope", "--out", str(tmp_path / "r")],
               r"unknown data set 'nope'; allowed: swissroll, moons, 8gaussians, checkerboard, "
               r"gmm, digits, mnist, mnist:FOLDER, or a path")


def test_console_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sdediff.cli", "train", "--data", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--data", "digits", "--out", str(out), "--steps", "3",
                 "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]) == 0
    return out


def test_train_writes_checkpoint_log_and_plot(digits_run):
    assert (digits_run / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert (digits_run / "loss.csv").read_text().count("\n") == 4  # header + 3 steps
    assert (digits_run / "loss.png").stat().st_size > 1000


def test_train_refuses_to_overwrite_and_resumes(capsys, digits_run):
    fails_with(capsys, ["train", "--data", "digits", "--out", str(digits_run)],
               r"already holds a training run; pass --resume")
    assert main(["train", "--data", "digits", "--out", str(digits_run), "--steps", "4",
                 "--resume", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert (digits_run / "checkpoints" / "latest").read_text().strip() == "step-00000004"


def test_sample_writes_image_grid(capsys, digits_run, tmp_path):
    out = tmp_path / "digits.npy"
    assert main(["sample", "--checkpoint", str(digits_run), "--sampler", "ddim", "--steps", "3",
                 "--num", "6", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (6, 1, 8, 8)
    assert out.with_suffix(".png").stat().st_size > 500
    assert "NFE 4" in capsys.readouterr().out  # 3 steps + the final denoise


def test_sample_errors_are_one_line(capsys, digits_run, tmp_path):
    fails_with(capsys, ["sample", "--checkpoint", str(digits_run), "--sampler", "dpm"],
               r"unknown sampler 'dpm'; allowed: ")
    fails_with(capsys, ["sample", "--checkpoint", str(digits_run), "--sampler", "ddim", "-o", "eta=2"],
               r"eta must be in \[0.0, 1.0\], got 2.0")
    fails_with(capsys, ["sample", "--checkpoint", str(digits_run), "-o", "churn"],
               r"must look like key=value")
    fails_with(capsys, ["sample", "--checkpoint", str(tmp_path / "missing")],
               r"no checkpoint at .*missing")
    fails_with(capsys, ["sample", "--checkpoint", str(digits_run), "--num", "0"],
               r"--num must be >= 1, got 0")
    fails_with(capsys, ["train", "--data", "digits", "--out", str(tmp_path), "--steps", "x"],
               r"argument --steps: invalid int value: 'x'")


def test_samplers_table_lists_every_sampler(capsys):
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    for name in sd.samplers.available():
        assert f"\n{name} " in out


def test_demo_small(capsys, tmp_path):
    """The points part on the bundled model: every sampler, scored by the mixture metrics beside
    the same sampler on the exact score, and held-out data's row."""
    assert main(["demo", "--out", str(tmp_path), "--num", "100", "--no-images", "--no-progress"]) == 0
    for name in ("samplers.png", "trajectories.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 500
    report = (tmp_path / "report.md").read_text()
    assert "The bundled MLP (`sdediff/pretrained/8gaussians`, trained 30000 steps" in report
    assert "off_mode_%  exact_score_off_mode_%  log_p" in report
    for name in sd.samplers.available():
        assert re.search(rf"\n{re.escape(name)} .* \d+\.\d +\d+\.\d +-?\d+\.\d\d +-?\d+\.\d\d", report), name
    held_out = re.search(r"\nheld-out data .* (\d+\.\d) +- +(-\d+\.\d\d)", report)
    assert held_out and float(held_out.group(1)) < 5 and -1 < float(held_out.group(2)) < 0
    assert "At the floor (off-mode within 1 point of held-out data's)" in report


def test_demo_trains_with_steps(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sd.samplers, "available", lambda: ["ddim", "unipc"])     # the training is the point
    assert main(["demo", "--out", str(tmp_path), "--steps", "30", "--num", "50", "--no-images",
                 "--no-progress", "--data", "swissroll"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "An MLP trained here, 30 steps" in report and "(model/loss.png)" in report
    assert (tmp_path / "model" / "loss.png").stat().st_size > 500
    assert "off_mode" not in report                 # swissroll has no known density


@pytest.mark.slow   # 45-90 s on 2 cores: `pytest -m slow`
def test_demo_images_part_with_the_bundled_model(capsys, tmp_path, monkeypatch):
    from sdediff.cli import demo

    monkeypatch.setattr(demo, "IMAGE_SAMPLERS", ("ddim",))
    monkeypatch.setattr(demo, "IMAGE_NUM", 24)
    monkeypatch.setattr(demo, "ROUND_TRIP", 3)
    monkeypatch.setattr(demo, "PAIRS", 2)
    monkeypatch.setattr(demo, "LIKELIHOOD_NUM", 3)
    monkeypatch.setattr(demo, "INPAINT_NUM", 3)
    monkeypatch.setattr(demo, "GRID_PER_CLASS", 2)
    assert main(["demo", "--out", str(tmp_path), "--steps", "20", "--num", "50",
                 "--no-progress"]) == 0
    for name in ("digits_samplers.png", "digits_round_trip.png", "digits_interpolation.png",
                 "digits_inpainting.png", "digits_guidance.png"):
        assert (tmp_path / name).stat().st_size > 1000
    report = (tmp_path / "report.md").read_text()
    assert "## Images: the bundled digits model" in report
    assert re.search(r"ddim\s+9\s+10\s", report)                  # 9 steps + final denoise = 10 NFE
    error = float(re.search(r"relative error max (\S+),", report).group(1))
    assert error < 0.1                                            # dopri5 at 1e-4
    exact = re.search(r"bdia sampler \(20 steps\): encode 20 NFE, decode 19 NFE, relative error max (\S+),",
                      report)
    assert exact and float(exact.group(1)) < 1e-4                # the exact inverse, float32
    bpd = float(re.search(r"Likelihood: (\S+) \+- ", report).group(1))
    assert 0 < bpd < 4.09                                         # beats a uniform density
    # the bundled model is conditional: inpainting (every method) and the class x guidance grid
    assert "### Inpainting" in report and "### Class-conditional digits" in report
    assert all(re.search(rf"{method}\S*.*\d/3", report) for method in ("replacement", "repaint", "smc"))
    assert len(re.findall(r"^[0124]\s+20\s+(20|40)\s+[01]\.\d+", report, re.M)) == 4


def test_a_bug_keeps_its_traceback_and_input_errors_are_one_line(monkeypatch, capsys):
    """Input errors (the library's own checks) are one line and exit 2; an exception no check
    raised is a bug and propagates with its traceback; SDEDIFF_TRACEBACK=1 shows every one."""
    import sdediff.cli.sample as sample_commands
    from sdediff.checks import InputValueError, check_choice

    def buggy(args):
        return {}["missing"]                      # a KeyError: no input check raised it

    def bad_input(args):
        check_choice("colour", "mauve", ("red", "green"))

    monkeypatch.setattr(sample_commands, "cmd_samplers", buggy)
    with pytest.raises(KeyError, match="missing"):
        main(["samplers"])
    monkeypatch.setattr(sample_commands, "cmd_samplers", bad_input)
    assert main(["samplers"]) == 2
    assert capsys.readouterr().err == "sdediff: error: unknown colour 'mauve'; allowed: red, green\n"
    monkeypatch.setenv("SDEDIFF_TRACEBACK", "1")
    with pytest.raises(InputValueError, match="unknown colour 'mauve'"):
        main(["samplers"])


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"sdediff {sd.__version__}"


def test_ctrl_c_in_training_exits_130_and_says_how_to_resume(capsys, tmp_path, monkeypatch):
    from sdediff.train import Trainer

    run = tmp_path / "run"
    assert main(["train", "--data", "gmm", "--out", str(run), "--steps", "3", "--batch-size", "16",
                 "--no-progress"]) == 0
    capsys.readouterr()

    def stop(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", stop)
    assert main(["train", "--data", "gmm", "--out", str(run), "--steps", "6", "--resume",
                 "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert re.search(r"sdediff: interrupted; the last checkpoint, .*step-0+3, holds step 3; continue "
                     r"with: sdediff train --data gmm --out .*run --resume --steps 6", err), err


def test_an_output_name_of_another_kind_is_refused_before_any_work(capsys, tmp_path):
    fails_with(capsys, ["sample", "--out", str(tmp_path / "s.txt"), "--num", "2"],
               r"--out '.*s\.txt': this command writes \.npy or \.pt files; name it '.*s\.npy'")
    fails_with(capsys, ["decode", "--input", str(tmp_path / "z.npy"), "--out", str(tmp_path / "dd.jpg")],
               r"--out '.*dd\.jpg': this command writes \.png or \.npy files; name it '.*dd\.png'")
    fails_with(capsys, ["encode", "--data", "digits", "--out", str(tmp_path / "z.png")],
               r"--out '.*z\.png': this command writes \.npy files; name it '.*z\.npy'")
    assert not list(tmp_path.iterdir())


def test_silent_surprises_are_errors_or_warnings(capsys, tmp_path):
    """Issue 19 item 11: each surprise a new user met is now said."""
    fails_with(capsys, ["sample", "--seed", "-1", "--num", "2", "--out", str(tmp_path / "s.npy")],
               r"--seed must be >= 0, got -1")
    fails_with(capsys, ["encode", "--data", "digits", "--num", "100000", "--out", str(tmp_path / "z.npy")],
               r"--num 100000 exceeds the 359 examples of digits \(held-out split\); pass --num 359 or "
               r"fewer")
    run = tmp_path / "run"
    assert main(["train", "--data", "gmm", "--out", str(run), "--steps", "2", "--batch-size", "16",
                 "--no-progress"]) == 0
    capsys.readouterr()
    fails_with(capsys, ["train", "--data", "gmm", "--out", str(run), "--resume", "--no-progress"],
               r"the run's --steps 2 leaves nothing to train: the checkpoint in '.*run' is at step 2; "
               r"pass --steps above 2")
    # a diverging run says so
    assert main(["train", "--data", "gmm", "--out", str(tmp_path / "hot"), "--steps", "30",
                 "--batch-size", "16", "--lr", "1e3", "--no-progress"]) == 0
    assert re.search(r"sdediff: warning: the loss rose from [0-9.e+]+ \(step \d+\) to [0-9.e+]+ "
                     r"\(step 30\): training diverged; lower --lr \(this run: 1000\)",
                     capsys.readouterr().err)
    # latents without their .json: decoded with a note, and a corrupt .json is named
    z = tmp_path / "z.npy"
    assert main(["encode", "--checkpoint", str(run), "--data", "gmm", "--num", "4", "--out", str(z),
                 "--method", "rk4", "--steps", "2", "--no-progress"]) == 0
    assert "sdediff: warning: encode: the latent's estimated relative error" in capsys.readouterr().err
    z.with_suffix(".json").write_text("{\n")
    fails_with(capsys, ["decode", "--checkpoint", str(run), "--input", str(z), "--out",
                        str(tmp_path / "d.png")], r"'.*z\.json' \(how the latents were encoded\) is not "
                                                  r"valid JSON")
    z.with_suffix(".json").unlink()
    assert main(["decode", "--checkpoint", str(run), "--input", str(z), "--out", str(tmp_path / "d.png"),
                 "--method", "rk4", "--steps", "2", "--no-progress"]) == 0
    assert "note: no '" in capsys.readouterr().err


def test_every_flag_has_help_with_its_default(monkeypatch):
    """Issue 19 item 12: no flag without a help text, and each default shown."""
    import argparse

    monkeypatch.setenv("COLUMNS", "400")             # no line wrapping inside a default

    from sdediff.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"sdediff {name} {action.option_strings or action.dest}: no help"
        text = parser.format_help()
        for action in parser._actions:
            default = action.default
            if default not in (None, False, argparse.SUPPRESS, []) and action.option_strings:
                assert "default" in (action.help or "").lower() or f"(default: {default})" in " ".join(
                    text.split()), f"sdediff {name} {action.option_strings}: its default {default!r}"

"""Safe loading: no checkpoint runs code, and every broken checkpoint is a clear error.

A crafted pickle whose unpickling creates a folder (a visible side effect) is put in place of
each file of a checkpoint and given to every loading path, API and CLI; the folder must never
appear. A positive control shows the payload does run when unpickled the unsafe way.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

import sdediff as sd
from sdediff.checkpoint import (
    load_model,
    load_optimizer_state,
    load_weights,
    read_config,
    resolve_checkpoint,
)
from sdediff.cli import main
from sdediff.nets import MLP, build_net

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: the side effect the tests look for."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def raw_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state": {0: Payload(marker)}, "param_groups": []})


def torch_pickle(marker: Path, path: Path) -> None:
    torch.save({"state": {0: {"exp_avg": Payload(marker)}}, "param_groups": []}, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("load") / "run"
    assert main(["train", "--data", "8gaussians", "--out", str(out), "--steps", "2",
                 "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]) == 0
    return out


def copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    return dst, resolve_checkpoint(dst)


def set_digest(folder: Path, name: str) -> None:
    """Record the current digest of ``name`` in config.json, as a forger would."""
    config = json.loads((folder / "config.json").read_text())
    config["sha256"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(config))


def test_the_payload_does_run_when_unpickled_unsafely(tmp_path):
    pickle.loads(raw_pickle(tmp_path / "a"))
    torch_pickle(tmp_path / "b", tmp_path / "b.pt")
    torch.load(tmp_path / "b.pt", weights_only=False)
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


def api_paths(run: Path, folder: Path):
    net = build_net(read_config(folder)["net"])
    return {
        "load_model": lambda: load_model(run),
        "load_model(ema=False)": lambda: load_model(run, ema=False),
        "load_model(folder)": lambda: load_model(folder),
        "Trainer.resume": lambda: sd.Trainer(build_net(read_config(folder)["net"]), sd.VPSDE(),
                                             torch.zeros(4, 2), run, progress=False).resume(),
        "load_weights(model)": lambda: load_weights(net, folder / "model.safetensors"),
        "load_weights(ema)": lambda: load_weights(net, folder / "ema.safetensors"),
        "load_optimizer_state": lambda: load_optimizer_state(folder / "optimizer.pt"),
    }


def cli_paths(run: Path, tmp_path: Path):
    ck = ["--checkpoint", str(run)]
    z = tmp_path / "z.npy"
    import numpy as np

    np.save(z, np.zeros((2, 2), dtype=np.float32))
    return {
        "sample": ["sample", *ck, "--num", "2", "--steps", "2", "--out", str(tmp_path / "s.npy")],
        "train --resume": ["train", "--data", "8gaussians", "--out", str(run), "--steps", "4",
                           "--resume", "--no-progress"],
        "encode": ["encode", *ck, "--data", "8gaussians", "--num", "2",
                   "--out", str(tmp_path / "e.npy")],
        "decode": ["decode", *ck, "--input", str(z), "--out", str(tmp_path / "d.png")],
        "likelihood": ["likelihood", *ck, "--data", "8gaussians", "--num", "2"],
        "interpolate": ["interpolate", *ck, "--data", "8gaussians", "--num", "2",
                        "--out", str(tmp_path / "i.png")],
    }


# (file replaced, how the payload is written, whether config.json's digest is forged to match)
PLANTS = [
    ("optimizer.pt", "torch", True), ("optimizer.pt", "raw", True),
    ("optimizer.pt", "torch", False),
    ("model.safetensors", "raw", True), ("ema.safetensors", "raw", True),
    ("ema.safetensors", "torch", True), ("model.safetensors", "torch", False),
]


#: The API paths that open each file.
READERS = {
    "model.safetensors": {"load_model(ema=False)", "Trainer.resume", "load_weights(model)"},
    "ema.safetensors": {"load_model", "load_model(folder)", "Trainer.resume", "load_weights(ema)"},
    "optimizer.pt": {"Trainer.resume", "load_optimizer_state"},
}


@pytest.mark.filterwarnings("error:Detected pickle protocol")     # the loader keeps it quiet
@pytest.mark.parametrize("file,kind,forged", PLANTS)
def test_crafted_pickle_never_runs(run, tmp_path, capsys, file, kind, forged):
    copy, folder = copy_run(run, tmp_path)
    marker = tmp_path / "pwned"
    if kind == "raw":
        (folder / file).write_bytes(raw_pickle(marker))
    else:
        torch_pickle(marker, folder / file)
    if forged:
        set_digest(folder, file)
    refused = set()
    for name, call in api_paths(copy, folder).items():
        try:
            call()
        except ValueError as err:
            refused.add(name)
            assert re.search(r"refusing to load|cannot read|does not match the SHA-256", str(err)), \
                (name, str(err))
            assert str(folder) in str(err) or file in str(err), (name, str(err))
        assert not marker.exists(), f"{name} ran the pickle in {file}"
    assert refused == READERS[file]  # every path that opens `file` refused it
    # Every command opens the EMA weights; only `train --resume` the model and optimizer files.
    for name, argv in cli_paths(copy, tmp_path).items():
        if file != "ema.safetensors" and name != "train --resume":
            continue
        code = main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"`sdediff {name}` ran the pickle in {file}"
        assert code == 2 and err.count("\n") == 1 and err.startswith("sdediff: error: "), \
            (name, code, err)


def test_npy_data_with_pickled_objects_is_refused(tmp_path, capsys):
    import numpy as np

    marker = tmp_path / "pwned"
    array = np.empty((4, 2), dtype=object)
    array[0, 0] = Payload(marker)
    np.save(tmp_path / "evil.npy", array, allow_pickle=True)
    assert main(["train", "--data", str(tmp_path / "evil.npy"), "--out", str(tmp_path / "r"),
                 "--steps", "1", "--no-progress"]) == 2
    assert "cannot read" in capsys.readouterr().err and not marker.exists()


def expect_error(call, error, pattern):
    with pytest.raises(error) as info:
        call()
    assert re.search(pattern, str(info.value)), str(info.value)


def cli_fails(capsys, argv, pattern):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdediff: error: "), err
    assert re.search(pattern, err), err


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def mismatched_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["net"]["hidden"] = 64
    (folder / "config.json").write_text(json.dumps(config))


def newer_version(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))


def without_digests(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    del config["sha256"]
    (folder / "config.json").write_text(json.dumps(config))


BROKEN = {
    "truncated weights": (lambda f: truncate(f / "ema.safetensors"), ValueError,
                          r"ema.safetensors' does not match the SHA-256 .* truncated or corrupt"),
    "truncated weights, no digest": (
        lambda f: (without_digests(f), truncate(f / "ema.safetensors")), ValueError,
        r"cannot read '.*ema.safetensors' as safetensors weights .*truncated, corrupt"),
    "flipped byte in a weight": (lambda f: flip_last_byte(f / "ema.safetensors"), ValueError,
                                 r"does not match the SHA-256"),
    "empty weights file": (lambda f: (without_digests(f), (f / "ema.safetensors").write_bytes(b"")),
                           ValueError, r"cannot read .* as safetensors weights"),
    "truncated config": (lambda f: truncate(f / "config.json"), ValueError,
                         r"config.json' is not valid JSON .* truncated or corrupt"),
    "config does not match weights": (mismatched_config, ValueError,
                                      r"do not fit the network 'mlp' described by the config: "
                                      r".* has shape \(256, 2\), the network needs \(64, 2\)"),
    "newer format version": (newer_version, ValueError,
                             r"has format version 99; this sdediff reads versions up to 1 "
                             r"\(upgrade sdediff\)"),
    "missing weights file": (lambda f: (f / "ema.safetensors").unlink(), FileNotFoundError,
                             r"ema.safetensors' is missing; the checkpoint is incomplete"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_checkpoint_is_a_clear_error(run, tmp_path, capsys, case):
    copy, folder = copy_run(run, tmp_path)
    damage, error, pattern = BROKEN[case]
    damage(folder)
    expect_error(lambda: load_model(copy), error, pattern)
    cli_fails(capsys, ["sample", "--checkpoint", str(copy), "--num", "2",
                       "--out", str(tmp_path / "s.npy")], pattern)


@pytest.mark.parametrize("damage,digest,pattern", [
    (truncate, False, r"optimizer.pt' as an optimizer state .*truncated or corrupt"),
    (truncate, True, r"optimizer.pt' does not match the SHA-256"),
    # a flipped byte the zip reader does not notice: only the digest catches it
    (flip_last_byte, True, r"optimizer.pt' does not match the SHA-256"),
])
def test_broken_optimizer_state_stops_resume(run, tmp_path, capsys, damage, digest, pattern):
    copy, folder = copy_run(run, tmp_path)
    if not digest:
        without_digests(folder)  # reach the parser itself
    damage(folder / "optimizer.pt")
    cli_fails(capsys, ["train", "--data", "8gaussians", "--out", str(copy), "--steps", "4",
                       "--resume", "--no-progress"], pattern)


def test_latest_pointing_outside_the_run_is_refused(run, tmp_path, capsys):
    copy, _ = copy_run(run, tmp_path)
    (copy / "checkpoints" / "latest").write_text("../../elsewhere\n")
    expect_error(lambda: resolve_checkpoint(copy), ValueError,
                 r"names '../../elsewhere'; expected a folder name like 'step-00001000'")


def test_checkpoint_written_before_digests_still_loads(run, tmp_path):
    copy, folder = copy_run(run, tmp_path)
    without_digests(folder)
    model, config = load_model(copy)
    assert "sha256" not in config and isinstance(model.net, MLP)

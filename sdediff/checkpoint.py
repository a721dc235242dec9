"""Checkpoints: safetensors weights plus a JSON config, written atomically.

A run directory holds ``checkpoints/step-XXXXXXXX/`` folders and a ``checkpoints/latest`` file
naming the newest complete one. Each folder has

- ``model.safetensors``, ``ema.safetensors``: network weights (safetensors never runs code);
- ``optimizer.pt``: the optimizer state, read back with ``torch.load(weights_only=True)``;
- ``config.json``: format version, network, process, prediction type, data description,
  training options and step.

A folder is written under a temporary name, every file fsync'ed, then renamed into place, and
only then is ``latest`` replaced (``os.replace`` of a small file, atomic on POSIX). A crash at any
point leaves the previous checkpoint intact and ``latest`` pointing at a complete folder. The two
newest folders are kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .score import ScoreModel
from .sde import sde_from_config

FORMAT_VERSION = 1
KEEP = 2
LATEST = "latest"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; weights are small, so copy.
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir, step: int, net, ema_net, optimizer, config: dict) -> Path:
    """Write the checkpoint of ``step`` atomically under ``run_dir/checkpoints``; return its folder."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    save_file(_state_dict(net), str(tmp / "model.safetensors"))
    save_file(_state_dict(ema_net), str(tmp / "ema.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "config.json").write_text(json.dumps(
        {"format_version": FORMAT_VERSION, "step": step, **config}, indent=2))
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():  # a rerun of the same step replaces its earlier folder
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    _write_text_atomic(root / LATEST, final.name + "\n")
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path) -> Path:
    """The checkpoint folder for ``path``: a checkpoint folder itself, or a run directory (its
    newest complete checkpoint)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = path / "checkpoints" / LATEST
    if latest.is_file():
        folder = path / "checkpoints" / latest.read_text().strip()
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(
        f"no checkpoint at {str(path)!r}; expected a run directory written by `sdediff train` "
        "(with checkpoints/latest) or a checkpoint folder holding config.json"
    )


def read_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {str(folder)!r} has format version {version!r}; this sdediff reads "
            f"versions up to {FORMAT_VERSION} (upgrade sdediff)"
        )
    return config


def load_weights(module: torch.nn.Module, file: Path) -> None:
    """Load safetensors weights into ``module``; a mismatch is an error, never silently skipped."""
    module.load_state_dict(load_file(str(file)), strict=True)


def load_model(path, ema: bool = True, device=None) -> tuple[ScoreModel, dict]:
    """A :class:`ScoreModel` (EMA weights by default) and the config of the checkpoint at ``path``."""
    from .nets import build_net  # networks are only needed when a model is rebuilt

    folder = resolve_checkpoint(path)
    config = read_config(folder)
    net = build_net(config["net"])
    load_weights(net, folder / ("ema.safetensors" if ema else "model.safetensors"))
    net.eval()
    if device is not None:
        net.to(device)
    return ScoreModel(net, sde_from_config(config["sde"]), prediction=config["prediction"]), config

"""Checkpoints: safetensors weights plus a JSON config, written atomically, read without pickle.

A run directory holds ``checkpoints/step-XXXXXXXX/`` folders and a ``checkpoints/latest`` file
naming the newest complete one. Each folder has

- ``model.safetensors``, ``ema.safetensors``: network weights (safetensors never runs code);
- ``optimizer.pt``: the optimizer state, read back only with ``torch.load(weights_only=True)``,
  which refuses any pickled object other than tensors and plain containers;
- ``config.json``: format version (:data:`FORMAT_VERSION`), network, process, prediction type
  (``logits`` for a noise-conditional classifier),
  data description, training options, step, and ``sha256``: the SHA-256 of each of the three
  other files, so a truncated or corrupted file is an error rather than wrong weights.

Writing (crash safety). A folder is written under a temporary name (``.tmp-*``), every file and
the folder fsync'ed, then renamed into place; only then is ``latest`` replaced (``os.replace`` of
a small fsync'ed file, atomic on POSIX). A ``SIGKILL`` at any point leaves ``latest`` naming a
complete folder and that folder intact; the two newest folders at or below the current step are
kept. Debris of a killed write -- ``.tmp-*`` folders, ``.latest.*`` files -- is removed by the
next save, and a folder moved aside (``.old-*``) while being replaced is put back if its
replacement never arrived. Folders past the current step (written by a run killed before
``latest`` named them, or the newer checkpoints of a run resumed from an older one) are never
deleted: they are complete, and replaced when training reaches their step again.

Reading. Every failure is a ``ValueError`` (or ``FileNotFoundError`` for a missing checkpoint)
naming the file and what was expected: a file that is not safetensors, a truncated one, a digest
that does not match, weights that do not fit the network the config describes, and a format
version newer than this sdediff reads. Version 1 checkpoints written before digests were added
(no ``sha256`` key) are still read; their files are then only checked by their parsers.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checks import InputValueError
from .losses import LOGITS
from .score import ScoreModel
from .sde import sde_from_config

#: Version of the on-disk layout; readers refuse newer ones. Adding an optional config key (as
#: ``sha256`` was) keeps the version, a change older readers would misread bumps it.
FORMAT_VERSION = 1
KEEP = 2
LATEST = "latest"
WEIGHT_FILES = ("model.safetensors", "ema.safetensors")
OPTIMIZER_FILE = "optimizer.pt"
CONFIG_FILE = "config.json"
_FOLDER = re.compile(r"step-(\d{8})")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def _folder_step(path: Path) -> int | None:
    match = _FOLDER.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _clean(root: Path, step: int) -> None:
    """Remove what a killed write left; of the folders at or below ``step`` keep the :data:`KEEP`
    newest. Only rank 0 writes a run directory, so nothing else is mid-write here."""
    for old in root.glob(".old-step-*"):
        # Left by a kill while a folder was being replaced; if the new one never arrived, the old
        # one is still a good checkpoint: put it back.
        if not (root / old.name[5:]).exists() and _complete(old):
            os.rename(old, root / old.name[5:])
    for debris in (*root.glob(".tmp-*"), *root.glob(f".{LATEST}.*"), *root.glob(".old-*")):
        if debris.is_dir():
            shutil.rmtree(debris, ignore_errors=True)
        else:
            debris.unlink(missing_ok=True)
    folders = sorted((s, p) for p in root.glob("step-*") if (s := _folder_step(p)) is not None)
    older = [p for s, p in folders if s <= step][:-KEEP]
    for path in older:
        shutil.rmtree(path, ignore_errors=True)


def save_checkpoint(run_dir, step: int, net, ema_net, optimizer, config: dict) -> Path:
    """Write the checkpoint of ``step`` atomically under ``run_dir/checkpoints``; return its folder."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    save_file(_state_dict(net), str(tmp / WEIGHT_FILES[0]))
    save_file(_state_dict(ema_net), str(tmp / WEIGHT_FILES[1]))
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    digests = {name: _sha256(tmp / name) for name in (*WEIGHT_FILES, OPTIMIZER_FILE)}
    (tmp / CONFIG_FILE).write_text(json.dumps(
        {"format_version": FORMAT_VERSION, "step": step, **config, "sha256": digests}, indent=2))
    for f in tmp.iterdir():
        _fsync_file(f)
    _fsync_dir(tmp)
    if final.exists():
        # A save of a step that already has a folder (a rerun after a crash, or save() called
        # twice). Move the old one aside rather than delete it: if `latest` names it and we are
        # killed before the new one is in place, resolve_checkpoint still finds it. A previous
        # `.old-` copy is stale: `final` exists, is complete (it only ever appears by rename of a
        # complete folder) and is what resolve_checkpoint prefers.
        old = root / f".old-{final.name}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    _write_text_atomic(root / LATEST, final.name + "\n")
    _clean(root, step)
    return final


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file()
               for name in (CONFIG_FILE, *WEIGHT_FILES, OPTIMIZER_FILE))


def resolve_checkpoint(path) -> Path:
    """The checkpoint folder for ``path``: a checkpoint folder itself, or a run directory (the
    folder its ``latest`` names).

    If a save was killed while replacing the very folder ``latest`` names, that folder is found
    under its temporary ``.old-`` name.
    """
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    latest = path / "checkpoints" / LATEST
    if latest.is_file():
        name = latest.read_text().strip()
        if not _FOLDER.fullmatch(name):  # never follow a path out of the run directory
            raise InputValueError(f"{str(latest)!r} names {name!r}; expected a folder name like "
                                  "'step-00001000' (the file is corrupt)")
        for folder in (latest.parent / name, latest.parent / f".old-{name}"):
            if (folder / CONFIG_FILE).is_file():
                return folder
    raise FileNotFoundError(
        f"no checkpoint at {str(path)!r}; expected a run directory written by `sdediff train` "
        "(with checkpoints/latest), a checkpoint folder holding config.json, or a diffusers "
        "pipeline folder holding model_index.json"
    )


def read_config(folder: Path) -> dict:
    """The config of a checkpoint folder; refuses unreadable JSON and newer format versions."""
    file = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputValueError(f"checkpoint config {str(file)!r} is not valid JSON ({err}); the file is "
                              "truncated or corrupt") from err
    if not isinstance(config, dict):
        raise InputValueError(f"checkpoint config {str(file)!r} holds a {type(config).__name__}; "
                              "expected a JSON object")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputValueError(
            f"checkpoint {str(folder)!r} has format version {version!r}; this sdediff reads "
            f"versions up to {FORMAT_VERSION} (upgrade sdediff)"
        )
    missing = [k for k in ("step", "net", "sde", "prediction") if k not in config]
    if missing:
        raise InputValueError(f"checkpoint config {str(file)!r} lacks {', '.join(missing)}; the file "
                              "is corrupt or not written by sdediff")
    return config


def _verify(file: Path, config: dict | None) -> None:
    """Check ``file`` exists and matches the digest its config records (if it records one)."""
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint file {str(file)!r} is missing; the checkpoint is "
                                "incomplete")
    expected = (config or {}).get("sha256", {}).get(file.name)
    if expected is not None and _sha256(file) != expected:
        raise InputValueError(f"checkpoint file {str(file)!r} does not match the SHA-256 recorded in "
                              f"its {CONFIG_FILE}; the file is truncated or corrupt")


def load_weights(module: torch.nn.Module, file: Path, config: dict | None = None) -> None:
    """Load safetensors weights into ``module``; a mismatch is an error, never silently skipped.

    ``config`` (the checkpoint's) supplies the expected digest of ``file``.
    """
    file = Path(file)
    _verify(file, config)
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise InputValueError(f"cannot read {str(file)!r} as safetensors weights ({err}); the file is "
                              "truncated, corrupt or not a safetensors file") from err
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}"
                         f"{' ...' if len(unexpected) > 3 else ''}")
        for k in wrong[:3]:
            parts.append(f"{k} has shape {tuple(state[k].shape)}, the network needs "
                         f"{tuple(own[k].shape)}")
        name = getattr(module, "config", {}).get("name", type(module).__name__)
        raise InputValueError(f"weights in {str(file)!r} do not fit the network {name!r} described by "
                              f"the config: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)


def load_optimizer_state(file: Path, config: dict | None = None, map_location=None) -> dict:
    """The optimizer state dict in ``file``, unpickled with ``weights_only=True`` (tensors and
    plain containers only: a crafted pickle cannot run code)."""
    file = Path(file)
    _verify(file, config)
    try:
        with warnings.catch_warnings():
            # torch warns of a pickle protocol it did not write before refusing a foreign file;
            # the refusal below says it in one line (the CLI's one-line rule)
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(file, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as err:
        raise InputValueError(f"refusing to load {str(file)!r}: it holds objects other than tensors "
                              "and plain containers, which weights_only loading never runs") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise InputValueError(f"cannot read {str(file)!r} as an optimizer state ({err}); the file is "
                              "truncated or corrupt") from err
    if not isinstance(state, dict) or not {"state", "param_groups"} <= set(state):
        raise InputValueError(f"{str(file)!r} holds no optimizer state dict (keys 'state' and "
                              "'param_groups')")
    return state


def load_model(path, ema: bool = True, device=None, autocast=None) -> tuple[ScoreModel, dict]:
    """A :class:`ScoreModel` (EMA weights by default) and the config of the checkpoint at ``path``.

    ``autocast``: run the network under ``torch.autocast`` in this dtype (``"bfloat16"``), see
    :class:`~sdediff.score.ScoreModel`. A diffusers pipeline folder (``model_index.json``) is
    read by :func:`sdediff.interop.load_pipeline` (its weights have no EMA copy).
    """
    from . import interop

    if interop.is_pipeline(path):
        return interop.load_pipeline(path, device=device, autocast=autocast)

    folder = resolve_checkpoint(path)
    config = read_config(folder)
    if config["prediction"] == LOGITS:
        raise InputValueError(f"checkpoint {str(folder)!r} is a noise-conditional classifier (sdediff "
                              "train-classifier), not a score model; load it with "
                              "sdediff.load_classifier, or pass a run of sdediff train")
    net = _load_net(folder, config, ema, device)
    model = ScoreModel(net, sde_from_config(config["sde"]), prediction=config["prediction"],
                       autocast=autocast)
    return model, config


def load_classifier(path, ema: bool = True, device=None) -> tuple[torch.nn.Module, dict]:
    """The noise-conditional classifier (EMA weights by default) and the config of the
    checkpoint at ``path``, a run of ``sdediff train-classifier``.

    The classifier is a :class:`~sdediff.nets.NoisyClassifier` in eval mode: ``classifier(x, t)
    -> (B, num_classes)`` logits of ``p_t(y | x)``, ready for :meth:`ScoreModel.guide
    <sdediff.score.ScoreModel.guide>`; ``config["sde"]`` is the process it was trained on (guide
    a model of the same process). A score-model checkpoint is refused.
    """
    from . import interop

    if interop.is_pipeline(path):
        raise InputValueError(f"{str(path)!r} is a diffusers pipeline (a score model), not a "
                              "noise-conditional classifier; pass a run of sdediff train-classifier")
    folder = resolve_checkpoint(path)
    config = read_config(folder)
    if config["prediction"] != LOGITS:
        raise InputValueError(f"checkpoint {str(folder)!r} is a score model (prediction "
                              f"{config['prediction']!r}), not a noise-conditional classifier; load it "
                              "with sdediff.load_model, or pass a run of sdediff train-classifier")
    return _load_net(folder, config, ema, device), config


def _load_net(folder: Path, config: dict, ema: bool, device) -> torch.nn.Module:
    """The network of a checkpoint folder with its EMA (or raw) weights, in eval mode."""
    from .nets import build_net  # networks are only needed when a model is rebuilt

    net = build_net(config["net"])
    load_weights(net, folder / WEIGHT_FILES[1 if ema else 0], config)
    net.eval()
    if device is not None:
        net.to(device)
    return net

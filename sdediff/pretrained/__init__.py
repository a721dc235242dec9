"""Weights that ship inside the package (no download, ever).

- ``digits/``: the built-in digits model, a class-conditional U-Net (label dropout 0.1: the
  null class samples any digit) trained on the scikit-learn 8x8 digits by
  ``sdediff train --data digits --conditional --out runs/digits`` (the images preset; README,
  ``docs/images.md`` and ``docs/guidance.md`` give the run's figures). A checkpoint folder like any other:
  ``config.json`` plus the EMA weights ``ema.safetensors``. Every command that takes
  ``--checkpoint`` uses it when none is given; in Python, ``sdediff.load_model(DIGITS)``.
- ``8gaussians/``: the demo's points model, the MLP trained on the ``8gaussians`` toy set by
  ``sdediff train --data 8gaussians --out runs/8gaussians --steps 30000`` (the points preset, ten
  times its steps: the samples' off-mode fraction, not the loss, needs them; ``sdediff demo``
  reports it). ``sdediff.load_model(POINTS)``.
- ``digit_classifier.safetensors``: the feature network of the digits' Fréchet distance
  (:mod:`sdediff.bench.digit_features`).
"""

from __future__ import annotations

from pathlib import Path

#: The bundled digits checkpoint folder.
DIGITS = Path(__file__).resolve().parent / "digits"
#: The bundled 2-D points checkpoint folder (``8gaussians``).
POINTS = Path(__file__).resolve().parent / "8gaussians"
#: Every bundled model by name (``python -m sdediff.pretrained RUN_DIR NAME`` writes one).
BUNDLES = {"digits": DIGITS, "8gaussians": POINTS}


def bundled(name: str = "digits") -> Path:
    """The bundled checkpoint folder ``name`` (a key of :data:`BUNDLES`); a clear error if this
    install lacks it."""
    from ..checks import check_choice

    check_choice("bundled model", name, tuple(BUNDLES))
    folder = BUNDLES[name]
    if not (folder / "config.json").is_file() or not (folder / "ema.safetensors").is_file():
        raise FileNotFoundError(f"the bundled {name} model is missing from this install ({folder}); "
                                "reinstall sdediff or pass --checkpoint RUN_DIR")
    return folder


def default_checkpoint() -> Path:
    """The bundled digits checkpoint, the default of every ``--checkpoint``."""
    return bundled("digits")


def bundle_checkpoint(path, dest: Path = DIGITS) -> Path:
    """Copy the newest checkpoint of the run at ``path`` into ``dest`` as a bundle: its
    ``config.json`` (the SHA-256 of the EMA weights only) and ``ema.safetensors``. The raw
    weights and the optimizer state stay behind: sampling uses the EMA weights."""
    import json
    import shutil

    from ..checkpoint import load_model, read_config, resolve_checkpoint

    folder = resolve_checkpoint(path)
    load_model(folder)                                   # refuses a broken checkpoint
    config = read_config(folder)
    if "sha256" in config:
        config["sha256"] = {"ema.safetensors": config["sha256"]["ema.safetensors"]}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folder / "ema.safetensors", dest / "ema.safetensors")
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dest

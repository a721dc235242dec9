"""Weights that ship inside the package (no download, ever).

- ``digits/``: the built-in digits model, a class-conditional U-Net (label dropout 0.1: the
  null class samples any digit) trained on the scikit-learn 8x8 digits by
  ``sdediff train --data digits --conditional --out runs/digits`` (the images preset; README,
  ``docs/images.md`` and ``docs/guidance.md`` give the run's figures). A checkpoint folder like any other:
  ``config.json`` plus the EMA weights ``ema.safetensors``. Every command that takes
  ``--checkpoint`` uses it when none is given; in Python, ``sdediff.load_model(DIGITS)``.
- ``digit_classifier.safetensors``: the feature network of the digits' Fréchet distance
  (:mod:`sdediff.bench.digit_features`).
"""

from __future__ import annotations

from pathlib import Path

#: The bundled digits checkpoint folder.
DIGITS = Path(__file__).resolve().parent / "digits"


def default_checkpoint() -> Path:
    """The bundled digits checkpoint; a clear error if this install lacks it."""
    if not (DIGITS / "config.json").is_file() or not (DIGITS / "ema.safetensors").is_file():
        raise FileNotFoundError(f"the bundled digits model is missing from this install ({DIGITS}); "
                                "reinstall sdediff or pass --checkpoint RUN_DIR")
    return DIGITS


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

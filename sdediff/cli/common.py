"""What the ``sdediff`` commands share: one-line failures, processes by name, sampler options,
writing samples, ``--device``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..checks import InputValueError

#: Forward processes by name. ``discrete`` is diffusers' default chain (``DDPMScheduler()``: 1000
#: linear betas 1e-4 .. 0.02) as a continuous-time process: the one a run must train on to be
#: exported as a diffusers pipeline (``sdediff export``).
PROCESSES = ("vp", "vp-cosine", "subvp", "ve", "discrete")
#: Where every command writes by default (``runs/samples.npy``, ``runs/demo/``, ...): one folder,
#: which the repository's .gitignore covers, beside the training runs' ``runs/NAME``.
OUTPUT_DIR = "runs"


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless it names it itself or has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or default == [] or "default" in text.lower()
                or "%(default)" in text):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2), and every flag's help shows its
    default (:class:`HelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise SystemExit(fail(message))


def fail(message: str, every_rank: bool = False) -> int:
    """Print ``sdediff: error: message`` on stderr; returns the exit status 2. Under torchrun
    only rank 0 prints, unless ``every_rank`` (every rank parses the same arguments and meets
    the same input errors)."""
    if every_rank or os.environ.get("RANK", "0") == "0":
        print(f"sdediff: error: {message}", file=sys.stderr)
    return 2


def on_ranks() -> str:
    """`` (rank 0 of W: its share of the calls and time)`` under torchrun, else ``""``."""
    from ..distributed import rank_world

    rank, world = rank_world()
    return f" (rank {rank} of {world}: its share of the calls and time)" if world > 1 else ""


def make_process(name: str):
    from ..checks import check_choice
    from ..sde import VESDE, VPSDE, DiscreteVPSDE, SubVPSDE

    check_choice("process", name, PROCESSES)
    return {"vp": lambda: VPSDE(), "vp-cosine": lambda: VPSDE("cosine"), "subvp": SubVPSDE,
            "ve": VESDE, "discrete": DiscreteVPSDE}[name]()



def format_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values become int, float, bool or stay strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputValueError(f"sampler option {pair!r} must look like key=value (e.g. eta=0.5)")
        for convert in (int, float):
            try:
                options[key] = convert(value)
                break
            except ValueError:
                continue
        else:
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
    return options


def output_file(out: str, allowed: tuple[str, ...], flag: str = "--out") -> Path:
    """``--out`` as a ``Path`` with one of the ``allowed`` suffixes (the first when it has none).
    Another suffix is refused, before any work, naming what the command writes: ``--out s.txt``
    would otherwise write ``s.npy`` without a word."""
    path = Path(out)
    if path.suffix == "":
        return path.with_suffix(allowed[0])
    if path.suffix.lower() not in allowed:
        raise InputValueError(f"{flag} {out!r}: this command writes {' or '.join(allowed)} files; name "
                              f"it {str(path.with_suffix(allowed[0]))!r}")
    return path


def write_samples(x, out: Path, data_config: dict, data=None) -> list[Path]:
    """Samples as .npy (or .pt) plus a PNG: a scatter over the data's density for points,
    an image grid for images."""
    import numpy as np
    import torch

    from ..plotting import plot_points, save_image_grid

    x = x.detach().cpu()             # samples made on an accelerator are written from the host
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".pt":
        out = out.with_suffix(".npy")
    # staged and renamed: an interrupted run never leaves a partial file under the final name
    staged = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        with open(staged, "wb") as f:
            if out.suffix == ".pt":
                torch.save(x, f)
            else:
                np.save(f, x.numpy())
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    png = out.with_suffix(".png")
    if data_config.get("kind") == "images":
        save_image_grid(x[:100], png, data_range=tuple(data_config.get("data_range", (-1, 1))))
    else:
        plot_points({f"{len(x)} samples": x[:, :2]}, None if data is None else data[:, :2], png)
    return [out, png]


def add_checkpoint_argument(p) -> None:
    p.add_argument("--checkpoint", help="run directory or checkpoint folder (default: the bundled "
                   "digits model)")


def load_checkpoint_model(path: str | None, device=None):
    """``(model, config)`` of the checkpoint at ``path``, or of the bundled digits model, with
    the network on ``device`` (default: the CPU)."""
    from ..checkpoint import load_model
    from ..pretrained import default_checkpoint

    return load_model(default_checkpoint() if path is None else path, device=device)


def add_compile_argument(p) -> None:
    p.add_argument("--compile", action="store_true", help="torch.compile the network (faster "
                   "calls after a one-time compilation; on the CPU it needs a C++ compiler)")


def add_device_argument(p) -> None:
    """``--device``, the same on every command that computes."""
    p.add_argument("--device", help="where the network runs: cpu, cuda, cuda:N or mps (default: "
                   "cuda when available, else cpu)")


def resolve_device(name: str | None):
    """The ``torch.device`` of ``--device``: checked (a missing or malformed device is one line
    naming the available ones), or the default, cuda when available, else cpu."""
    from ..checks import check_device, default_device

    return default_device() if name is None else check_device(name)

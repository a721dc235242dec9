"""Matplotlib figures (Agg backend: files only, no screen needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_loss_curve(csv_path, png_path, smooth: float = 0.98) -> Path:
    """Training loss against step from ``loss.csv``: raw (faint) and exponentially smoothed."""
    steps, losses = [], []
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    smoothed, running = [], None
    for loss in losses:
        running = loss if running is None else smooth * running + (1 - smooth) * loss
        smoothed.append(running)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses, alpha=0.3, lw=0.8, label="loss")
    ax.plot(steps, smoothed, lw=1.5, label=f"EMA {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return Path(png_path)

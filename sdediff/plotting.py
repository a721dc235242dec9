"""Matplotlib figures, written to files.

The figures are built on :class:`matplotlib.figure.Figure` directly, not through ``pyplot``: no
backend is chosen and no global figure state is touched, so importing or calling this module never
switches a notebook user's backend (only the ``sdediff`` command picks Agg for itself), and no
screen is needed.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.image import imsave
from matplotlib.patches import Patch, Rectangle


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot's global state."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_loss_curve(csv_path, png_path, points_per_window: int = 40) -> Path:
    """Training loss against step from ``loss.csv``: raw (faint) and a trailing mean over
    ``len / points_per_window`` steps (a window that scales with the run, so it never lags far)."""
    steps, losses = [], []
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    window = max(1, len(losses) // points_per_window)
    cumulative = [0.0]
    for loss in losses:
        cumulative.append(cumulative[-1] + loss)
    smoothed = [(cumulative[i + 1] - cumulative[max(0, i + 1 - window)]) / min(i + 1, window)
                for i in range(len(losses))]
    fig, ax = _subplots(figsize=(6, 4))
    ax.plot(steps, losses, alpha=0.3, lw=0.8, label="loss")
    ax.plot(steps, smoothed, lw=1.5, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("DSM loss")
    if losses and min(losses) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return Path(png_path)


def _density_background(ax, data: torch.Tensor, lim: float) -> None:
    """The data's density as a grey 2-D histogram behind a scatter."""
    xy = data.detach().double().reshape(data.shape[0], -1)[:, :2].numpy()
    ax.hist2d(xy[:, 0], xy[:, 1], bins=120, range=[[-lim, lim], [-lim, lim]], cmap="Greys",
              density=True)


def _plot_limit(*tensors: torch.Tensor) -> float:
    spread = max(float(t.detach().abs().reshape(-1).quantile(0.995)) for t in tensors)
    return 1.15 * spread


def plot_points(panels: dict, data: torch.Tensor | None, png_path, ncols: int = 4,
                size: float = 3.0) -> Path:
    """Scatter plots of 2-D samples side by side, one panel per entry of ``panels``
    (title -> ``(n, 2)`` tensor), each over the data's density (grey), with a legend on the first.
    Markers grow as samples get fewer, so that 64 samples stay visible on the density."""
    names = list(panels)
    ncols = min(ncols, len(names))
    nrows = (len(names) + ncols - 1) // ncols
    # the frame fits the data where it is given, so a few far outliers cannot shrink it to a dot;
    # samples beyond it are drawn on its edge and counted in the legend
    lim = _plot_limit(*((data,) if data is not None else panels.values()))
    fig, axes = _subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        if data is not None:
            _density_background(ax, data, lim)
        xy = panels[name].detach().double()
        outside = int((xy.abs() > lim).any(dim=1).sum())
        xy = xy.clamp(-lim, lim).numpy()
        marker = min(12.0, max(1.5, 3000 / max(len(xy), 1)))
        ax.scatter(xy[:, 0], xy[:, 1], s=marker, c="tab:orange", alpha=0.6 if marker < 4 else 0.85,
                   linewidths=0, label=f"samples ({outside} beyond the frame, on its edge)"
                   if outside else "samples")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if data is not None:
        handles.append(Patch(color="0.55", label="data density"))
    small = min(len(x) for x in panels.values()) > 750        # markers of 1.5 points: enlarge
    axes.flat[0].legend(handles=handles, loc="upper right", fontsize=7, markerscale=3 if small else 1)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    return Path(png_path)


def plot_trajectories(trajectory: torch.Tensor, data: torch.Tensor | None, png_path,
                      n_paths: int = 64, labels: tuple[str, str] = ("x_T (prior)", "x at t_end"),
                      title: str = "probability-flow ODE trajectories") -> Path:
    """Paths of 2-D points: ``trajectory`` ``(steps + 1, B, 2)``, the first ``n_paths`` drawn as
    lines with a dot per step, from their starts (grey, ``labels[0]``) to their ends (orange,
    ``labels[1]``), over the data's density: the flow's trajectories, or interpolation paths."""
    paths = trajectory[:, :n_paths].detach().double().numpy()
    lim = _plot_limit(trajectory[0], trajectory[-1], *(() if data is None else (data,)))
    fig, ax = _subplots(figsize=(5.5, 5.5))
    if data is not None:
        _density_background(ax, data, lim)
    for k in range(paths.shape[1]):
        ax.plot(paths[:, k, 0], paths[:, k, 1], lw=0.8, alpha=0.8, color="tab:blue",
                marker="." if len(paths) <= 20 else None, markersize=4)
    ax.scatter(paths[0, :, 0], paths[0, :, 1], s=18, c="grey", edgecolors="k", linewidths=0.4,
               label=labels[0], zorder=3)
    ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=18, c="tab:orange", edgecolors="k",
               linewidths=0.4, label=labels[1], zorder=3)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    return Path(png_path)


def tile_images(images: torch.Tensor, nrow: int | None = None,
                data_range: tuple[float, float] = (-1.0, 1.0)):
    """Images ``(B, C, H, W)`` (values in ``data_range``) tiled ``nrow`` per row with a 1-pixel
    white border, as a ``(rows, cols, C)`` array in ``[0, 1]``."""
    x = images.detach().double().clamp(*data_range)
    x = (x - data_range[0]) / (data_range[1] - data_range[0])
    B, C, H, W = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(B))))
    ncol = int(math.ceil(B / nrow))
    pad = 1
    canvas = torch.ones(C, ncol * (H + pad) + pad, nrow * (W + pad) + pad, dtype=x.dtype)
    for k in range(B):
        r, c = divmod(k, nrow)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        canvas[:, top:top + H, left:left + W] = x[k]
    return canvas.permute(1, 2, 0).numpy()


def _show(ax, array) -> None:
    gray = array.shape[2] == 1
    ax.imshow(array[..., 0] if gray else array, cmap="gray" if gray else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def save_image_grid(images: torch.Tensor, png_path, nrow: int | None = None,
                    data_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Images ``(B, C, H, W)`` (``C`` = 1 or 3, values in ``data_range``) tiled into one PNG."""
    array = tile_images(images, nrow, data_range)
    scale = max(1, 256 // max(array.shape[:2]))
    array = array.repeat(scale, axis=0).repeat(scale, axis=1)
    imsave(png_path, array[..., 0] if array.shape[2] == 1 else array,
               cmap="gray" if array.shape[2] == 1 else None, vmin=0.0, vmax=1.0)
    return Path(png_path)


def plot_image_panels(panels: dict, png_path, ncols: int = 2, nrow: int | None = None,
                      data_range: tuple[float, float] = (-1.0, 1.0), panel_size: float = 3.2
                      ) -> Path:
    """One titled panel per entry of ``panels`` (title -> images ``(B, C, H, W)``), ``ncols``
    panels per row, each a tile of its images ``nrow`` per row."""
    n = len(panels)
    rows = int(math.ceil(n / ncols))
    fig, axes = _subplots(rows, ncols, figsize=(panel_size * ncols, (panel_size + 0.3) * rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    tiles = {title: tile_images(images, nrow, data_range) for title, images in panels.items()}
    for ax, (title, tile) in zip(axes.flat, tiles.items(), strict=False):
        _show(ax, tile)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    # at least 2 screen pixels per image pixel: shrinking a tile drops pixels (nearest
    # neighbour), which paints speckle on clean 28x28 digits
    widest = max(max(tile.shape[:2]) for tile in tiles.values())
    fig.savefig(png_path, dpi=max(110, math.ceil(2 * widest / (0.85 * panel_size))))
    return Path(png_path)


def plot_image_rows(rows: dict, png_path, data_range: tuple[float, float] = (-1.0, 1.0),
                    endpoints: tuple[str, str] | None = None) -> Path:
    """Strips of images, one per entry of ``rows`` (label -> images ``(n, C, H, W)``), labelled
    on the left: e.g. originals, latents and reconstructions, or interpolation paths. With
    ``endpoints``, the first and last image of each strip are framed in red and named below the
    last strip (e.g. ``("digit a", "digit b")``)."""
    fig, axes = _subplots(len(rows), 1, figsize=(9, 1.1 * len(rows) + 0.3), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items(), strict=True):
        _show(ax, tile_images(images, len(images), data_range))
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        if endpoints is not None:
            H, W, n = images.shape[-2], images.shape[-1], len(images)
            for k in (0, n - 1):              # tile k spans [1 + k (W + 1), 1 + k (W + 1) + W)
                ax.add_patch(Rectangle((0.5 + k * (W + 1), 0.5), W, H, fill=False, edgecolor="red",
                                       linewidth=1.5))
            ax.set_xticks([1 + (W - 1) / 2, 1 + (n - 1) * (W + 1) + (W - 1) / 2])
            ax.set_xticklabels(endpoints if ax is axes[-1, 0] else ["", ""], fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    return Path(png_path)


#: Legend entries :func:`plot_vs_nfe` fits in one column beside its axes.
LEGEND_ROWS = 20


def plot_vs_nfe(series: dict, png_path, ylabel: str, title: str = "", floor: float | None = None,
                dashed=(), same_color: dict | None = None) -> Path:
    """A quantity against NFE on log-log axes, one line per entry of ``series`` (label ->
    ``(nfe_list, value_list)``); labels in ``dashed`` (e.g. peers) are drawn dashed, a label
    mapped by ``same_color`` to another takes that one's color, and ``floor`` (the value of a
    perfect sampler) is a dotted black line. Non-positive values are left out."""
    # a legend taller than the axes is cut at the figure's edge: two columns past LEGEND_ROWS
    columns = 1 if len(series) + (floor is not None) <= LEGEND_ROWS else 2
    fig, ax = _subplots(figsize=(7.5 + 2.0 * (columns - 1), 4.8))
    palette = colormaps["tab20"].colors
    dashed, same_color = set(dashed), same_color or {}
    keys = list(dict.fromkeys(same_color.get(label, label) for label in series))
    for label, (nfe, values) in series.items():
        points = [(n, v) for n, v in zip(nfe, values, strict=True) if v > 0 and math.isfinite(v)]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        i = keys.index(same_color.get(label, label))
        color = palette[(2 * i) % 20 + (i // 10) % 2]          # dark shades first, then light
        ax.plot(xs, ys, marker="o", ms=3.5, lw=1.3, color=color,
                ls="--" if label in dashed else "-", label=label)
    if floor is not None and floor > 0:
        ax.axhline(floor, color="black", ls=":", lw=1.2, label="floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network calls, counted)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
              ncol=columns)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return Path(png_path)


#: The color of hidden pixels in :func:`plot_inpainting`'s masked row (RGB in [0, 1]).
HIDDEN_COLOR = (0.85, 0.25, 0.2)


def plot_inpainting(original: torch.Tensor, mask: torch.Tensor,
                    inpainted: torch.Tensor | dict[str, torch.Tensor], png_path,
                    data_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Labelled strips: the originals ``(n, C, H, W)``, the same with their hidden pixels
    (``mask == 0``; ``mask`` of shape ``(C, H, W)`` or ``(n, C, H, W)``, 1 = observed) painted
    :data:`HIDDEN_COLOR`, and the inpainted images (one strip, or one per entry of a
    ``{label: images}`` dict, e.g. one per method)."""
    lo, hi = data_range
    gray = ((original.detach().double().clamp(lo, hi) - lo) / (hi - lo)).mean(1, keepdim=True)
    hidden = (mask.detach().to(original.device) == 0).expand_as(original).any(1, keepdim=True)
    color = torch.tensor(HIDDEN_COLOR, dtype=gray.dtype, device=gray.device)[None, :, None, None]
    masked = torch.where(hidden, color, gray.expand(-1, 3, -1, -1))
    rows = inpainted if isinstance(inpainted, dict) else {"inpainted": inpainted}
    return plot_image_rows({"original": original, "masked": lo + (hi - lo) * masked, **rows},
                           png_path, data_range)

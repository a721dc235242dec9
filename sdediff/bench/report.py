"""A sweep's outputs: the rows of :data:`COLUMNS` as CSV, JSON, Markdown tables and plots.

One row per (run, metric): ``problem, sampler, source`` (``sdediff``, ``diffusers`` or
``k-diffusion``), ``options`` (``key=value`` pairs in the CSV; a k-diffusion peer's ``grid``),
``budget`` (empty for the adaptive samplers, which run at a tolerance), ``steps``, ``nfe``
(counted by the model), ``metric``, ``value``, ``floor``
(the same metric for exact or real samples; for ``rms_error``, empty on the mixtures and, on a
model (:mod:`sdediff.bench.model`), the reference's own error estimate) and ``seconds`` (the
sampler's wall time per sample). A sweep may name its metrics otherwise in
``meta["metric_labels"]`` and add lines to the Markdown's head in ``meta["about"]``.

:func:`write_results` writes ``<problem>.csv`` and ``.json`` (the rows; the JSON adds the
settings, machine, load average and notes), ``<problem>.md`` (:func:`markdown_report`), and PNGs:
each metric against NFE (log-log, one line per sampler, peers dashed in their sdediff
counterpart's color, floor dotted) and seconds per sample against NFE; for the digits, a grid of
samples per sampler. :func:`summary_lines` is the terminal's short version.

A sampler run at one budget in several variants (a k-diffusion peer on each of its grids) is shown
in the tables and plots at its best variant for that budget and metric (:func:`best_rows`; the
table names the variant's grid); the CSV and JSON keep every run.
"""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .kdiffusion import KDIFF_PEERS
from .kdiffusion import SOURCE as KDIFF_SOURCE
from .peers import PEER_COUNTERPARTS, PEERS

#: Columns of every output row.
COLUMNS = ("problem", "sampler", "source", "options", "budget", "steps", "nfe", "metric", "value",
           "floor", "seconds")
#: Every metric a sweep reports, in the order of the tables, with its axis label.
METRIC_LABELS = {"rms_error": "RMS error to the exact PF endpoint",
                 "energy_distance": "energy distance to exact samples",
                 "frechet_distance": "Fréchet distance (classifier features) to held-out digits"}
#: Lines drawn dashed in the plots: the peers.
DASHED = (*PEERS, *KDIFF_PEERS)


@dataclass
class BenchResult:
    """A finished sweep: its rows (:data:`COLUMNS`), notes on what was skipped or failed, the
    settings and machine in ``meta``, and the files written."""

    problem: str
    rows: list[dict]
    notes: list[str]
    meta: dict
    files: list[Path] = field(default_factory=list)


def options_text(options: dict) -> str:
    """``key=value`` pairs separated by spaces (the CLI's ``-o`` syntax)."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in options.items())


def write_results(result: BenchResult, out: Path, grids: dict | None = None) -> list[Path]:
    """``<problem>.csv``, ``.json``, ``.md`` and the plots in ``out``."""
    from ..plotting import plot_vs_nfe, save_image_grid

    out.mkdir(parents=True, exist_ok=True)
    stem = out / result.problem
    files = [stem.with_suffix(".csv"), stem.with_suffix(".json"), stem.with_suffix(".md")]
    with open(files[0], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in result.rows:
            writer.writerow({**row, "options": options_text(row["options"]),
                             "budget": "" if row["budget"] is None else row["budget"],
                             "steps": "" if row["steps"] is None else row["steps"],
                             "floor": "" if row["floor"] is None else f"{row['floor']:.6g}",
                             "value": f"{row['value']:.6g}", "seconds": f"{row['seconds']:.4g}"})
    files[1].write_text(json.dumps({"meta": result.meta, "columns": list(COLUMNS),
                                    "notes": result.notes, "rows": result.rows}, indent=1) + "\n")
    files[2].write_text(markdown_report(result))
    for metric in metrics_of(result.rows):
        png = out / f"{result.problem}_{metric}.png"
        floors = [r["floor"] for r in result.rows if r["metric"] == metric and r["floor"]]
        label = metric_label(result, metric)
        plot_vs_nfe(series(result.rows, metric), png, ylabel=label,
                    title=f"{result.problem}: {label}",
                    floor=float(np.median(floors)) if floors else None,
                    dashed=DASHED, same_color=PEER_COUNTERPARTS)
        files.append(png)
    if result.rows:
        png = out / f"{result.problem}_time.png"
        first = metrics_of(result.rows)[-1]
        plot_vs_nfe(series(result.rows, first, "seconds"), png, ylabel="seconds per sample",
                    title=f"{result.problem}: wall time per sample", dashed=DASHED,
                    same_color=PEER_COUNTERPARTS)
        files.append(png)
    if grids:
        png = out / f"{result.problem}_samples.png"
        names = list(grids)
        save_image_grid(torch.cat([grids[n][1] for n in names]), png, nrow=10,
                        data_range=(-1.0, 1.0))
        (out / f"{result.problem}_samples.txt").write_text(
            "rows, top to bottom: " + ", ".join(f"{n} ({grids[n][0]} NFE)" for n in names) + "\n")
        files.append(png)
    return files


def metric_label(result: BenchResult, metric: str) -> str:
    """The sweep's own name for ``metric`` (``meta["metric_labels"]``), else the default."""
    return result.meta.get("metric_labels", {}).get(metric, METRIC_LABELS[metric])


def metrics_of(rows: list[dict]) -> list[str]:
    return [m for m in METRIC_LABELS if any(r["metric"] == m for r in rows)]


def best_rows(rows: list[dict], metric: str) -> list[dict]:
    """The rows of ``metric``, one per (sampler, budget) -- the lowest value among a sampler's
    variants at that budget (a k-diffusion peer's grids) -- in the order of ``rows``; adaptive
    rows (no budget) are all kept."""
    best: dict = {}
    for r in rows:
        if r["metric"] != metric:
            continue
        key = (r["sampler"], r["budget"]) if r["budget"] is not None else id(r)
        if key not in best or r["value"] < best[key]["value"]:
            best[key] = r
    return list(best.values())


def _variant(row: dict) -> str:
    """`` [grid]`` for a run on a named grid (the k-diffusion peers), else nothing."""
    grid = row["options"].get("grid")
    return f" [{grid}]" if grid is not None else ""


def series(rows: list[dict], metric: str, key: str = "value") -> dict:
    """Per sampler: (NFE list, ``key`` list), sorted by NFE (each budget's best variant)."""
    out: dict = {}
    for r in best_rows(rows, metric):
        out.setdefault(r["sampler"], []).append((r["nfe"], r[key]))
    return {name: tuple(map(list, zip(*sorted(points), strict=True))) for name, points in out.items()}


def _cell(value: float) -> str:
    return f"{value:.2e}"


def markdown_report(result: BenchResult) -> str:
    """Tables: per metric, sampler x budget (``value`` and, where it differs from the budget, the
    NFE used), the adaptive samplers by tolerance, the seconds per sample, the best per budget."""
    rows, meta = result.rows, result.meta
    budgets = meta["budgets"]
    lines = [f"## {result.problem}", "",
             f"{meta['num']} samples per run, seed {meta['seed']}; {meta['seconds']} s in all; "
             f"load average {meta['load_average_start']} at the start, "
             f"{meta['load_average_end']} at the end; torch {meta['torch']} with "
             f"{meta['threads']} thread(s) on {meta['machine']}.", ""]
    for line in meta.get("about", ()):
        lines += [line, ""]
    sources = ["sdediff", "diffusers"] + ([KDIFF_SOURCE] if any(r["source"] == KDIFF_SOURCE
                                                                 for r in rows) else [])
    for metric in metrics_of(rows):
        mine = [r for r in rows if r["metric"] == metric]
        fixed = [r for r in best_rows(rows, metric) if r["budget"] is not None]
        names = list(dict.fromkeys(r["sampler"] for r in fixed))
        variants = any(_variant(r) for r in fixed)
        lines += [f"### {metric_label(result, metric)}", "",
                  "Cells: value at the budget's NFE; `(n)`: the NFE used when the budget cannot "
                  "be met exactly; `-`: cannot run within the budget"
                  + ("; `[grid]`: the k-diffusion grid of the best run at that budget (every grid "
                     "is in the CSV)." if variants else "."), "",
                  "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " | floor |",
                  "|---|" + "---|" * (len(budgets) + 1)]
        for name in names:
            cells = []
            for b in budgets:
                hit = [r for r in fixed if r["sampler"] == name and r["budget"] == b]
                if not hit:
                    cells.append("-")
                    continue
                r = hit[0]
                cells.append(_cell(r["value"]) + ("" if r["nfe"] == b else f" ({r['nfe']})")
                             + _variant(r))
            floor = next((r["floor"] for r in fixed if r["sampler"] == name and r["floor"]), None)
            floor = "" if floor is None else _cell(floor)
            lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {floor} |")
        adaptive = [r for r in mine if r["budget"] is None]
        if adaptive:
            lines += ["", "| adaptive sampler | rtol = atol | NFE | value | floor |",
                      "|---|---|---|---|---|"]
            lines += [f"| `{r['sampler']}` | {r['options']['rtol']:g} | {r['nfe']} | "
                      f"{_cell(r['value'])} | {'' if r['floor'] is None else _cell(r['floor'])} |"
                      for r in adaptive]
        if metric == "energy_distance":
            lines += ["", "The floor is the mean over 5 pairs of exact sets of this size; one pair "
                      "scatters around it (10% to 90% quantiles: 0.5x to 1.5x on gmm2d, 0.7x to 1.7x on "
                      "gmm64, from 20 pairs), so values in that band are "
                      "indistinguishable from exact. Samplers that share `x_T` (deterministic) or "
                      "`x_T` and the Brownian path (stochastic) give correlated values: each group "
                      "is close to one draw."]
        peers = len(sources) > 1
        lines += ["", "Best per budget (lowest value at NFE <= budget; sdediff's samplers at their "
                  "default options" + ("; ratio: sdediff's best over the best peer's" if peers
                                       else "") + "):", "",
                  "| budget | " + " | ".join(sources) + (" | ratio |" if peers else " |"),
                  "|---|" + "---|" * (len(sources) + peers)]
        for b in budgets:
            cells, values = [], {}
            for source in sources:
                pool = [r for r in mine if r["source"] == source and r["nfe"] <= b
                        and (r["budget"] == b or r["budget"] is None)]
                best = min(pool, key=lambda r: r["value"], default=None)
                values[source] = None if best is None else best["value"]
                cells.append("-" if best is None else
                             f"`{best['sampler']}`{_variant(best)} {_cell(best['value'])} "
                             f"({best['nfe']} NFE)")
            if peers:
                theirs = [v for s, v in values.items() if s != "sdediff" and v is not None]
                ours = values["sdediff"]
                cells.append(f"{ours / min(theirs):.2f}" if ours is not None and theirs
                             and min(theirs) > 0 else "-")
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
    metric = (metrics_of(rows) or [None])[-1]
    timed = [r for r in best_rows(rows, metric) if r["budget"] is not None]
    if timed:
        names = list(dict.fromkeys(r["sampler"] for r in timed))
        lines += ["### Wall time per sample (ms)", "",
                  "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for name in names:
            cells = [next((f"{1e3 * r['seconds']:.3g}" for r in timed
                           if r["sampler"] == name and r["budget"] == b), "-") for b in budgets]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
        lines.append("")
    if result.notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(lines)


def summary_lines(result: BenchResult) -> list[str]:
    """A few lines for the terminal: the best sampler per budget and metric."""
    lines = []
    for metric in metrics_of(result.rows):
        mine = [r for r in result.rows if r["metric"] == metric]
        for b in result.meta["budgets"]:
            parts = []
            for source in ("sdediff", "diffusers", KDIFF_SOURCE):
                pool = [r for r in mine if r["source"] == source and r["budget"] == b]
                best = min(pool, key=lambda r: r["value"], default=None)
                if best is not None:
                    parts.append(f"{best['sampler']}{_variant(best)} {best['value']:.2e} "
                                 f"({best['nfe']} NFE)")
            floor = next((r["floor"] for r in mine if r["floor"]), None)
            if parts:
                lines.append(f"  {metric} at NFE {b}: best " + "; ".join(parts)
                             + ("" if floor is None else f"; floor {floor:.2e}"))
    return lines


# ------------------------------------------------------------------ the benchmark scripts' output
def add_output_arguments(parser, results: Path, quick: str) -> None:
    """The ``--quick`` and ``--out`` flags of a script in ``benchmarks/``: ``quick`` says what a
    quick run cuts; see :func:`results_folder` for where each writes."""
    parser.add_argument("--quick", action="store_true",
                        help=f"{quick}; written to a temporary folder, never the committed results")
    parser.add_argument("--out", type=Path,
                        help=f"output folder (default {results}; --quick: a temporary folder)")


def results_folder(args, results: Path, name: str) -> Path:
    """Where a benchmark script writes: ``args.out`` when given, else a fresh temporary folder
    (``name`` in its prefix) for ``args.quick`` and ``results`` (the committed figures) for a full
    run. A quick run aimed at ``results`` is refused: its figures are not the ones to publish."""
    if args.out is not None:
        out = Path(args.out)
        if args.quick and out.resolve() == Path(results).resolve():
            raise SystemExit(f"--quick never writes over the committed results in {results}; "
                             "give another --out or none (a temporary folder)")
        return out
    return Path(tempfile.mkdtemp(prefix=f"{name}_quick_")) if args.quick else Path(results)

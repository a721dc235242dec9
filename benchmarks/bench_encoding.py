"""Issue 18: encoding and likelihood at a fraction of the adaptive solver's cost, with the error
each result reports about itself.

**Inversion** (the bundled digits model, the first :data:`NUM` held-out digits): every encoder of
:data:`ENCODERS` runs ``decode(encode(x))``. Columns: network calls each way; the round trip's
maximum relative error ``max_i |x_i' - x_i| / |x_i|`` in float32 and float64 (network and data
cast); the mean relative distance of the latent (a pair's first member, the state at ``T``) to
the probability-flow latent from ``dopri5`` at ``rtol = atol =`` :data:`TIGHT` (float64); and
the relative latent error the encoder reports (:func:`sdediff.ode.encode`'s Richardson
estimate, max over the digits). The latent-distance curves go to ``encoding_latents.png``.

**Likelihood**: bits/dim of the same digits (dequantized, seed 0; Hutchinson with one Rademacher
probe, the same probes in every solve, seed 1) by every configuration of :data:`LIKELIHOODS`,
against ``dopri5`` at :data:`TIGHT`; and on the mixtures ``gmm2d``, ``gmm64`` and the held-out
``ring16`` (exact divergence, 256 draws of the data, VP linear) against the mixtures' exact
``log p_{t_min}``. Columns: calls, bits/dim (mean), error, the reported estimate (mean and max
over samples, bits/dim) and whether the solve warned. Deliberately bad configurations (uniform
grid, too few steps) are in the table: a trustworthy estimate flags them.

**Two dimensions** (``--part low-dim``, its own files ``likelihood_2d.{json,md}``): why the 20-call
default misses 0.01 bits/dim on 2-D mixtures. On ``gmm2d``, the held-out 5-component ring and two
more 2-D rings the default never saw (3 components of std 0.2, 12 of std 0.08), and ``gmm64`` for
contrast (exact divergence, 256 draws, seed 2): the default at 20, 40, 80 and 160 calls, other
grids and ``unipc`` at 20 calls, and dopri5 at 1e-3 and 1e-4. Columns: the mean and median signed
error per sample (bits/dim), the share of samples more than 0.1 bits/dim off (also in the inner and
outer half of the batch by Mahalanobis distance to the nearest component), the largest error, the
error estimate the solve reports (mean, bits/dim) and whether it warned.

    python benchmarks/bench_encoding.py            # writes benchmarks/results/encoding.{json,md,png}
    python benchmarks/bench_encoding.py --quick    # 16 digits, fewer rows; a temporary folder
    python benchmarks/bench_encoding.py --part low-dim    # the 2-D table only (about 5 minutes)

A quick run never overwrites the committed results (``--out`` to choose its folder).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch

import sdediff as sd
from sdediff.bench.problems import gmm2d, gmm64, ring_mixture
from sdediff.bench.report import add_output_arguments, results_folder
from sdediff.checkpoint import load_model
from sdediff.checks import AccuracyWarning
from sdediff.data import load_digits
from sdediff.ode import bits_per_dim, dequantize
from sdediff.plotting import plot_vs_nfe
from sdediff.pretrained import default_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"
NUM, TIGHT = 64, 1e-7
#: (label, sampler, options, steps list): the encoders compared on the digits.
ENCODERS = [
    ("bdia (gamma 1)", "bdia", {}, [5, 10, 20, 32, 50]),
    ("edict (p 0.93)", "edict", {}, [5, 10, 20, 25]),
    ("ddim, naive inversion", "ddim", {"schedule": "auto"}, [10, 20, 50]),
    ("ode rk4, logsnr", "ode", {"method": "rk4", "schedule": "logsnr"}, [3, 6, 12]),
]
#: Adaptive reference rows: dopri5 at these tolerances (the round trip of the default 1e-5 too).
ADAPTIVE_TOLS = [1e-3, 1e-5]
#: (label, options): the likelihood solvers: the default, other one-call-per-step samplers at 20
#: calls, the default at 10 and 40 calls, torchdiffeq's fixed-step methods, and bad
#: configurations an error estimate must flag (the uniform grid, too few steps).
LIKELIHOODS = [
    ("default: dpm_solver++ o3", {}),
    ("dpm_solver++ o2", {"sampler": "dpm_solver++", "schedule": "logsnr", "steps": 19}),
    ("unipc o3", {"sampler": "unipc", "order": 3, "schedule": "logsnr", "steps": 19}),
    ("ipndm o3", {"sampler": "ipndm", "order": 3, "schedule": "logsnr", "steps": 19}),
    ("default, 10 calls", {"steps": 9}),
    ("default, 40 calls", {"steps": 39}),
    ("rk4", {"method": "rk4", "schedule": "logsnr", "steps": 5}),
    ("rk4", {"method": "rk4", "schedule": "logsnr", "steps": 10}),
    ("heun3", {"method": "heun3", "schedule": "logsnr", "steps": 6}),
    ("bad: rk4, uniform grid", {"method": "rk4", "schedule": "uniform", "steps": 10}),
    ("bad: euler, uniform grid", {"method": "euler", "schedule": "uniform", "steps": 40}),
    ("bad: default on quadratic", {"schedule": "quadratic"}),
]
#: (label, options): the 2-D convergence table (``--part low-dim``).
LOW_DIM_CONFIGS = [
    *[(f"default, {steps + 1} calls", {"steps": steps}) for steps in (19, 39, 79, 159)],
    *[(f"default on {grid}, 20 calls", {"schedule": grid}) for grid in ("edm", "karras", "uniform")],
    ("unipc o3, 20 calls", {"sampler": "unipc", "order": 3, "schedule": "logsnr", "steps": 19}),
    ("dopri5, tol 1e-3", {"rtol": 1e-3, "atol": 1e-3}),
    ("dopri5, tol 1e-4", {"rtol": 1e-4, "atol": 1e-4}),
]
#: The held-out mixture the choice of the default never saw, beside gmm2d and gmm64.
HELD_OUT = {"ring16 (held out)": lambda: ring_mixture(16, 6, 0.2, seed=7),
            "ring2-5 (held out)": lambda: ring_mixture(2, 5, 0.1),
            "mix32 (held out)": lambda: ring_mixture(32, 20, 0.15, seed=3)}


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``|a_i - b_i| / |b_i|`` per sample."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def first_member(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The state at ``T`` of a latent: itself, or a paired sampler's first member."""
    return z if z.shape[1:] == x.shape[1:] else z[:, 0]


def round_trip(model, x, sampler, steps, options) -> dict:
    """Encode and decode ``x`` in its dtype; calls, the latent and the errors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AccuracyWarning)
        enc = sd.encode(model, x, sampler=sampler, steps=steps, return_info=True, **options)
    dec = sd.decode(model, enc.x, sampler=sampler, steps=steps, return_info=True, **options)
    estimate = enc.extra.get("error_estimate")
    return {"encode_nfe": enc.nfe, "decode_nfe": dec.nfe, "estimate_nfe": enc.extra.get("estimate_nfe", 0),
            "round_trip": float(relative(dec.x, x).max()), "z": first_member(enc.x, x).double(),
            "estimate": None if estimate is None else float(estimate.max()),
            "warned": any(issubclass(w.category, AccuracyWarning) for w in caught)}


def inversion_rows(num: int, quick: bool) -> tuple[list[dict], dict]:
    model, _ = load_model(default_checkpoint())
    x32 = load_digits().test[:num]
    model64, _ = load_model(default_checkpoint())
    model64.net.double()
    x64 = x32.double()
    start = time.perf_counter()
    z_ref = sd.encode(model64, x64, rtol=TIGHT, atol=TIGHT, return_info=True)
    reference = {"nfe": z_ref.nfe, "seconds": time.perf_counter() - start}
    z_ref = z_ref.x
    rows = []
    runs = [(label, sampler, options, steps[:2] if quick else steps)
            for label, sampler, options, steps in ENCODERS]
    runs += [(f"ode dopri5, tol {tol:g}", "ode", {"rtol": tol, "atol": tol}, [None])
             for tol in ADAPTIVE_TOLS]
    for label, sampler, options, steps_list in runs:
        for steps in steps_list:
            r32 = round_trip(model, x32, sampler, steps, options)
            r64 = round_trip(model64, x64, sampler, steps, options)
            rows.append({"method": label, "sampler": sampler, "options": options, "steps": steps,
                         "encode_nfe": r32["encode_nfe"], "decode_nfe": r32["decode_nfe"],
                         "estimate_nfe": r32["estimate_nfe"], "round_trip_f32": r32["round_trip"],
                         "round_trip_f64": r64["round_trip"],
                         "latent_distance": float(relative(r64["z"], z_ref).mean()),
                         "estimate": r64["estimate"], "warned": r64["warned"]})
            print(rows[-1], flush=True)
    return rows, reference


def likelihood_row(model, x, exact, D: int, label: str, options: dict, offset: float, **kw) -> dict:
    """One solve's bits/dim, its error against ``exact`` (per-sample NLL in nats) and its
    reported estimate."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AccuracyWarning)
        r = sd.log_likelihood(model, x, return_info=True, **kw, **options)
    bpd = r.nll / (D * math.log(2)) + offset
    exact_bpd = None if exact is None else exact / (D * math.log(2)) + offset
    estimate = None if r.error_estimate is None else r.error_estimate / (D * math.log(2))
    grid = options.get("schedule", "logsnr" if "rtol" not in options else None)
    solver = options.get("method") or options.get("sampler") or (
        "dopri5" if "rtol" in options else sd.ode.LIKELIHOOD_SAMPLER)
    return {"method": label, "solver": solver,
            "grid": grid, "steps": options.get("steps", 19 if "rtol" not in options else None),
            "nfe": r.nfe, "estimate_nfe": r.estimate_nfe, "bpd": float(bpd.mean()), "nll": r.nll.tolist(),
            "error": None if exact_bpd is None else float((bpd - exact_bpd).mean()),
            "error_max": None if exact_bpd is None else float((bpd - exact_bpd).abs().max()),
            "estimate_mean": None if estimate is None else float(estimate.mean()),
            "estimate_max": None if estimate is None else float(estimate.max()),
            "warned": any(issubclass(w.category, AccuracyWarning) for w in caught)}


def likelihood_rows(num: int, quick: bool) -> list[dict]:
    configs = LIKELIHOODS[:1] + LIKELIHOODS[-3:] if quick else LIKELIHOODS
    rows = []
    model, _ = load_model(default_checkpoint())
    x = dequantize(load_digits().test[:num], 17, generator=torch.Generator().manual_seed(0))
    D, offset = x[0].numel(), bits_per_dim(0.0, x[0].numel(), n_levels=17)

    def probes():
        return {"generator": torch.Generator().manual_seed(1)}

    tight = likelihood_row(model, x, None, D, f"dopri5, tol {TIGHT:g} (reference)",
                           {"rtol": TIGHT, "atol": TIGHT}, offset, **probes())
    exact = torch.tensor(tight["nll"], dtype=torch.float64)
    rows.append({"problem": "digits", **tight, "error": 0.0, "error_max": 0.0})
    for label, options in [("dopri5, tol 1e-5", {"rtol": 1e-5, "atol": 1e-5}),
                           ("dopri5, tol 1e-3", {"rtol": 1e-3, "atol": 1e-3}), *configs]:
        rows.append({"problem": "digits", **likelihood_row(model, x, exact, D, label, options, offset,
                                                           **probes())})
        print("digits", label, rows[-1]["bpd"], rows[-1]["error"], rows[-1]["estimate_mean"], flush=True)
    sde = sd.VPSDE()
    mixtures = {"gmm2d": gmm2d, "gmm64": gmm64, **HELD_OUT}
    for name, make in mixtures.items():
        gmm = make()
        data = gmm.sample(64 if quick else 256, generator=torch.Generator().manual_seed(2))
        exact = -gmm.log_prob(data, sde, sde.t_min)
        score = gmm.score_model(sde)
        D = data[0].numel()
        for label, options in configs:
            rows.append({"problem": name, **likelihood_row(score, data, exact, D, label, options, 0.0,
                                                           divergence="exact")})
            print(name, label, rows[-1]["bpd"], rows[-1]["error"], rows[-1]["estimate_mean"], flush=True)
    for row in rows:
        row.pop("nll")
    return rows


def low_dim_rows() -> list[dict]:
    """Per-sample errors of :data:`LOW_DIM_CONFIGS` on 2-D mixtures (and ``gmm64``) against the
    exact ``log p_{t_min}``, in bits/dim."""
    sde = sd.VPSDE()
    mixtures = {"gmm2d": gmm2d, "ring2-5 (held out)": HELD_OUT["ring2-5 (held out)"],
                "ring2-3, std 0.2 (held out)": lambda: ring_mixture(2, 3, 0.2),
                "ring2-12, std 0.08 (held out)": lambda: ring_mixture(2, 12, 0.08), "gmm64": gmm64}
    rows = []
    for name, make in mixtures.items():
        gmm = make()
        data = gmm.sample(256, generator=torch.Generator().manual_seed(2))
        exact = -gmm.log_prob(data, sde, sde.t_min)
        D = data[0].numel()
        # each draw's Mahalanobis distance to its nearest component: the inner half of the batch
        # against the outer half (the components' tails)
        depth = ((data[:, None] - gmm.means) / gmm.stds).norm(dim=2).min(1).values
        inner = depth <= depth.median()
        for label, options in LOW_DIM_CONFIGS:
            row = likelihood_row(gmm.score_model(sde), data, exact, D, label, options, 0.0,
                                 divergence="exact")
            error = (torch.tensor(row["nll"], dtype=torch.float64) - exact) / (D * math.log(2))
            rows.append({"problem": name, "dim": D, "method": label, "nfe": row["nfe"],
                         "mean": row["error"], "median": float(error.median()),
                         "over_0.1": float((error.abs() > 0.1).double().mean()),
                         "over_0.1_inner": float((error[inner].abs() > 0.1).double().mean()),
                         "over_0.1_outer": float((error[~inner].abs() > 0.1).double().mean()),
                         "max_abs": row["error_max"], "estimate_mean": row["estimate_mean"],
                         "warned": row["warned"]})
            print(rows[-1], flush=True)
    return rows


def low_dim_markdown(rows: list[dict], seconds: float) -> str:
    lines = ["# The 20-call likelihood in two dimensions (issue 18)", "",
             f"`python benchmarks/bench_encoding.py --part low-dim` ({seconds:.0f} s wall, "
             f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}). "
             "Exact divergence, 256 draws of each mixture (seed 2), VP linear; the error per sample is "
             "the computed minus the exact -log p_{t_min}, in bits/dim. Inner / outer half: the "
             "draws nearer to / further from their nearest component's mean (Mahalanobis) than "
             "the batch's median draw.", "",
             "| problem | configuration | calls | mean error | median error | share > 0.1 off | "
             "share > 0.1 off, inner / outer half | max abs error | reported estimate (mean) | "
             "warned |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['method']} | {r['nfe']} | {r['mean']:+.4f} | "
                     f"{r['median']:+.4f} | {100 * r['over_0.1']:.1f}% | "
                     f"{100 * r['over_0.1_inner']:.1f}% / {100 * r['over_0.1_outer']:.1f}% | "
                     f"{r['max_abs']:.3f} | {fmt(r['estimate_mean'], '.3g')} | "
                     f"{'yes' if r['warned'] else 'no'} |")
    return "\n".join(lines) + "\n"


def fmt(v, spec=".2e") -> str:
    return "-" if v is None else format(v, spec)


def markdown(inversion, reference, likelihood, meta) -> str:
    lines = ["# Encoding and likelihood: cost, accuracy and the reported error (issue 18)", "",
             f"`python benchmarks/bench_encoding.py{' --quick' if meta['quick'] else ''}` "
             f"({meta['seconds']:.0f} s wall, {meta['machine']}, torch {meta['torch']}); "
             f"{meta['num']} held-out digits, the bundled digits model.", "",
             "## Inversion", "",
             f"Latent distance: mean relative distance to the dopri5 latent at rtol = atol = "
             f"{TIGHT:g} in float64 ({reference['nfe']} calls). Round trip: max relative error of "
             "decode(encode(x)). Estimate: the relative latent error the encoder reports "
             "(Richardson against half the steps, max over the digits; its calls apart).", "",
             "| method | steps | calls encode | calls decode | round trip float32 | round trip "
             "float64 | latent distance | reported estimate (calls) | warned |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in inversion:
        lines.append(f"| {r['method']} | {r['steps'] or 'adaptive'} | {r['encode_nfe']} | "
                     f"{r['decode_nfe']} | {fmt(r['round_trip_f32'])} | {fmt(r['round_trip_f64'])} | "
                     f"{fmt(r['latent_distance'], '.3g')} | {fmt(r['estimate'], '.3g')} "
                     f"({r['estimate_nfe']}) | {'yes' if r['warned'] else 'no'} |")
    lines += ["", "## Likelihood", "",
              "Digits: bits/dim (dequantized, one Rademacher probe, the same probes everywhere) "
              f"against dopri5 at {TIGHT:g}. Mixtures: exact divergence, against the exact "
              "log-density (bits/dim without dequantization offset). Error: mean signed; "
              "estimate: the Richardson estimate the solve reports (mean / max over samples, "
              "bits/dim; its calls apart).", "",
              "| problem | configuration | solver | grid | steps | calls | bits/dim | error | max abs error "
              "| "
              "reported estimate mean / max (calls) | warned |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in likelihood:
        est = (f"{fmt(r['estimate_mean'], '.2g')} / {fmt(r['estimate_max'], '.2g')} "
               f"({r['estimate_nfe']})" if r["estimate_mean"] is not None else "-")
        lines.append(f"| {r['problem']} | {r['method']} | {r['solver']} | {r['grid'] or '-'} | "
                     f"{r['steps'] or 'adaptive'}"
                     f" | {r['nfe']} | {r['bpd']:.4f} | {fmt(r['error'], '+.4f')} | "
                     f"{fmt(r['error_max'], '.4f')} | {est} | {'yes' if r['warned'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser, RESULTS, "16 digits and fewer rows")
    parser.add_argument("--part", choices=("all", "inversion", "likelihood", "low-dim"), default="all",
                        help="low-dim: only the 2-D table, into likelihood_2d.{json,md}")
    args = parser.parse_args()
    out = results_folder(args, RESULTS, "encoding")
    out.mkdir(parents=True, exist_ok=True)
    if args.part == "low-dim":
        start = time.perf_counter()
        rows = low_dim_rows()
        seconds = time.perf_counter() - start
        record = {"seconds": seconds, "rows": rows}
        (out / "likelihood_2d.json").write_text(json.dumps(record, indent=1) + "\n")
        (out / "likelihood_2d.md").write_text(low_dim_markdown(rows, seconds))
        print(f"wrote {out / 'likelihood_2d.md'}, {out / 'likelihood_2d.json'}")
        return
    num = 16 if args.quick else NUM
    start = time.perf_counter()
    saved = json.loads((out / "encoding.json").read_text()) if (out / "encoding.json").is_file() else {}
    inversion, reference = saved.get("inversion", []), saved.get("reference", {})
    likelihood = saved.get("likelihood", [])
    if args.part in ("all", "inversion"):
        inversion, reference = inversion_rows(num, args.quick)
    if args.part in ("all", "likelihood"):
        likelihood = likelihood_rows(num, args.quick)
    meta = {"seconds": time.perf_counter() - start, "quick": args.quick, "num": num,
            "torch": torch.__version__, "part": args.part,
            "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads"}
    (out / "encoding.json").write_text(json.dumps(
        {"meta": meta, "inversion": inversion, "reference": reference, "likelihood": likelihood},
        indent=1) + "\n")
    (out / "encoding.md").write_text(markdown(inversion, reference, likelihood, meta))
    series = {}
    for r in inversion:
        if r["steps"] is not None:
            nfe, dist = series.setdefault(r["method"], ([], []))
            nfe.append(r["encode_nfe"])
            dist.append(r["latent_distance"])
    plot_vs_nfe(series, out / "encoding_latents.png", "mean relative distance to the PF-ODE latent",
                title=f"Digits: encoder latents against dopri5 at {TIGHT:g} ({num} held-out digits)")
    print(f"wrote {out / 'encoding.md'}, {out / 'encoding.json'}, {out / 'encoding_latents.png'}")


if __name__ == "__main__":
    main()

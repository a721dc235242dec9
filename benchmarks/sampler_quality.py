"""Every registered sampler on the exact 2-D ring mixture (8 components on the ring of radius 1.5,
std 0.15, VP linear; equal weights, unlike ``gmm2d``'s ``linspace(1, 2)``).

- stochastic samplers: energy distance of 2000 samples (``denoise=False``) to 2000 exact mixture
  samples, divided by the two-sample floor (two exact sets of that size, mean of 5 seeds);
- deterministic samplers: RMS error to the exact probability-flow endpoint (scipy DOP853 in
  ``y = x/alpha``, ``s = sigma/alpha``: :func:`sdediff.bench.problems.exact_pf_endpoint`) at
  20/40/80/160 steps and the fitted log-log slope, the observed order (``ode`` with its default
  adaptive dopri5 is reported at rtol = atol = 1e-7).

    python benchmarks/sampler_quality.py     # prints the table, writes results/sampler_quality.md
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import sdediff as sd
from sdediff.bench.metrics import energy_distance, rms, two_sample_floor
from sdediff.bench.problems import STD, exact_pf_endpoint, ring_means

N_SAMPLES, STOCHASTIC_STEPS, ORDER_STEPS = 2000, 200, [20, 40, 80, 160]


def main():
    # gmm2d's means and std with equal weights: this table's problem since it was first written
    sde, gmm = sd.VPSDE(), sd.GaussianMixture(ring_means(8), STD)
    model = gmm.score_model(sde)
    rows = []
    floor = two_sample_floor(lambda n, g: gmm.sample(n, generator=g), N_SAMPLES)
    exact = gmm.sample(N_SAMPLES, generator=torch.Generator().manual_seed(99))
    x_small = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
    reference = exact_pf_endpoint(gmm, sde, x_small, 1e-3)
    for name in sd.samplers.available():
        sampler = sd.samplers.get(name)
        if sampler.is_stochastic():
            r = sd.sample(model, shape=(N_SAMPLES, 2), sampler=name, steps=STOCHASTIC_STEPS,
                          generator=torch.Generator().manual_seed(1), denoise=False,
                          return_info=True, dtype=torch.float64)
            ratio = energy_distance(r.x, exact) / floor
            rows.append((name, f"energy distance {ratio:.2f} x floor at {r.nfe} NFE", "-"))
        elif sampler.adaptive:
            r = sd.sample(model, x_T=x_small, sampler=name, rtol=1e-7, atol=1e-7, denoise=False,
                          return_info=True)
            rows.append((name, f"RMS error {rms(r.x, reference):.2e} at {r.nfe} NFE (rtol 1e-7)",
                         "adaptive"))
        else:
            errors = [rms(sd.sample(model, x_T=x_small, sampler=name, steps=n, denoise=False,
                                    schedule="logsnr"), reference) for n in ORDER_STEPS]
            slope = np.polyfit(np.log(1 / np.array(ORDER_STEPS)), np.log(errors), 1)[0]
            text = ", ".join(f"{e:.1e}" for e in errors)
            rows.append((name, f"RMS error {text} at {ORDER_STEPS} steps",
                         f"{slope:.2f} (declared {sampler.order:g})"))
    lines = [f"floor (two exact sets of {N_SAMPLES}): {floor:.2e}", "",
             "| sampler | quality | observed order |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "sampler_quality.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""sdediff's samplers against diffusers' own schedulers on one diffusers network: the
equivalence table of docs/interop.md.

A seeded random ``UNet2DModel`` (8x8, one channel, 0.7 M parameters; untrained, so its ``x0``
predictions reach |x| ~ 500 and only relative figures mean anything) runs under each diffusers
scheduler's own loop (the loop of ``DDIMPipeline.__call__``) and under the sdediff sampler that
computes the same method, from the same ``x_T``, in float32:

==========================================  ===================================================
diffusers                                   sdediff
==========================================  ===================================================
``DDIMScheduler`` (eta 0, clip_sample off)  ``ddim``, ``schedule=`` the same spacing
``DPMSolverMultistepScheduler`` (2M,        ``dpm_solver++`` ``order=2``,
``final_sigmas_type="zero"``)               ``lower_order_final=False``, on its timesteps
``DDPMScheduler`` (fixed_small, clip off)   ``ddpm``, ``schedule="leading"``, the same noise
==========================================  ===================================================

Each row is ``max |ours - diffusers| / max |diffusers|`` over a batch of 4 (the tests assert
<= 1e-5, ``tests/test_interop.py``).

    python benchmarks/bench_interop.py [--out PATH]

Prints the table and writes benchmarks/results/interop_equivalence.md (``--out`` elsewhere).
Takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

import sdediff as sd

RESULTS = Path(__file__).resolve().parent / "results" / "interop_equivalence.md"
SHAPE = (4, 1, 8, 8)


def tiny_unet():
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def x_T() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def relative(ours, reference) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def diffusers_loop(unet, scheduler, steps, x, **kwargs):
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x, **kwargs).prev_sample
    return x


def ddim_rows(unet):
    import diffusers

    for prediction in ("epsilon", "v_prediction"):
        for spacing in ("leading", "trailing"):
            for steps in (10, 50):
                scheduler = diffusers.DDIMScheduler(clip_sample=False, prediction_type=prediction,
                                                    timestep_spacing=spacing)
                reference = diffusers_loop(unet, scheduler, steps, x_T(), eta=0.0)
                model = sd.ScoreModel.from_diffusers(unet, scheduler)
                ours = sd.sample(model, x_T=x_T(), sampler="ddim", schedule=spacing, steps=steps)
                yield (f"DDIM {prediction}, {spacing}", steps,
                       f"ddim schedule={spacing!r}", relative(ours, reference))


def dpm_rows(unet):
    import diffusers

    for spacing in ("linspace", "trailing"):
        for steps in (10, 20):
            scheduler = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)
            reference = diffusers_loop(unet, scheduler, steps, x_T())
            model = sd.ScoreModel.from_diffusers(unet, scheduler)
            times = model.sde.index_to_time(scheduler.timesteps)
            ours = sd.sample(model, x_T=x_T(), sampler="dpm_solver++", order=2,
                             lower_order_final=False, schedule=times, t_end=float(times[-1]))
            yield (f"DPM-Solver++(2M), {spacing}", steps, "dpm_solver++ on its timesteps",
                   relative(ours, reference))


def ddpm_rows(unet):
    """Same noise: sdediff's draws are recorded and replayed into diffusers' ``randn_tensor``."""
    import diffusers
    from diffusers.schedulers import scheduling_ddpm

    from sdediff.samplers.noise import BrownianNoise

    drawn, normal, randn = [], BrownianNoise.normal, scheduling_ddpm.randn_tensor

    def record(self, t_cur, t_next):
        drawn.append(normal(self, t_cur, t_next))
        return drawn[-1]

    for steps in (10, 50):
        drawn.clear()
        scheduler = diffusers.DDPMScheduler(clip_sample=False)
        model = sd.ScoreModel.from_diffusers(unet, scheduler)
        BrownianNoise.normal = record
        try:
            ours = sd.sample(model, x_T=x_T(), sampler="ddpm", schedule="leading", steps=steps,
                             generator=torch.Generator().manual_seed(2))
        finally:
            BrownianNoise.normal = normal
        replay = iter(drawn)
        scheduling_ddpm.randn_tensor = lambda *a, _replay=replay, **k: next(_replay)
        try:
            reference = diffusers_loop(unet, scheduler, steps, x_T())
        finally:
            scheduling_ddpm.randn_tensor = randn
        yield "DDPM fixed_small, leading", steps, "ddpm schedule='leading'", relative(ours, reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    unet = tiny_unet()
    rows = [*ddim_rows(unet), *dpm_rows(unet), *ddpm_rows(unet)]
    lines = ["| diffusers | steps | sdediff | max rel. difference |", "|---|---|---|---|"]
    lines += [f"| {a} | {n} | `{b}` | {d:.1e} |" for a, n, b, d in rows]
    head = (f"Measured by `python benchmarks/bench_interop.py` (torch {torch.__version__}, "
            f"diffusers {__import__('diffusers').__version__}, {os.cpu_count()} cores, 1 thread, "
            f"{platform.machine()}); float32, batch 4, random seeded UNet2DModel.")
    text = head + "\n\n" + "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Euler–Maruyama on the reverse SDE (Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", eq. 6; Kloeden & Platen 1992, sec. 9.1).

The reverse SDE ``dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw``, run from ``T`` down to
``t_end`` on the grid ``T = t_0 > ... > t_N = t_end``. With ``dt_i = t_i - t_{i+1} > 0``:

    x_{i+1} = x_i - [f(t_i) x_i - g(t_i)^2 score(x_i, t_i)] dt_i + g(t_i) sqrt(dt_i) z_i,

``z_i`` the Brownian increment of the step over its standard deviation
(:class:`~sdediff.samplers.noise.BrownianNoise`: one seed, one path at any step count). The
drift is :meth:`~sdediff.sde.ForwardProcess.reverse_drift`. The last step adds no noise: its
``g sqrt(dt) z`` would be pure noise at the data end, which the final denoise (or a metric) would
have to undo (score_sde keeps it in ``x`` and returns ``x_mean``).

Weak order 1 (strong order 1: the noise is additive), one network call per step.
"""

from __future__ import annotations

import torch

from ..checks import coefficient_dtype
from . import register
from .base import Sampler


@register("euler_maruyama")
class EulerMaruyama(Sampler):
    family = "sde"
    order = 1
    stochastic = True
    default_steps = 500
    defaults = {"schedule": "uniform"}

    def run(self, model, x, ts, noise, observe):
        sde = model.sde
        dt = (ts[:-1] - ts[1:]).tolist()                            # dt_i > 0, float64
        g_sqrt_dt = (sde.diffusion(ts[:-1]) * torch.sqrt(ts[:-1] - ts[1:])).tolist()
        times = ts.tolist()
        # the drift takes its times on x's device (one copy here, none per step)
        t_dev = ts.to(device=x.device, dtype=coefficient_dtype(x.device))
        last = len(dt) - 1
        for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            drift = sde.reverse_drift(model, x, t_dev[i])           # f x - g^2 score at t_i
            x = x - drift * dt[i]                                   # deterministic part, back in time
            if i < last:
                x = x + g_sqrt_dt[i] * noise.normal(t_cur, t_next)  # + g sqrt(dt) z
            observe(i + 1, x)
        return x

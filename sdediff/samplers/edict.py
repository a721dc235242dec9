"""EDICT: exact diffusion inversion by coupled transformations (Wallace, Gokul & Naik 2023,
CVPR, arXiv:2211.12446, eqs. 10-14).

Two copies ``(x, y)`` of the state, both ``x_T`` at the start, take DDIM steps in turn, each with
the network evaluated at the other copy, then are mixed with weight ``p``. A DDIM step from ``t``
to ``t' < t`` is ``x' = a x + b eps_theta(z, t)`` with ``a = alpha_t'/alpha_t``,
``b = -sigma_t' expm1(lambda_t' - lambda_t)`` (:func:`~sdediff.samplers.ddim.ddim_coefficients`):

    x_i = a x + b eps(y, t)          y_i = a y + b eps(x_i, t)
    x'  = p x_i + (1 - p) y_i        y'  = p y_i + (1 - p) x'

Every line changes one copy by a function of the other, so the step inverts in reverse order
(encoding, ``t' -> t``) with the same two network calls:

    y_i = (y' - (1 - p) x') / p      x_i = (x' - (1 - p) y_i) / p
    y   = (y_i - b eps(x_i, t)) / a  x   = (x_i - b eps(y, t)) / a

A round trip is exact to round-off for any network (exactness E1). The latent of an encoding is
the pair ``(x_T, y_T)`` stacked on dim 1 (``paired``); decoding returns ``x``. Each copy follows
DDIM to first order. ``p = 0.93`` is the paper's; ``1/p`` amplifies round-off on inversion. The
code's alternation of which copy goes first (``leapfrog_steps``) is left out: the paper's
equations do not have it. Cost: two network calls per step either way.
"""

from __future__ import annotations

import torch

from ..checks import check_float
from . import register
from .base import Sampler
from .ddim import ddim_coefficients


@register("edict")
class EDICT(Sampler):
    family = "reversible"
    reversible = True
    paired = True
    order = 1
    default_steps = 20
    defaults = {"schedule": "auto", "p": 0.93}

    def check_options(self):
        check_float("p", self.options["p"], 0.0, 1.0, low_open=True)

    def nfe(self, steps):
        return 2 * steps

    def run_pair(self, model, x, ts, observe, pair):
        p = self.options["p"]
        up = float(ts[-1]) > float(ts[0])
        # the generation step between ts[i] and ts[i + 1] runs from the noisier of the two
        a, b = (v.tolist() for v in ddim_coefficients(model.sde, ts.flip(0) if up else ts, 0.0)[:2])
        M = ts.numel() - 1
        x, y = (x[:, 0], x[:, 1]) if pair else (x, x)
        for i in range(M):
            if up:                                   # invert the step ts[i + 1] -> ts[i]
                k, t = M - 1 - i, ts[i + 1]
                y_i = (y - (1 - p) * x) / p
                x_i = (x - (1 - p) * y_i) / p
                y = (y_i - b[k] * model.eps(x_i, t)) / a[k]
                x = (x_i - b[k] * model.eps(y, t)) / a[k]
            else:
                t = ts[i]
                x_i = (a[i] * x).add(model.eps(y, t), alpha=b[i])
                y_i = (a[i] * y).add(model.eps(x_i, t), alpha=b[i])
                x = p * x_i + (1 - p) * y_i
                y = p * y_i + (1 - p) * x
            observe(i + 1, x)
        return torch.stack([x, y], dim=1) if up else x

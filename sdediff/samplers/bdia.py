"""BDIA-DDIM: exactly invertible DDIM by bidirectional integration (Zhang, Lewis & Kleijn 2023,
"Exact Diffusion Inversion via Bi-directional Integration Approximation", arXiv:2307.10829,
eq. 16 and section 4).

Write the DDIM map from state ``z_j`` at ``t_j`` to any time ``u``, with ``eps^ = eps_theta(z_j, t_j)``,

    Phi_{j->u}(z_j) = alpha_u x0^(z_j) + sigma_u eps^ = a z_j + b eps^,
    a = alpha_u / alpha_j,   b = -sigma_u expm1(lambda_u - lambda_j)

(:func:`~sdediff.samplers.ddim.ddim_coefficients`). One network call at ``z_j`` serves both
directions. Along a grid ``t_0 > t_1 > ... > t_N`` (the sampler's, from ``T``), after a plain
DDIM first step, every step uses the last two states:

    z_{j+1} = Phi_{j->j+1}(z_j) + gamma (z_{j-1} - Phi_{j->j-1}(z_j)).

The bracket is the backward DDIM step's error, so ``gamma = 0`` is DDIM and ``gamma = 1`` is the
time-symmetric two-step rule (second order, like leapfrog; the paper's README names the
complement ``1 - gamma``). Solved for ``z_{j-1}``, the same relation runs up the grid:

    z_{j-1} = Phi_{j->j-1}(z_j) + (z_{j+1} - Phi_{j->j+1}(z_j)) / gamma,

one network call per step, algebraically the inverse: a round trip is exact to round-off for any
network (exactness E1, ``shared/reference/controllable-and-inversion.md`` section 7). The state is
the pair of the last two times, so the latent of an encoding is the pair ``(z(T), z(t_1))``
stacked on dim 1, ``(B, 2, ...)``, and decoding takes it back (``paired``). Encoding starts with
one DDIM step up from the data (the naive inversion) to make the first pair.

Stability: linearised, the two-step rule has roots ``1`` and ``-gamma``; its inverse ``1`` and
``-1/gamma``, so below ``gamma = 1`` the inversion amplifies round-off by ``1/gamma`` per step.
``gamma = 1`` (default) is neutral both ways; ``gamma = 0`` generates (plain DDIM) but
cannot encode. Cost: one network call per step either way
(``steps`` to generate or encode, ``steps - 1`` to decode a pair).
"""

from __future__ import annotations

import torch

from ..checks import InputValueError, check_float
from . import register
from .base import Sampler
from .ddim import ddim_coefficients


@register("bdia")
class BDIA(Sampler):
    family = "reversible"
    reversible = True
    paired = True
    order = 2                    # gamma = 1; DDIM's 1 below (instances declare their own)
    default_steps = 20
    defaults = {"schedule": "auto", "gamma": 1.0}

    def check_options(self):
        check_float("gamma", self.options["gamma"], 0.0, 1.0)
        self.order = 2 if self.options["gamma"] == 1.0 else 1

    def run_pair(self, model, x, ts, observe, pair):
        up = float(ts[-1]) > float(ts[0])                # encoding: solve the relation upwards
        if up and self.options["gamma"] == 0:
            raise InputValueError("bdia with gamma=0 is DDIM, whose steps do not invert; encode "
                                  "with gamma in (0, 1] (default 1)")
        c = 1 / self.options["gamma"] if up else self.options["gamma"]
        M = ts.numel() - 1
        a_next, b_next = (v.tolist() for v in ddim_coefficients(model.sde, ts, 0.0)[:2])
        a_back, b_back = (v.tolist() for v in ddim_coefficients(model.sde, ts.flip(0), 0.0)[:2])
        if pair:                                         # decoding: (z(T), z(t_1)) given
            previous, current = x[:, 0], x[:, 1]
        else:                                            # a plain DDIM step makes the first pair
            previous = x
            current = (a_next[0] * x).add(model.eps(x, ts[0]), alpha=b_next[0])
        observe(1, current)
        for j in range(1, M):
            eps = model.eps(current, ts[j])               # one call: both DDIM directions
            ahead = (a_next[j] * current).add(eps, alpha=b_next[j])          # Phi_{j->j+1}
            behind = (a_back[M - j] * current).add(eps, alpha=b_back[M - j])  # Phi_{j->j-1}
            previous, current = current, ahead.add(previous - behind, alpha=c)
            observe(j + 1, current)
        return torch.stack([current, previous], dim=1) if up else current   # (z(T), z(t_1))

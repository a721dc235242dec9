"""Predictor-corrector sampling (Song et al. 2021, sec. 4.2, Alg. 1; app. G, Algs. 2-3 and the
Langevin corrector; score_sde's ``get_pc_sampler`` with ``ReverseDiffusionPredictor`` and
``LangevinCorrector``).

Each grid step ``t_i -> t_{i+1}`` runs ``M = corrector_steps`` Langevin moves at ``t_i`` and then
one reverse-diffusion predictor step (:func:`~sdediff.samplers.reverse_diffusion.reverse_diffusion_step`).
A Langevin move with ``s = score(x, t_i)`` and ``z ~ N(0, I)``:

    eps = 2 alpha_i (r ||z|| / ||s||)^2,      x <- x + eps s + sqrt(2 eps) z,

``r = snr`` and ``||.||`` the batch mean of the per-sample L2 norms (one scalar step size for the
whole batch, as score_sde's code; ``step_norm="batch"``, the default), or each sample's own norms
(``step_norm="sample"``: the paper's algorithm run per sample, so that sample ``i`` does not
depend on the rest of its batch, as :class:`~sdediff.streams.SampleSeeds` promises).
score_sde's ``alpha_i`` is ``1 - beta_i`` for VP and 1 for VE; here it is
``alpha_i = (alpha(t_i) / alpha(t_{i+1}))^2`` for every process, which is exactly those two and
defines it for the cosine VP and sub-VP too (score_sde's corrector crashes on sub-VP, which has no
``alphas`` table).

Order of the moves: the paper's Alg. 1 predicts and then corrects at the new time; score_sde's
code corrects at ``t_i`` and then predicts. Both interleave the same way, shifted by one step; the
latter is used here, so ``alpha_i`` belongs to the step about to be taken and the last move is the
predictor's noise-free final step.

Noise: the predictor's ``z_i`` is the step's Brownian increment (the path ``reverse_diffusion`` and
``euler_maruyama`` see); the corrector's are
:meth:`~sdediff.samplers.noise.BrownianNoise.corrector_normal` draws, seeded by the same seed and
keyed by step index (so, unlike the predictor's path, they change with the step count).

Weak order 1 (the predictor's). NFE ``(corrector_steps + 1)`` per step, exactly:
``corrector_steps=0`` is ``reverse_diffusion`` and costs the same (score_sde reports ``2N`` for
its ``none`` corrector).
"""

from __future__ import annotations

import torch

from ..checks import check_choice, check_float, check_int, coefficient_dtype
from . import register
from .base import Sampler
from .reverse_diffusion import reverse_diffusion_coefficients, reverse_diffusion_step

#: Langevin step sizes: one for the batch (norms averaged, score_sde) or one per sample.
STEP_NORMS = ("batch", "sample")


def _norm(v: torch.Tensor, dtype: torch.dtype = torch.float64, per_sample: bool = False
          ) -> torch.Tensor:
    """Batch mean of the per-sample L2 norms (or the norms themselves, shaped to broadcast over
    ``v``), in float64 (``dtype``: float32 on MPS), on ``v``'s device: the step size never
    leaves it (no host sync per move)."""
    norms = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1, dtype=dtype)
    return norms.reshape(-1, *[1] * (v.dim() - 1)) if per_sample else norms.mean()


def langevin_step(x: torch.Tensor, score: torch.Tensor, z: torch.Tensor, snr: float,
                  alpha: float, dtype: torch.dtype = torch.float64,
                  per_sample: bool = False) -> torch.Tensor:
    """One Langevin move ``x + eps s + sqrt(2 eps) z`` with ``eps = 2 alpha (snr ||z|| / ||s||)^2``
    (the norms in ``dtype``; batch means, or per sample)."""
    eps = 2 * alpha * (snr * _norm(z, dtype, per_sample) / _norm(score, dtype, per_sample)) ** 2
    return x + eps.to(x.dtype) * score + torch.sqrt(2 * eps).to(x.dtype) * z


@register("pc")
class PredictorCorrector(Sampler):
    family = "pc"
    order = 1
    stochastic = True
    default_steps = 500
    defaults = {"schedule": "uniform", "snr": 0.16, "corrector_steps": 1, "step_norm": "batch"}

    def check_options(self):
        check_float("snr", self.options["snr"], 0.0, None, low_open=True)
        check_choice("step_norm", self.options["step_norm"], STEP_NORMS)
        check_int("corrector_steps", self.options["corrector_steps"], minimum=0)

    def nfe(self, steps):
        return steps * (self.options["corrector_steps"] + 1)

    def run(self, model, x, ts, noise, observe):
        snr, M = self.options["snr"], self.options["corrector_steps"]
        per_sample = self.options["step_norm"] == "sample"
        f, G = reverse_diffusion_coefficients(model.sde, ts)
        alpha = ((1 + f) ** 2).tolist()                                # (alpha_i / alpha_{i+1})^2
        f, G = f.tolist(), G.tolist()
        times = ts.tolist()
        dtype = coefficient_dtype(x.device) if M else torch.float64
        last = len(f) - 1
        for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            for k in range(M):                                         # corrector at t_i
                score = model.score(x, ts[i])
                x = langevin_step(x, score, noise.corrector_normal(i, k), snr, alpha[i], dtype,
                                  per_sample)
            score = model.score(x, ts[i])                              # predictor t_i -> t_{i+1}
            z = noise.normal(t_cur, t_next) if i < last else None      # no noise at the end
            x = reverse_diffusion_step(x, score, f[i], G[i], z)
            observe(i + 1, x)
        return x

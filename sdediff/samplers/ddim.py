"""DDIM (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models", eq. 12).

One step from ``s`` to ``t < s`` with ``eps^ = eps_theta(x_s, s)`` and
``x0^ = (x_s - sigma_s eps^) / alpha_s``:

    x_t = alpha_t x0^ + sqrt(sigma_t^2 - s_eta^2) eps^ + s_eta z,
    s_eta^2 = eta^2 sigma_t^2 (1 - e^{-2h}),   h = lambda_t - lambda_s > 0.

``s_eta`` is eq. 16's ``sigma_t(eta)`` written with the log-SNR step ``h`` (for VP,
``(1 - abar_p)/(1 - abar_t) (1 - abar_t/abar_p) = sigma_t^2 (1 - e^{-2h})``), so the rule holds for
every process. Collecting terms, ``x_t = a x_s + b eps^ + s_eta z`` with

    a = alpha_t / alpha_s,   b = sigma_t (sqrt(1 - eta^2 (1 - e^{-2h})) - e^h),

computed in float64 with ``expm1`` before the loop. ``eta = 0`` is deterministic and equals
DPM-Solver-1 (``b = -sigma_t expm1(h)``); ``eta = 1`` is DDPM's ancestral step.

Order 1, one network call per step.
"""

from __future__ import annotations

import torch

from ..checks import check_float
from . import register
from .base import Sampler


def ddim_coefficients(sde, ts: torch.Tensor, eta: float):
    """Per-step ``(a, b, s_eta)`` for the grid ``ts`` (float64 tensors of length ``N``)."""
    log_alpha = torch.log(sde.alpha(ts))
    sigma = sde.alpha_sigma(ts)[1]
    lam = sde.log_snr(ts)
    h = lam[1:] - lam[:-1]
    p = -torch.expm1(-2 * h)  # 1 - e^{-2h}
    a = torch.exp(log_alpha[1:] - log_alpha[:-1])
    # sqrt(1 - eta^2 p) - e^h, arranged so that eta = 0 gives -expm1(h) without cancellation
    b = sigma[1:] * (-(eta**2) * p / (1 + torch.sqrt(1 - eta**2 * p)) - torch.expm1(h))
    s_eta = eta * sde.transition_stds(ts)[1]                    # eta x the posterior's std
    return a, b, s_eta


@register("ddim")
class DDIM(Sampler):
    family = "ddim"
    reversible = True            # the update holds for either direction of time: encodes
    order = 1
    default_steps = 50
    defaults = {"schedule": "uniform", "eta": 0.0}

    def check_options(self):
        check_float("eta", self.options["eta"], 0.0, 1.0)

    def is_stochastic(self):
        return self.options["eta"] > 0

    def run(self, model, x, ts, noise, observe):
        eta = self.options["eta"]
        a, b, s_eta = (c.tolist() for c in ddim_coefficients(model.sde, ts, eta))
        times = ts.tolist()
        for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            eps = model.eps(x, ts[i])                       # eps^ = eps_theta(x_s, s)
            x = (a[i] * x).add(eps, alpha=b[i])             # eq. 12 with eta's share removed
            if eta > 0:
                x = x.add(noise.normal(t_cur, t_next), alpha=s_eta[i])   # + sigma_t(eta) z
            observe(i + 1, x)
        return x

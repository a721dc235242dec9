"""DDPM ancestral sampling (Ho, Jain & Abbeel 2020, "Denoising Diffusion Probabilistic Models",
Algorithm 2), respaced when ``steps < N`` (Nichol & Dhariwal 2021, "Improved DDPM", section 4).

The chain has ``N = num_train_steps`` steps on the grid ``t_i = i T / N`` (the map lives in
:class:`~sdediff.sde.DDPMChain`). A step from kept index ``t`` to the next kept index ``p < t``
draws from the posterior ``q(x_p | x_t, x0^)`` with ``x0^`` the model's prediction at ``t``
(Ho et al. eq. 6-7, with skipping as in solver-formulas 2.1):

    x_p = mu~(x_t, x0^) + s z,   mu~ = (alpha_p / alpha_t) x_t + sigma_p (e^{-h} - e^{h}) eps^,
    h = lambda_p - lambda_t > 0,

which is DDIM's step with ``eta = 1`` (:func:`~sdediff.samplers.ddim.ddim_coefficients`). The
variance ``s^2`` (``variance=``):

- ``"beta_tilde"`` (default, ``fixed_small``): ``sigma_p^2 (1 - e^{-2h})``, the posterior
  variance; for VP ``(1 - abar_p)/(1 - abar_t) (1 - abar_t/abar_p)``;
- ``"beta"`` (``fixed_large``): ``sigma_t^2 (1 - e^{-2h})``, the forward transition variance;
  for VP ``beta-bar = 1 - abar_t/abar_p`` (``beta_t`` without respacing).

``alpha``, ``sigma`` are those of the chain: for a ``VPSDE``, ``sde.discretize(N)``'s
``sqrt(abar_i)``, ``sqrt(1 - abar_i)``; for other processes (no discrete chain) the process's own
``alpha(t_i)``, ``sigma(t_i)``. The model is evaluated at the chain's continuous times ``t_i``.
For the linear VP, Ho et al.'s betas give a chain slightly off the continuous process
(``1 - abar_1`` below ``sigma(t_1)^2``, ``abar_N`` below ``alpha(T)^2``), yet with the exact
mixture score its samples are as close to the data as with the continuous ``alpha(t_i)``,
``sigma(t_i)`` (measurements: ``docs/samplers.md``, 'DDPM: the chain against the continuous
process'). So the discrete chain is used and no switch is offered; for the cosine VP the two
coincide.

Respacing keeps ``steps + 1`` indices evenly spaced (rounded half up) from ``N`` (the first
evaluation is at exactly ``T``) down to ``time_to_index(t_end)``; the run ends there, at the index
time nearest ``t_end`` (``result.times[-1]``). ``steps = N - 1`` (the default) with the default
``t_end`` runs the whole chain down to ``x_1``: Ho et al.'s Algorithm 2 but its last, noise-free
step ``t = 1``, which returns ``mu~(x_1, x0^) = x0^`` (``abar_0 = 1``). That step is the final
denoise (``denoise=True``): ``N`` network calls in all. (The denoise converts with the model's
continuous ``alpha(t_1)``, ``sigma(t_1)``; Algorithm 2 with the chain's ``sqrt(abar_1)``,
``sqrt(1 - abar_1)``, a slightly smaller ``sigma`` for the linear VP: ``docs/samplers.md``,
same section.)

On a discrete process (:class:`~sdediff.sde.DiscreteVPSDE`, a diffusers model) the chain is the
process's own (``num_train_steps`` defaults to its ``M``), and ``schedule=`` one of diffusers'
spacings (``leading``, ``trailing``, ``linspace``) keeps exactly ``DDPMScheduler``'s timesteps:
its ``steps - 1`` ancestral steps, then the final denoise, step for step
(``tests/test_interop.py``).

Stochastic, weak order 1, one network call per step.
"""

from __future__ import annotations

import torch

from ..checks import InputValueError, check_choice, check_float, check_int
from . import register
from .base import Sampler
from .ddim import ddim_coefficients
from .grids import SPACINGS

VARIANCES = ("beta_tilde", "beta")


@register("ddpm")
class DDPM(Sampler):
    family = "ddpm"
    order = 1
    stochastic = True
    default_steps = 999
    #: ``schedule=None``: the chain respaced evenly (below); or one of diffusers' spacings.
    #: ``num_train_steps=None``: a discrete process's own ``M``, else 1000.
    defaults = {"variance": "beta_tilde", "num_train_steps": None, "schedule": None}

    def check_options(self):
        check_choice("variance", self.options["variance"], VARIANCES)
        if self.options["num_train_steps"] is not None:
            check_int("num_train_steps", self.options["num_train_steps"], minimum=2)
        schedule = self.options["schedule"]
        if schedule is not None:
            check_choice("ddpm schedule (None: the chain respaced evenly)", schedule, SPACINGS)

    def chain_length(self, sde) -> int:
        own = getattr(sde, "num_train_timesteps", None)
        given = self.options["num_train_steps"]
        if own is not None and given not in (None, own):
            raise InputValueError(f"num_train_steps={given} differs from the discrete process's own "
                                  f"chain of {own} steps; leave it out")
        return given or own or 1000

    def grid(self, sde, steps, t_end):
        if steps is None and self.options["schedule"] is None:
            steps = self.chain_length(sde) - 1                # the whole chain to x_1
        return super().grid(sde, steps, t_end)

    def times(self, sde, steps, t_end):
        if self.options["schedule"] is not None:
            return super().times(sde, steps, t_end)           # diffusers' spacing
        chain = sde.discretize(self.chain_length(sde))
        N, i_end = chain.N, int(chain.time_to_index(t_end))
        check_float(f"largest beta of the num_train_steps = {N} chain (raise num_train_steps)",
                    float(chain.betas.max()), 0.0, 1.0, high_open=True)
        available = N - i_end
        check_int(f"steps (the N = {N} chain has {available} steps from index {N} at T down to "
                  f"index {i_end} at t_end = {t_end})", steps, maximum=available)
        # evenly spaced, rounded half up: spacing >= 1 keeps them strictly decreasing
        kept = torch.floor(torch.linspace(N, i_end, steps + 1, dtype=torch.float64) + 0.5).long()
        return chain.index_to_time(kept)

    def marginals(self, sde):
        """Where the step coefficients read ``alpha`` and ``sigma``: the VP chain, or ``sde``."""
        if sde.variance_preserving:
            return sde.discretize(self.chain_length(sde))
        return sde

    def run(self, model, x, ts, noise, observe):
        marginals = self.marginals(model.sde)
        a, b, s = ddim_coefficients(marginals, ts, eta=1.0)     # posterior q(x_p | x_t, x0^)
        if self.options["variance"] == "beta":                 # sigma_t^2 (1 - e^{-2h}) = beta-bar
            s = marginals.transition_stds(ts)[0]
        a, b, s, times = a.tolist(), b.tolist(), s.tolist(), ts.tolist()
        for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:], strict=True)):
            eps = model.eps(x, ts[i])                                  # eps_theta(x_t, t)
            x = a[i] * x + b[i] * eps + s[i] * noise.normal(t_cur, t_next)   # mu~ + s z
            observe(i + 1, x)
        return x

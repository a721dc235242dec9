"""diffusers' schedulers as peers of the sdediff samplers, on the exact mixtures.

Each scheduler of :data:`PEERS` runs at its defaults (except ``clip_sample=False``: clipping to
[-1, 1] would cut the ring of radius 1.5) on the discrete linear-VP schedule it is built for
(``betas`` 1e-4 .. 0.02, ``N = 1000``, eps prediction: the chain of
:meth:`sdediff.VPSDE.discretize`). The model (:class:`DiscreteEps`) is the mixture's exact eps at
the noise level of diffusers' timestep ``k``: ``s(k)`` interpolated linearly between the chain's
``s_k = sqrt((1 - abar_k) / abar_k)`` as diffusers interpolates its sigmas, and the VP state
``x = alpha y`` with ``alpha = 1 / sqrt(1 + s^2)``.

Each peer is measured against its own exact reference: :func:`run_peer` reports where it started
and ended in ``(y, s)``, and the sweep carries that start along the probability flow
(:func:`~sdediff.bench.problems.pf_flow`) to the end (``s = 0`` for most: diffusers' discrete
schedules end at ``sigma = 0``). A peer's budget is met by :func:`peer_steps`: the most inference
steps whose model calls (``len(timesteps)``, e.g. Heun's ``2 steps - 1``) fit.

diffusers is optional (``pip install 'sdediff[bench]'``); it is imported only when a peer runs.
k-diffusion's samplers, the other peers, are in :mod:`sdediff.bench.kdiffusion`.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings

import numpy as np
import torch

from ..checks import check_choice
from ..sde import VPSDE
from .problems import noise_eps

#: diffusers schedulers run as peers: name -> (class, the non-default settings).
PEERS = {
    "diffusers:ddim": ("DDIMScheduler", {"clip_sample": False}),
    "diffusers:dpm_solver++": ("DPMSolverMultistepScheduler", {}),
    "diffusers:unipc": ("UniPCMultistepScheduler", {}),
    "diffusers:deis": ("DEISMultistepScheduler", {}),
    "diffusers:euler": ("EulerDiscreteScheduler", {}),
    "diffusers:heun": ("HeunDiscreteScheduler", {}),
    "diffusers:lms": ("LMSDiscreteScheduler", {}),
}
#: Peers drawn in the color of the sdediff sampler of the same method.
PEER_COUNTERPARTS = {"diffusers:ddim": "ddim", "diffusers:dpm_solver++": "dpm_solver++",
                     "diffusers:unipc": "unipc", "diffusers:heun": "heun"}
#: The discrete schedule the peers run on (Ho et al.'s, = ``VPSDE().discretize(1000)``).
PEER_TRAIN_STEPS = 1000
#: diffusers' placements of the inference timesteps on the chain (``timestep_spacing``): the
#: peers' grids where a benchmark tries each (``benchmarks/bench_fast_solvers.py``).
SPACINGS = ("linspace", "leading", "trailing")
#: How to get the peers (in the note printed when diffusers is absent).
PIP_EXTRA = "pip install 'sdediff[bench]'  (or pip install diffusers)"


def diffusers_available() -> bool:
    """Whether diffusers can be imported (without importing it: that takes seconds)."""
    return importlib.util.find_spec("diffusers") is not None


def make_scheduler(name: str, **overrides):
    """A fresh diffusers scheduler ``name`` on the discrete linear-VP schedule; ``overrides``:
    settings beside :data:`PEERS`' (e.g. ``timestep_spacing``, one of :data:`SPACINGS`)."""
    import diffusers

    cls_name, options = PEERS[check_choice("peer", name, PEERS)]
    if "timestep_spacing" in overrides:
        check_choice("timestep_spacing", overrides["timestep_spacing"], SPACINGS)
    chain = VPSDE().discretize(PEER_TRAIN_STEPS)
    return getattr(diffusers, cls_name)(
        num_train_timesteps=chain.N, beta_start=float(chain.betas[0]),
        beta_end=float(chain.betas[-1]), beta_schedule="linear", prediction_type="epsilon",
        **{**options, **overrides})


def _timesteps(scheduler, steps: int) -> int:
    scheduler.set_timesteps(steps)
    return len(scheduler.timesteps)          # one model call per entry (Heun: 2 steps - 1)


def peer_steps(scheduler, budget: int) -> int | None:
    """The most inference steps whose model calls (``len(timesteps)``) fit ``budget``."""
    hi = min(budget, scheduler.config.num_train_timesteps)
    if _timesteps(scheduler, 1) > budget:
        return None
    lo = 1
    while lo < hi:                            # calls grow with steps: bisect
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _timesteps(scheduler, mid) <= budget else (lo, mid - 1)
    return lo


class DiscreteEps:
    """The mixture's exact eps at diffusers' timestep ``k`` (float or int): the noise level
    ``s(k)`` interpolates the chain's ``s_k = sqrt((1 - abar_k)/abar_k)`` linearly in ``k`` (how
    diffusers maps its sigmas to fractional timesteps); the input is the VP state ``x = alpha y``,
    ``alpha = 1/sqrt(1 + s^2)``, whose eps is ``eps_s(x / alpha)``. Counts its calls in ``nfe``."""

    def __init__(self, gmm, n_train: int = PEER_TRAIN_STEPS):
        abar = VPSDE().discretize(n_train).alphas_cumprod.numpy()
        self.table = np.sqrt((1 - abar) / abar)
        self.gmm = gmm
        self.nfe = 0

    def s_of(self, k) -> float:
        return float(np.interp(float(k), np.arange(len(self.table)), self.table))

    def __call__(self, x: torch.Tensor, k) -> torch.Tensor:
        self.nfe += 1
        s = self.s_of(k)
        return noise_eps(self.gmm, x.double() * math.sqrt(1 + s * s), s).to(x.dtype)


def _final_s(scheduler) -> float:
    """The noise level ``sigma/alpha`` a scheduler's last step lands on."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        return float(sigmas[-1])
    abar = float(scheduler.final_alpha_cumprod)      # DDIM: 1 with set_alpha_to_one
    return math.sqrt(max(1 - abar, 0.0) / abar)


def run_peer(name: str, steps: int, gmm, x_T: torch.Tensor, **overrides):
    """Run a peer from ``x_T`` (a prior draw), with the settings ``overrides`` of
    :func:`make_scheduler`. Returns the output, NFE, seconds, and where it started and ended in
    ``(y, s)``: ``(y_start, s_start, s_end, scale)`` with output ``~ scale * y(s_end)``."""
    scheduler = make_scheduler(name, **overrides)
    scheduler.set_timesteps(steps)
    model = DiscreteEps(gmm)
    probe = make_scheduler(name, **overrides)
    probe.set_timesteps(steps)
    ones = torch.ones(1, dtype=torch.float64)
    sigma_space = not torch.allclose(probe.scale_model_input(ones, probe.timesteps[0]).double(), ones)
    start = time.perf_counter()
    x = x_T.double() * float(scheduler.init_noise_sigma)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # numpy 2 notices inside diffusers
        for k in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, k), k)
            x = scheduler.step(eps, k, x).prev_sample
    seconds = time.perf_counter() - start
    s_start, s_end = model.s_of(scheduler.timesteps[0]), _final_s(scheduler)
    if sigma_space:   # Euler, Heun, LMS keep y = x/alpha and scale the model's input
        y_start, scale = x_T.double() * float(scheduler.init_noise_sigma), 1.0
    else:             # the others keep the VP state x = alpha y
        y_start, scale = x_T.double() * math.sqrt(1 + s_start**2), 1 / math.sqrt(1 + s_end**2)
    return x, model.nfe, seconds, (y_start, s_start, s_end, scale)

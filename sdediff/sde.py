"""Forward processes: every one is Gaussian, ``x_t = alpha(t) x_0 + sigma(t) eps``.

A process is defined by ``alpha(t)`` and ``sigma(t)`` on ``t in [0, T]``. Everything else follows
and lives here, one method per quantity:

- log-SNR ``lambda(t) = log(alpha / sigma)`` (strictly decreasing) and its inverse ``t(lambda)``;
- SDE drift ``f(t) x`` with ``f = d log alpha / dt`` and diffusion
  ``g(t)^2 = d sigma^2/dt - 2 f sigma^2``;
- reverse SDE ``dx = [f x - g^2 score] dt + g dw`` (run from ``T`` down) and probability-flow ODE
  ``dx/dt = f x - g^2 score / 2`` (:meth:`ForwardProcess.reverse_drift`);
- the prior ``N(0, prior_std^2 I)`` at ``T``.

All methods take ``t`` as a tensor (a Python float is promoted to float64) and compute in ``t``'s
dtype, so solvers get float64 coefficients by passing float64 times. Near ``t = 0`` the
variance-preserving ``sigma`` is ``sqrt(-expm1(2 log alpha))``, exact where ``1 - alpha^2``
would cancel.

Processes (Song et al. 2021; Nichol & Dhariwal 2021):

=====================  ==========================================================  ===============
class                  alpha(t), sigma(t)                                          defaults
=====================  ==========================================================  ===============
VPSDE("linear")        log alpha = -t^2 (b1 - b0)/4 - t b0/2, sigma^2 = 1 - alpha^2  b0=0.1, b1=20
VPSDE("cosine")        alpha^2 = cos^2(phi(t)) / cos^2(phi(0)),                   s=0.008,
                       phi(t) = (t + s)/(1 + s) pi/2                              T=0.9946
SubVPSDE               alpha as linear VP, sigma = 1 - alpha^2 (no square root)    b0=0.1, b1=20
VESDE                  alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t         0.01, 50
=====================  ==========================================================  ===============
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import (
    InputValueError,
    check_choice,
    check_float,
    check_int,
    check_options,
    check_tensor,
)
from .utils import as_time, batch_times, expand_like

#: Cosine schedule end time: dpm-solver's choice, where alpha(T) = 8.4e-3 and lambda(T) = -4.78,
#: close to the linear VP's lambda(1) = -5.03; at t -> 1 alpha would reach 0 (infinite log-SNR).
COSINE_T = 0.9946


class Marginals:
    """What a sampler reads of a chain of Gaussian marginals ``x_t = alpha x_0 + sigma eps``:
    ``alpha_sigma(t)`` and ``log_snr(t)`` (per subclass: :class:`ForwardProcess`, the discrete
    :class:`DDPMChain`), and the quantities derived from them, each computed one way here."""

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def log_snr(self, t) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        return self.alpha_sigma(t)[0]

    def sigma_over_alpha(self, t) -> torch.Tensor:
        """``s = sigma / alpha = e^{-lambda}``, EDM's noise level ``sigma~``: in ``y = x / alpha``
        every process's probability flow is ``dy/ds = eps``."""
        return torch.exp(-self.log_snr(t))

    def transition_stds(self, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two Gaussian step noises of a decreasing grid ``ts`` (float64, length ``N`` each).

        With ``h_i = lambda(t_{i+1}) - lambda(t_i) > 0`` and ``p_i = 1 - e^{-2 h_i}``:

        - ``forward_i = sigma(t_i) sqrt(p_i)``: the standard deviation of the forward transition
          ``x_{t_i} | x_{t_{i+1}}`` (``sigma_i^2 - (alpha_i / alpha_{i+1})^2 sigma_{i+1}^2``; VP:
          ``beta``; the reverse-diffusion predictor's ``G_i``);
        - ``posterior_i = sigma(t_{i+1}) sqrt(p_i)``: that of the posterior
          ``q(x_{t_{i+1}} | x_{t_i}, x_0)`` (VP: DDPM's ``beta~``; DDIM's ``sigma(eta = 1)``).
        """
        sigma = self.alpha_sigma(ts)[1]
        lam = self.log_snr(ts)
        root_p = torch.sqrt(-torch.expm1(-2 * (lam[1:] - lam[:-1])))
        return sigma[:-1] * root_p, sigma[1:] * root_p


class ForwardProcess(Marginals):
    """Base class: subclasses define ``log_alpha``, ``sigma``, ``f``, ``g2`` and ``t_of_log_snr``.

    ``T`` is the end time, ``prior_std`` the standard deviation of the prior ``p_T``.
    """

    name = "process"
    T = 1.0
    prior_std = 1.0
    #: The smallest time: training draws ``t ~ U(t_min, T)`` and encoding, decoding and the
    #: likelihood start there by default (design: 1e-5; a discrete chain's first index, 1/M).
    t_min = 1e-5

    # --- the definition of the process (per subclass) --------------------------------------
    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def f(self, t: torch.Tensor) -> torch.Tensor:
        """Drift coefficient ``f(t) = d log alpha / dt``."""
        raise NotImplementedError

    def g2(self, t: torch.Tensor) -> torch.Tensor:
        """Squared diffusion ``g(t)^2 = d sigma^2/dt - 2 f(t) sigma(t)^2``."""
        raise NotImplementedError

    def t_of_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr`."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description, inverted by :func:`sde_from_config`."""
        raise NotImplementedError

    #: Whether ``alpha^2 + sigma^2 = 1``, so that a DDPM chain's ``alpha_bar`` describes it fully.
    variance_preserving = False
    #: Whether the coefficients jump in ``t`` (a discrete chain's piecewise-constant ``f``): then
    #: adaptive ODE solvers integrate in the process's :meth:`clock`, where they are smooth.
    has_clock = False

    def clock(self, t) -> torch.Tensor:
        """A strictly increasing time in which the probability flow is smooth (the identity for
        the continuous processes; see :class:`DiscreteVPSDE`)."""
        return as_time(t)

    def time_of_clock(self, c) -> torch.Tensor:
        """Inverse of :meth:`clock`."""
        return as_time(c)

    def clock_rate(self, t) -> torch.Tensor:
        """``d clock / dt`` at ``t``."""
        return torch.ones_like(as_time(t))

    def discretize(self, N: int) -> DDPMChain:
        """A DDPM chain of ``N`` steps on the grid ``t_i = i T / N``:
        ``beta_i = 1 - alpha(t_i)^2 / alpha(t_{i-1})^2``, clipped at 0.999 (Nichol & Dhariwal).

        Only variance-preserving processes are described by their chain; for the others (whose
        ``alpha`` barely moves, e.g. VE) only its times and index map are meaningful.
        """
        check_int("N", N, minimum=1)
        edges = torch.arange(0, N + 1, dtype=torch.float64) * (self.T / N)
        log_a = self.log_alpha(edges)
        betas = (-torch.expm1(2 * (log_a[1:] - log_a[:-1]))).clamp(max=0.999)
        return DDPMChain(betas=betas, times=edges[1:])

    # --- derived quantities -----------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(as_time(t)))

    def alpha_sigma(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alpha(t), sigma(t))``, each of ``t``'s shape and dtype."""
        t = as_time(t)
        return torch.exp(self.log_alpha(t)), self.sigma(t)

    def log_snr(self, t) -> torch.Tensor:
        """Half log signal-to-noise ratio ``lambda(t) = log alpha(t) - log sigma(t)``."""
        t = as_time(t)
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def diffusion(self, t) -> torch.Tensor:
        """``g(t)``."""
        return torch.sqrt(self.g2(as_time(t)))

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """Forward SDE drift ``f(t) x``; ``t`` a scalar or shape ``(B,)``."""
        return expand_like(self.f(batch_times(t, x)), x) * x

    def reverse_drift(self, model, x: torch.Tensor, t, probability_flow: bool = False) -> torch.Tensor:
        """Drift of the reverse SDE, ``f x - g^2 score``, or of the probability-flow ODE,
        ``f x - g^2 score / 2`` (both in forward time: integrate from ``T`` down to 0).

        ``model`` is a :class:`~sdediff.score.ScoreModel` (one network call).
        """
        t = batch_times(t, x)
        weight = 0.5 if probability_flow else 1.0
        return self.drift(x, t) - weight * expand_like(self.g2(t), x) * model.score(x, t)

    # --- sampling the forward process and the prior -----------------------------------------
    def perturb(self, x0: torch.Tensor, t, generator: torch.Generator | None = None):
        """Forward sample ``x_t = alpha(t) x0 + sigma(t) eps``; returns ``(x_t, eps)``.

        ``x0``: ``(B, ...)``; ``t``: scalar or ``(B,)``.
        """
        check_tensor("x0", x0)
        t = batch_times(t, x0)
        alpha, sigma = self.alpha_sigma(t)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return expand_like(alpha, x0) * x0 + expand_like(sigma, x0) * eps, eps

    def prior_sample(self, shape, generator=None, dtype: torch.dtype = torch.float32,
                     device=None) -> torch.Tensor:
        """A draw from ``p_T = N(0, prior_std^2 I)`` of the given shape, on ``device``.

        ``generator``: a ``torch.Generator`` (the draw is made on its device and moved, so one
        seed gives one draw on every device) or :class:`~sdediff.streams.SampleSeeds` (row ``i``
        from ``(seed, start + i)`` alone)."""
        from .streams import normal

        shape = tuple(shape)
        for n in shape:
            check_int("each entry of shape", n, minimum=1)
        return self.prior_std * normal(shape, generator, dtype=dtype, device=device)

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """``log p_T(z)`` per sample, shape ``(B,)``; ``z``: ``(B, ...)``."""
        dim = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        var = self.prior_std**2
        return -0.5 * dim * math.log(2 * math.pi * var) - 0.5 * sq / var

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class _LinearBeta:
    """``beta(t) = b0 + t (b1 - b0)`` and ``log alpha = -int_0^t beta / 2`` (Song et al. 2021)."""

    def __init__(self, beta_min: float, beta_max: float):
        self.beta_min = check_float("beta_min", beta_min, 0.0, None, low_open=True)
        self.beta_max = check_float("beta_max", beta_max, beta_min, None, low_open=True)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Positive root of ``(b1 - b0) t^2 / 4 + b0 t / 2 = m`` with ``m = -log alpha``, in the
        cancellation-free form ``4 m / (b0 + sqrt(b0^2 + 4 (b1 - b0) m))``."""
        m = -log_alpha
        d = self.beta_max - self.beta_min
        return 4 * m / (self.beta_min + torch.sqrt(self.beta_min**2 + 4 * d * m))


def _vp_sigma(log_alpha: torch.Tensor) -> torch.Tensor:
    """``sqrt(1 - alpha^2)`` without cancellation near ``alpha = 1``."""
    return torch.sqrt(-torch.expm1(2 * log_alpha))


def _vp_log_alpha_of_log_snr(lam: torch.Tensor) -> torch.Tensor:
    """For VP, ``alpha^2 = sigmoid(2 lambda)``, so ``log alpha = -softplus(-2 lambda) / 2``."""
    return -0.5 * F.softplus(-2 * lam)


class VPSDE(ForwardProcess):
    """Variance-preserving SDE, ``alpha^2 + sigma^2 = 1``, with a linear or cosine schedule.

    ``discretize(N)`` gives the matching DDPM chain (Ho et al. 2020).
    """

    name = "vp"
    SCHEDULES = ("linear", "cosine")
    variance_preserving = True

    def __init__(self, schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008):
        self.schedule = check_choice("schedule", schedule, self.SCHEDULES)
        self._linear = _LinearBeta(beta_min, beta_max)
        self.cosine_s = check_float("cosine_s", cosine_s, 0.0, None, low_open=True)
        self.T = 1.0 if schedule == "linear" else COSINE_T

    # cosine schedule: phi(t) = (t + s)/(1 + s) * pi/2, alpha = cos(phi(t)) / cos(phi(0))
    def _phi(self, t):
        return (t + self.cosine_s) / (1 + self.cosine_s) * (math.pi / 2)

    def log_alpha(self, t):
        if self.schedule == "linear":
            return self._linear.log_alpha(t)
        # cos(phi0 + d) / cos(phi0) = 1 - 2 sin^2(d/2) - tan(phi0) sin(d): log1p keeps log alpha
        # (and so sigma) accurate near t = 0, where the plain ratio cancels in float32.
        d = as_time(t) / (1 + self.cosine_s) * (math.pi / 2)
        return torch.log1p(-2 * torch.sin(d / 2) ** 2 - math.tan(self._phi(0.0)) * torch.sin(d))

    def sigma(self, t):
        return _vp_sigma(self.log_alpha(t))

    def f(self, t):
        t = as_time(t)
        if self.schedule == "linear":
            return -0.5 * self._linear.beta(t)
        return -torch.tan(self._phi(t)) * (math.pi / 2) / (1 + self.cosine_s)

    def g2(self, t):
        # VP: d sigma^2/dt = -2 f alpha^2, hence g^2 = -2 f (alpha^2 + sigma^2) = -2 f.
        return -2 * self.f(t)

    def t_of_log_snr(self, lam):
        log_alpha = _vp_log_alpha_of_log_snr(as_time(lam))
        if self.schedule == "linear":
            return self._linear.t_of_log_alpha(log_alpha)
        cos_phi = torch.exp(log_alpha + math.log(math.cos(self._phi(0.0))))
        return torch.arccos(cos_phi) * (2 / math.pi) * (1 + self.cosine_s) - self.cosine_s

    def discretize(self, N: int) -> DDPMChain:
        """The DDPM chain ``beta_1..beta_N`` on the grid ``t_i = i T / N``.

        Linear schedule: Song et al.'s rule ``linspace(beta_min/N, beta_max/N, N)`` (for ``N = 1000``
        exactly Ho et al.'s ``1e-4 .. 0.02``). Cosine: the generic rule of
        :meth:`ForwardProcess.discretize`.
        """
        if self.schedule != "linear":
            return super().discretize(N)
        check_int("N", N, minimum=1)
        times = torch.arange(1, N + 1, dtype=torch.float64) * (self.T / N)
        betas = torch.linspace(self._linear.beta_min / N, self._linear.beta_max / N, N,
                               dtype=torch.float64)
        return DDPMChain(betas=betas, times=times)

    def config(self):
        return {"name": self.name, "schedule": self.schedule, "beta_min": self._linear.beta_min,
                "beta_max": self._linear.beta_max, "cosine_s": self.cosine_s}


class SubVPSDE(ForwardProcess):
    """Sub-VP SDE (Song et al. 2021): ``alpha`` as linear VP, ``sigma = 1 - alpha^2``.

    Its variance ``(1 - alpha^2)^2`` stays below VP's, which is why it has no square root.
    """

    name = "subvp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self._linear = _LinearBeta(beta_min, beta_max)

    def log_alpha(self, t):
        return self._linear.log_alpha(t)

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    def f(self, t):
        return -0.5 * self._linear.beta(as_time(t))

    def g2(self, t):
        # d sigma^2/dt - 2 f sigma^2 with sigma = 1 - a^2 gives beta (1 - a^4).
        t = as_time(t)
        return self._linear.beta(t) * -torch.expm1(4 * self.log_alpha(t))

    def t_of_log_snr(self, lam):
        # alpha / (1 - alpha^2) = e^lam  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam})),
        # in logs so that neither large nor small lam overflows.
        lam = as_time(lam)
        log_root = 0.5 * torch.logaddexp(torch.zeros_like(lam), math.log(4.0) + 2 * lam)
        log_alpha = math.log(2.0) + lam - F.softplus(log_root)
        return self._linear.t_of_log_alpha(log_alpha)

    def config(self):
        return {"name": self.name, "beta_min": self._linear.beta_min,
                "beta_max": self._linear.beta_max}


class VESDE(ForwardProcess):
    """Variance-exploding SDE (Song & Ermon; Song et al. 2021): ``alpha = 1``,
    ``sigma = sigma_min (sigma_max / sigma_min)^t``; prior ``N(0, sigma_max^2 I)``."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = check_float("sigma_min", sigma_min, 0.0, None, low_open=True)
        self.sigma_max = check_float("sigma_max", sigma_max, sigma_min, None, low_open=True)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.prior_std = self.sigma_max

    def log_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def f(self, t):
        return torch.zeros_like(as_time(t))

    def g2(self, t):
        return 2 * self._log_ratio * self.sigma(t) ** 2

    def t_of_log_snr(self, lam):
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio

    def config(self):
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


#: diffusers' named beta schedules (``beta_schedule=``) that :class:`DiscreteVPSDE` builds.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _squaredcos_betas(M: int, max_beta: float = 0.999) -> list[float]:
    """Nichol & Dhariwal's cosine chain as diffusers' ``betas_for_alpha_bar`` builds it: with
    ``abar(s) = cos^2((s + 0.008)/1.008 pi/2)``, ``beta_i = min(1 - abar((i+1)/M)/abar(i/M),
    max_beta)``, in Python floats (float64)."""
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - abar((i + 1) / M) / abar(i / M), max_beta) for i in range(M)]


def diffusers_timestep(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """The (fractional) timestep input of a network trained on an ``M``-step chain, at
    continuous time ``t``: ``t M - 1``, so that index ``i`` sits at ``t_i = (i + 1)/M`` (``T = 1``
    is index ``M - 1``; index 0 is ``t = 1/M``). The one home of this map
    (:class:`~sdediff.nets.DiffusersUNet` calls it); computed in
    float64 so that a grid time ``(i + 1)/M`` gives back exactly ``i`` in float32."""
    return as_time(t).to(torch.float64) * num_train_timesteps - 1


class DiscreteVPSDE(ForwardProcess):
    """The variance-preserving process of a model trained on a discrete chain of ``M`` betas
    (diffusers' ``DDPMScheduler``/``DDIMScheduler`` configs; Ho et al. 2020).

    The chain gives ``abar_i = prod_{j <= i} (1 - beta_j)`` at the indices ``i = 0..M-1``; index
    ``i`` is continuous time ``t_i = (i + 1)/M`` (:func:`diffusers_timestep`), so ``T = 1`` is the
    last index. In between, ``log alpha`` is interpolated linearly in ``t`` through the nodes
    ``(t_i, log abar_i / 2)`` (DPM-Solver's ``NoiseScheduleVP("discrete")``, Lu et al. 2022), and
    below the first node towards ``(0, 0)`` (``abar = 1`` before the first beta, Ho et al.'s
    convention; DPM-Solver extends the first segment instead, which puts ``alpha > 1`` and a NaN
    ``sigma`` below ``t = 0.83/M`` for the linear chain, where training draws times). So
    ``f = d log alpha/dt`` is the slope of the segment, ``g^2 = -2 f``,
    ``sigma = sqrt(1 - alpha^2)``, and the inverse log-SNR is exact (the inverse of the same
    piecewise-linear map). ``alpha = 1`` (diffusers' "final alpha") is not a
    point of this process: a sampler's final denoise plays it.

    Betas are built exactly as diffusers builds them (float32 ``torch.linspace``; the cosine chain
    in float64 then float32; ``trained_betas`` as float32), and ``abar`` is their float32
    cumulative product, cast to float64: then the process agrees with diffusers' tables at every
    index. ``beta_schedule``: ``linear``, ``scaled_linear`` (``linspace`` of square roots,
    squared) or ``squaredcos_cap_v2``; ``trained_betas`` (a list of ``M`` numbers in (0, 1))
    overrides it. ``steps_offset`` is diffusers' offset of ``leading`` grids
    (:mod:`sdediff.samplers.grids`).
    """

    name = "discrete"
    variance_preserving = True

    def __init__(self, beta_schedule: str = "linear", num_train_timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02, trained_betas=None,
                 steps_offset: int = 0):
        M = self.num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps,
                                                 minimum=2)
        self.steps_offset = check_int("steps_offset", steps_offset, minimum=0)
        self.beta_schedule = check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        self.beta_start = check_float("beta_start", beta_start, 0.0, 1.0, low_open=True,
                                      high_open=True)
        self.beta_end = check_float("beta_end", beta_end, 0.0, 1.0, low_open=True, high_open=True)
        if trained_betas is not None:
            betas = torch.tensor([float(b) for b in trained_betas], dtype=torch.float32)
            if betas.shape != (M,):
                raise InputValueError(f"trained_betas has {betas.numel()} entries; "
                                      f"num_train_timesteps = {M} needs {M}")
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, M, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, M, dtype=torch.float32) ** 2
        else:
            betas = torch.tensor(_squaredcos_betas(M), dtype=torch.float32)
        bad = torch.nonzero(~((betas > 0) & (betas < 1))).flatten()
        if bad.numel():
            i = int(bad[0])
            raise InputValueError(
                f"beta_{i} = {float(betas[i]):.6g}: every beta must lie in (0, 1) (a beta of 1, "
                "e.g. a zero-terminal-SNR schedule, makes alpha(T) = 0 and the log-SNR infinite: "
                "not supported)")
        self.trained_betas = None if trained_betas is None else betas.tolist()
        self.betas = betas
        abar = torch.cumprod(1.0 - betas, dim=0).to(torch.float64)   # diffusers' float32 table
        #: Interpolation nodes ``t_i = (i + 1)/M``, ``log alpha_i = log abar_i / 2`` (float64),
        #: after the node ``(0, 0)``: ``abar = 1`` before the first beta, as in Ho et al.
        self.nodes = torch.arange(0, M + 1, dtype=torch.float64) / M
        self.node_log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(abar)])
        self.slopes = torch.diff(self.node_log_alpha) / torch.diff(self.nodes)
        self.T = 1.0
        # index 0, the smallest time the network was trained at: below it the U-Net sees negative
        # timesteps and sigma -> 0, where a round trip through the flow loses digits
        self.t_min = 1.0 / M

    @classmethod
    def from_diffusers_config(cls, config) -> DiscreteVPSDE:
        """The process of a diffusers scheduler config (a dict or ``scheduler.config``): the keys
        ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
        ``trained_betas``, ``steps_offset`` (diffusers' defaults where absent). A zero-terminal-SNR
        rescale (``rescale_betas_zero_snr``) is refused."""
        config = dict(config)
        if config.get("rescale_betas_zero_snr"):
            raise InputValueError("rescale_betas_zero_snr=True makes alpha(T) = 0 (infinite "
                                  "log-SNR): not supported; supported: beta schedules linear, "
                                  "scaled_linear, squaredcos_cap_v2 or trained_betas")
        return cls(beta_schedule=config.get("beta_schedule", "linear"),
                   num_train_timesteps=config.get("num_train_timesteps", 1000),
                   beta_start=config.get("beta_start", 1e-4), beta_end=config.get("beta_end", 0.02),
                   trained_betas=config.get("trained_betas"),
                   steps_offset=config.get("steps_offset", 0) or 0)

    def _segment(self, t: torch.Tensor) -> torch.Tensor:
        """Index ``k`` of the segment ``[t_k, t_{k+1}]`` holding ``t`` (the end segments extend)."""
        k = torch.searchsorted(self.nodes.to(t.device), t.to(torch.float64).contiguous(),
                               right=True) - 1
        return k.clamp(0, self.num_train_timesteps - 1)

    def log_alpha(self, t):
        t = as_time(t)
        k = self._segment(t)
        nodes, values, slopes = (v.to(t.device) for v in (self.nodes, self.node_log_alpha,
                                                          self.slopes))
        out = values[k] + slopes[k] * (t.to(torch.float64) - nodes[k])
        return out.to(t.dtype)

    def sigma(self, t):
        return _vp_sigma(self.log_alpha(t))

    def f(self, t):
        t = as_time(t)
        return self.slopes.to(t.device)[self._segment(t)].to(t.dtype)

    def g2(self, t):
        return -2 * self.f(t)           # VP: alpha^2 + sigma^2 = 1

    def _t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_alpha`: the same piecewise-linear map, read backwards."""
        target = log_alpha.to(torch.float64)
        # log alpha decreases along the nodes: search the negated (increasing) table
        neg = (-self.node_log_alpha).to(target.device)
        k = (torch.searchsorted(neg, (-target).contiguous(), right=True) - 1).clamp(
            0, self.num_train_timesteps - 1)
        nodes, values, slopes = (v.to(target.device) for v in (self.nodes, self.node_log_alpha,
                                                               self.slopes))
        return (nodes[k] + (target - values[k]) / slopes[k]).to(log_alpha.dtype)

    def t_of_log_snr(self, lam):
        return self._t_of_log_alpha(_vp_log_alpha_of_log_snr(as_time(lam)))

    # The probability flow is dx/dt = f (x - eps/sigma) with f piecewise constant: it jumps at
    # every node, and an adaptive solver pays for (and errs at) each of the M jumps. In the clock
    # c = -log alpha, dx/dc = eps/sigma - x, and f is gone.
    has_clock = True

    def clock(self, t):
        """``c = -log alpha(t)``: strictly increasing, and the probability flow has no jumps in it."""
        return -self.log_alpha(t)

    def time_of_clock(self, c):
        return self._t_of_log_alpha(-as_time(c))

    def clock_rate(self, t):
        return -self.f(t)

    def index_to_time(self, i) -> torch.Tensor:
        """Continuous time ``(i + 1)/M`` of the 0-based chain index ``i`` (float64)."""
        return (torch.as_tensor(i, dtype=torch.float64) + 1) / self.num_train_timesteps

    def discretize(self, N: int) -> DDPMChain:
        """For ``N = M``, the process's own chain (``abar`` at its nodes); otherwise the generic
        rule of :meth:`ForwardProcess.discretize`."""
        check_int("N", N, minimum=1)
        if N == self.num_train_timesteps:
            log_a, times = self.node_log_alpha, self.nodes[1:]
        else:
            edges = torch.arange(0, N + 1, dtype=torch.float64) / N
            log_a, times = self.log_alpha(edges), edges[1:]
        betas = (-torch.expm1(2 * (log_a[1:] - log_a[:-1]))).clamp(max=0.999)
        return DDPMChain(betas=betas, times=times)

    def config(self):
        return {"name": self.name, "beta_schedule": self.beta_schedule,
                "num_train_timesteps": self.num_train_timesteps, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "trained_betas": self.trained_betas,
                "steps_offset": self.steps_offset}

    def __repr__(self) -> str:
        source = (f"trained_betas=<{self.num_train_timesteps}>" if self.trained_betas is not None
                  else f"{self.beta_schedule!r}, beta_start={self.beta_start}, "
                       f"beta_end={self.beta_end}")
        return (f"DiscreteVPSDE({source}, num_train_timesteps={self.num_train_timesteps}"
                + (f", steps_offset={self.steps_offset}" if self.steps_offset else "") + ")")


@dataclass(frozen=True)
class DDPMChain(Marginals):
    """A discrete DDPM chain: ``betas[i-1] = beta_i`` at continuous time ``times[i-1] = t_i``.

    The map between the discrete index ``i in 1..N`` and continuous time is ``t_i = i T / N``; it
    lives here and nowhere else (``index_to_time`` / ``time_to_index``). ``alphas_cumprod`` is
    Ho et al.'s ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``, whose square root plays ``alpha(t_i)``.

    As :class:`Marginals` the chain answers at its own times (a time is read at its nearest index):
    ``alpha_i^2 = abar_i``, ``sigma_i^2 = 1 - abar_i``, ``lambda_i = log(abar_i / (1 - abar_i)) / 2``,
    so that process-generic step coefficients (``ddpm``'s posterior) apply to the chain itself.
    For a variance-preserving process it describes the marginals fully.
    """

    betas: torch.Tensor
    times: torch.Tensor

    @property
    def N(self) -> int:
        return self.betas.shape[0]

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.exp(torch.cumsum(torch.log1p(-self.betas), dim=0))

    def index_to_time(self, i: torch.Tensor) -> torch.Tensor:
        """Continuous time of the 1-based step index ``i``."""
        return self.times[torch.as_tensor(i) - 1]

    def time_to_index(self, t: torch.Tensor) -> torch.Tensor:
        """Nearest 1-based step index of continuous time ``t``."""
        step = self.times[0]
        return torch.clamp(torch.round(as_time(t) / step), 1, self.N).long()

    def _log_abar_at(self, t) -> torch.Tensor:
        return torch.log(self.alphas_cumprod)[self.time_to_index(t) - 1]

    def alpha_sigma(self, t):
        log_abar = self._log_abar_at(t)
        return torch.exp(0.5 * log_abar), torch.sqrt(-torch.expm1(log_abar))

    def log_snr(self, t):
        log_abar = self._log_abar_at(t)
        return 0.5 * (log_abar - torch.log(-torch.expm1(log_abar)))


SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "discrete": DiscreteVPSDE}


def sde_from_config(config: dict) -> ForwardProcess:
    """Rebuild a process from :meth:`ForwardProcess.config`."""
    config = dict(config)
    name = check_choice("process", config.pop("name", None), SDES)
    cls = SDES[name]
    allowed = cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]
    check_options(f"process {name!r}", config, allowed)
    return cls(**config)

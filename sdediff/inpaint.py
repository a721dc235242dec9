"""Inpainting (imputation): the unobserved coordinates of ``x`` drawn given the observed ones.

``inpaint(model, x_known, mask, method=...)`` returns one sample per row of ``x_known``
``(B, *shape)`` whose observed coordinates (``mask == 1``) equal ``x_known`` exactly and whose others
are filled in by the unconditional ``model``; ``mask`` is ``(*shape)`` or ``(B, *shape)``. For ``n``
posterior draws of one observation pass ``x.expand(n, ...)``. Three methods, from the cheapest and
biased to the consistent (reference: ``controllable-and-inversion.md`` sections 3-5); ``y`` is the
observed block, ``O`` and ``U`` the observed and unobserved coordinates,
``x_t = alpha(t) x_0 + sigma(t) eps``:

- ``"replacement"`` (Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. I.2):
  any registered sampler, unchanged, on a model whose network input has its ``O`` block replaced by
  the forward path ``alpha(t) y + sigma(t) z``. ``z ~ N(0, I)`` is drawn **once per run** (one per
  sample, from ``generator``), so the known block moves along one smooth path that multistep
  (``dpm_solver++``, ``unipc``, ``ipndm``) and adaptive (``ode``, ``dpm_adaptive``) solvers can
  integrate; score_sde's ``get_pc_inpainter`` instead draws a fresh ``z`` at every step (and noises
  to the step's start time), which makes the known block a jump process no high-order or adaptive
  solver can follow. For a sampler whose update is elementwise (all the registered ones but ``pc``'s
  batch-normed Langevin step and the adaptive solvers' error norms), replacing the network's input is
  the same as replacing the state. The model's prediction on ``O`` is that of the point mass at
  ``y`` (``eps^O = (x^O - alpha y) / sigma``, i.e. ``x0^O = y``), so the state's own ``O`` block, which
  the sampler carries but nobody reads, stays on the same path (to rounding for the deterministic
  fixed-step samplers, which all integrate a constant prediction exactly; to tolerance for the
  adaptive ones; as a bridge to ``y`` for the stochastic ones) instead of
  drifting to ``x / alpha(T)``-sized values that would upset those norms. Cost: the sampler's own
  NFE. **Biased**: the ``U`` block follows the unconditional score next to a noised ``y`` and is
  never reweighted by how well it explains ``y``, so when ``y`` points at a low-prior-weight mode the
  samples keep too much of the prior's weights, at any step count.
- ``"repaint"`` (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
  Models", CVPR, section 4): on the sampler's ``steps``-step grid ``t_0 = T > ... > t_N``, each
  down-step is one :meth:`~sdediff.samplers.base.Sampler.solve` over ``(t_k, t_{k+1})`` followed by
  a fresh forward draw of the known block, ``x^O = alpha_{k+1} y + sigma_{k+1} z``; each up-step is
  the forward transition of the whole state (no network call)
  ``x_{k-1} = (alpha_{k-1} / alpha_k) x_k + sqrt(sigma_{k-1}^2 - (alpha_{k-1} / alpha_k)^2 sigma_k^2) z``
  (``sde.transition_stds``). The walk is :func:`repaint_schedule`: ``jump_length`` (``j``) up-steps,
  ``resamplings - 1`` (``r - 1``) times at each of its jump points, so
  ``NFE = nfe(1) (N + (r - 1) j ceil((N - j) / j))`` plus the final denoise. Default sampler
  ``ddim`` with ``eta=1`` (DDPM's ancestral step, as the paper). Less biased than replacement, still
  biased.
- ``"smc"``: MCGdiff (Cardoso, Janati El Idrissi, Le Corff & Moulines 2023, "Monte Carlo guided
  Diffusion for Bayesian linear inverse problems", arXiv:2308.07983, ICLR 2024), its noiseless
  inpainting case: ``particles`` (``K``) particles per output sample, run together as one batch of
  ``B K`` per network call, on DDIM's grid. Backward kernel: DDIM's step with ``eta`` (default 1,
  DDPM's posterior), ``p(x_{k+1} | x_k) = N(m_k(x_k), eta_k^2 I)``,
  ``m_k = a_k x_k + b_k eps(x_k, t_k)`` (:func:`~sdediff.samplers.ddim.ddim_coefficients`).
  Potential ``g_k(x) = N(x^O; alpha_k y, v_k I)``, ``v_k = sigma_k^2 + kappa alpha_k^2``. The
  particles start from ``p_T g_0`` (``U``: the prior; ``O``: the prior times ``g_0``). Each step:
  one network call for every ``m``; incremental log weights
  ``log N(m^O; alpha_{k+1} y, (eta_k^2 + v_{k+1}) I) - log g_k(x_k)`` (the predictive likelihood of
  the next potential over the current one), added to each particle's carried log weight; where a
  sample's ``K`` particles have an effective sample size below ``ess_threshold K`` (default 0.5),
  multinomial resampling of their ancestors (weights reset to equal); then from the ancestor's
  ``m``, ``x^U = m^U + eta_k z`` and the ``O`` block from the Gaussian product of the kernel and
  ``g_{k+1}``: with ``c = eta_k^2 / (eta_k^2 + v_{k+1})``,
  ``x^O = c alpha_{k+1} y + (1 - c) m^O + sqrt(c v_{k+1}) z``. At the end the weighted particles
  stand for ``p_N g_N`` and one of them, drawn by its carried weight, is the sample. As ``K`` grows
  the samples converge to the posterior of the model's own DDIM chain given ``x^O`` within
  ``sqrt(v_N)`` of ``alpha_N y`` (``kappa``: 1e-4, the reference code's ``gaussian_var``). Cost:
  ``N`` network calls of ``B K`` samples, ``K N`` evaluations per sample; no gradients.

  Two departures from the reference code, both measured on Gaussian mixtures
  (``benchmarks/bench_imputation.py``): (1) the reference code resamples at **every** step
  (``ess_threshold=1`` here). Each multinomial resampling of nearly equal weights is a
  Wright-Fisher draw that loses particles at random; over tens of steps a sample's particles all
  descend from one component while ``y`` is still too noised to tell components apart, and the
  late steps that do tell them apart can no longer move mass to a component the particles have
  left. On a 2-D mixture whose posterior favours a weight-0.1 component, ``K = 64`` with every-step
  resampling lands at 38x the two-sample floor (component occupancy off by 0.18); with the ESS
  rule at 2.4x (off by 0.02). (2) The reference code's last step reweights the final particles by
  ``1 / g_N``; with the weights carried here that would cancel the conditioning in the limit
  ``K -> infinity`` (the reweighted pair ``(x_{N-1}, x_N)`` is distributed as
  ``p_{N-1}(x_{N-1}) p(x_N | x_{N-1})``), so the final draw uses the carried weights alone.

With ``denoise=True`` (the default, as :func:`sdediff.sample`) the result is the model's ``x0``
prediction at ``t_end`` (one more call), and its known block is then set to ``x_known``; with
``denoise=False`` the state at ``t_end``, known block set likewise.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from . import samplers
from .checks import (
    InputTypeError,
    InputValueError,
    NumericalError,
    check_choice,
    check_float,
    check_int,
    check_observation,
    check_score_model,
)
from .samplers.base import T_END, SampleResult
from .samplers.ddim import ddim_coefficients
from .score import ScoreModel
from .streams import normal
from .utils import expand_like

METHODS = ("replacement", "repaint", "smc")
#: The arguments only one method takes, and that method.
METHOD_ARGUMENTS = {"particles": "smc", "kappa": "smc", "ess_threshold": "smc",
                    "jump_length": "repaint", "resamplings": "repaint"}
#: RePaint's jump length ``j`` and resamplings ``r`` (Lugmayr et al. 2022, the paper's setting).
REPAINT_JUMP_LENGTH, REPAINT_RESAMPLINGS = 10, 10
#: MCGdiff's particles per sample and potential inflation ``kappa`` (Cardoso et al.'s code
#: default ``gaussian_var = 1e-4``).
SMC_PARTICLES, SMC_KAPPA = 64, 1e-4
#: A sample's particles are resampled when their effective sample size falls below this fraction
#: of ``K`` (adaptive resampling, Del Moral, Doucet & Jasra 2012; TDS's K/2); 1 resamples at every
#: step, as Cardoso et al.'s code.
SMC_ESS_THRESHOLD = 0.5
#: The sampler each method uses when none is named, with the options it adds (RePaint and
#: MCGdiff step with DDPM's ancestral kernel: DDIM at ``eta = 1``).
DEFAULT_SAMPLERS = {"replacement": ("ddim", {}), "repaint": ("ddim", {"eta": 1.0}),
                    "smc": ("ddim", {"eta": 1.0})}


def inpaint(model: ScoreModel, x_known: torch.Tensor, mask: torch.Tensor, sampler: str | None = None,
            steps: int | None = None, method: str = "replacement",
            generator: torch.Generator | None = None, return_info: bool = False,
            particles: int | None = None, jump_length: int | None = None,
            resamplings: int | None = None, *, t_end: float | None = None, denoise: bool = True,
            progress: bool = False, **options):
    """Fill in the unobserved coordinates of ``x_known`` with ``method`` (see the module docstring).

    ``x_known``: ``(B, *shape)``, one observation per output sample (entries where ``mask == 0``
    are ignored and may be NaN); ``mask``: 0/1 (or bool), 1 = observed, shape ``(*shape)`` or
    ``(B, *shape)``; every example observes some coordinate and hides some. ``sampler``: a
    registry name (default ``ddim``; ``ddim`` with ``eta=1`` for ``repaint`` and ``smc``, whose
    kernel is always DDIM's); ``steps``, ``t_end``, ``denoise`` and ``options`` (the sampler's own,
    e.g. ``eta``, ``order``, ``schedule``) as in :func:`sdediff.sample`. Method arguments:
    ``jump_length``, ``resamplings`` (``repaint``; default 10 and 10), ``particles`` (``smc``;
    default 64) and the options ``kappa`` and ``ess_threshold`` (``smc``; default 1e-4 and 0.5);
    given to another method they are refused. ``generator``: a ``torch.Generator`` (or ``None``)
    seeding every draw of the run.

    Returns the samples ``(B, *shape)`` in ``x_known``'s dtype, their observed block equal to
    ``x_known`` exactly, or with ``return_info=True`` a
    :class:`~sdediff.samplers.base.SampleResult`: ``x``, ``nfe`` (network calls, the final denoise
    included), ``times`` (the grid), ``seconds``, ``evaluations`` (network evaluations per sample:
    ``K`` per call for ``smc``) and ``extra`` (``repaint``: ``down_steps``, ``up_steps``; ``smc``:
    ``particles``, ``kappa`` and ``ess``, the mean effective sample size fraction at each step).
    """
    model = check_score_model(model)
    check_choice("inpainting method", method, METHODS)
    given = {"particles": particles, "jump_length": jump_length, "resamplings": resamplings,
             "kappa": options.get("kappa"), "ess_threshold": options.get("ess_threshold")}
    for name, value in given.items():
        if value is not None and METHOD_ARGUMENTS[name] != method:
            raise InputValueError(f"{name}={value!r} is an argument of method "
                                  f"{METHOD_ARGUMENTS[name]!r}, not of {method!r}; leave it out or "
                                  f"use method={METHOD_ARGUMENTS[name]!r}")
    x_known, observed = check_observation(x_known, mask)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator or None, got "
                             f"{type(generator).__name__}")
    where = model.device
    if where is not None and x_known.device != where:
        raise InputValueError(f"x_known is on {x_known.device} but the model's network is on {where}; "
                              f"move one of them (x_known.to({str(where)!r}))")
    kappa = options.pop("kappa", None)
    ess_threshold = options.pop("ess_threshold", None)
    sampler_object = _sampler(method, sampler, options)
    sde = model.sde
    if t_end is not None and sampler_object.spacing():
        raise InputValueError(f"t_end={t_end} given with schedule {sampler_object.spacing()!r}, whose "
                              "grid ends at its last timestep; leave t_end out")
    t_end = T_END if t_end is None else check_float("t_end", t_end, 0.0, sde.T, low_open=True,
                                                    high_open=True)
    ts = sampler_object.grid(sde, steps, t_end)
    y = torch.where(observed, x_known, torch.zeros((), dtype=x_known.dtype, device=x_known.device))
    start = time.perf_counter()
    if method == "replacement":
        result = _replacement(model, y, observed, sampler_object, ts, generator, denoise, progress)
    elif method == "repaint":
        result = _repaint(model, y, observed, sampler_object, ts, generator, denoise, progress,
                          REPAINT_JUMP_LENGTH if jump_length is None else jump_length,
                          REPAINT_RESAMPLINGS if resamplings is None else resamplings)
    else:
        result = _smc(model, y, observed, sampler_object, ts, generator, denoise, progress,
                      SMC_PARTICLES if particles is None else particles,
                      SMC_KAPPA if kappa is None else kappa,
                      SMC_ESS_THRESHOLD if ess_threshold is None else ess_threshold)
    result.x = torch.where(observed, x_known, result.x)
    result.seconds = time.perf_counter() - start
    return result if return_info else result.x


def _sampler(method: str, name: str | None, options: dict) -> samplers.Sampler:
    """The configured sampler of ``method``: the named one, or the method's default (whose own
    options, e.g. RePaint's ``eta=1``, yield to the caller's)."""
    if name is None:
        name, defaults = DEFAULT_SAMPLERS[method]
        options = {**defaults, **options}
    if method == "smc":
        if name != "ddim":
            raise InputValueError(f"sampler {name!r} given to method 'smc', whose particles move by "
                                  "DDIM's Gaussian kernel; allowed: ddim (options eta in (0, 1], "
                                  "schedule), or leave sampler out")
        options = {"eta": 1.0, **options}
    sampler = samplers.get(name, **options)
    if method == "smc" and sampler.options["eta"] == 0:
        raise InputValueError("eta=0 given to method 'smc': its kernel must be stochastic; allowed: "
                              "eta in (0, 1] (default 1, DDPM's posterior)")
    if method == "repaint" and sampler.adaptive:
        raise InputValueError(f"sampler {name!r} is adaptive: it has no fixed grid for RePaint's "
                              "jumps; allowed: a fixed-step sampler, e.g. "
                              + ", ".join(n for n in samplers.available()
                                          if not samplers.get(n).adaptive))
    return sampler


def _forward_draw(sde, y: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``alpha(t) y + sigma(t) z`` (``t``: a scalar or ``(B,)``), in ``y``'s dtype."""
    alpha, sigma = sde.alpha_sigma(t)
    return expand_like(alpha, y) * y + expand_like(sigma, y) * z


# --- replacement -------------------------------------------------------------------------------

class KnownBlockReplaced(nn.Module):
    """``net(x, t) -> eps``: ``model``'s eps at ``x`` with its observed block replaced by
    ``alpha(t) y + sigma(t) z``; on the observed block, the eps of the point mass at ``y``,
    ``(x - alpha(t) y) / sigma(t)`` (so that ``x0 = y`` there). ``z`` is fixed for the run."""

    def __init__(self, model: ScoreModel, y: torch.Tensor, observed: torch.Tensor, z: torch.Tensor):
        super().__init__()
        self.model = [model]            # a ScoreModel (a list: not registered as a submodule)
        if isinstance(model.net, nn.Module):
            self.net = model.net        # for the device of the wrapped model
        self.y, self.observed, self.z = y, observed, z

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        model = self.model[0]
        t = t.to(torch.float64) if t.device.type != "mps" else t
        alpha, sigma = (expand_like(c, x) for c in model.sde.alpha_sigma(t))
        eps = model.eps(torch.where(self.observed, alpha * self.y + sigma * self.z, x), t)
        return torch.where(self.observed, (x - alpha * self.y) / sigma, eps)


def _replacement(model, y, observed, sampler, ts, generator, denoise, progress) -> SampleResult:
    sde = model.sde
    x_T = sde.prior_sample(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    z = normal(y.shape, generator, dtype=y.dtype, device=y.device)     # one z per sample, per run
    x_T = torch.where(observed, _forward_draw(sde, y, ts[0], z), x_T)
    replaced = model._derived(KnownBlockReplaced(model, y, observed, z), "eps")
    return sampler.solve(replaced, x_T, ts, generator=generator, denoise=denoise,
                         progress=progress, desc="inpaint (replacement)")


# --- RePaint -----------------------------------------------------------------------------------

def repaint_schedule(steps: int, jump_length: int = REPAINT_JUMP_LENGTH,
                     resamplings: int = REPAINT_RESAMPLINGS) -> list[int]:
    """RePaint's walk over the indices ``0 .. steps`` of a grid (0 at ``T``, ``steps`` at ``t_end``),
    from 0 to ``steps``; consecutive entries differ by 1 (+1 a down-step, -1 an up-step).

    Lugmayr et al.'s jump points are the states with ``1 + i j`` steps left, ``i j < steps - j``
    (``i = 0, 1, ...``): on reaching one the walk goes back up ``j = jump_length`` steps, at most
    ``resamplings - 1`` times per point, and then on down. Down-steps:
    ``steps + (r - 1) j ceil((steps - j) / j)`` (with ``steps = 250``, ``j = r = 10``: 2410).
    """
    check_int("steps", steps, minimum=1)
    check_int("jump_length", jump_length, minimum=1)
    check_int("resamplings", resamplings, minimum=1)
    left = {steps - 1 - i: resamplings - 1 for i in range(0, steps - jump_length, jump_length)}
    k, walk = 0, [0]
    while k < steps:
        k += 1
        walk.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            for _ in range(jump_length):
                k -= 1
                walk.append(k)
    return walk


def _repaint(model, y, observed, sampler, ts, generator, denoise, progress, jump_length,
             resamplings) -> SampleResult:
    sde = model.sde
    check_int("jump_length", jump_length, minimum=1)
    check_int("resamplings", resamplings, minimum=1)
    walk = repaint_schedule(ts.numel() - 1, jump_length, resamplings)
    alpha = sde.alpha_sigma(ts)[0].tolist()
    up_std = sde.transition_stds(ts)[0].tolist()      # std of x_{t_k} given x_{t_{k+1}}

    def draw():
        return normal(y.shape, generator, dtype=y.dtype, device=y.device)

    nfe_before = model.nfe
    x = sde.prior_sample(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    x = torch.where(observed, _forward_draw(sde, y, ts[0], draw()), x)
    downs = ups = 0
    for k_cur, k_next in tqdm(list(zip(walk[:-1], walk[1:], strict=True)), disable=not progress,
                              desc="inpaint (repaint)", dynamic_ncols=True):
        if k_next > k_cur:            # down: one solve of the sampler, then a fresh known block
            x = sampler.solve(model, x, ts[k_cur:k_next + 1], generator=generator).x
            x = torch.where(observed, _forward_draw(sde, y, ts[k_next], draw()), x)
            downs += 1
        else:                         # up: the forward transition t_{k+1} -> t_k, whole state
            x = (alpha[k_next] / alpha[k_cur]) * x + up_std[k_next] * draw()
            ups += 1
    if denoise:
        with torch.no_grad():
            x = model.x0(x, ts[-1])
    nfe = model.nfe - nfe_before
    return SampleResult(x=x, nfe=nfe, times=ts, evaluations=nfe * model.evaluations_per_call,
                        extra={"down_steps": downs, "up_steps": ups, "jump_length": jump_length,
                               "resamplings": resamplings})


# --- MCGdiff -----------------------------------------------------------------------------------

def _gaussian_product(m: torch.Tensor, var: float, target: torch.Tensor, v: float,
                      z: torch.Tensor) -> torch.Tensor:
    """A draw of ``N(m, var) N(target, v)`` normalised: with ``c = var / (var + v)``, mean
    ``c target + (1 - c) m`` and variance ``c v`` (MCGdiff's ``O``-block proposal)."""
    c = var / (var + v)
    return c * target + (1 - c) * m + math.sqrt(c * v) * z


def _observed_square(d: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``|d^O|^2`` per row, shape ``(rows,)``."""
    return torch.where(observed, d, torch.zeros((), dtype=d.dtype, device=d.device)
                       ).pow(2).flatten(1).sum(1)


def _choose(weights: torch.Tensor, draws: int, generator) -> torch.Tensor:
    """``draws`` indices per row of ``weights`` ``(B, K)`` (multinomial, with replacement), drawn
    where the generator lives."""
    where = weights.device if generator is None else generator.device
    return torch.multinomial(weights.to(where), draws, replacement=True,
                             generator=generator).to(weights.device)


def _smc(model, y, observed, sampler, ts, generator, denoise, progress, particles, kappa,
         ess_threshold) -> SampleResult:
    check_int("particles", particles, minimum=1)
    kappa = check_float("kappa", kappa, 0.0, low_open=True)
    ess_threshold = check_float("ess_threshold", ess_threshold, 0.0, 1.0)
    sde = model.sde
    B, K, N = y.shape[0], particles, ts.numel() - 1
    a, b, eta = (c.tolist() for c in ddim_coefficients(sde, ts, sampler.options["eta"]))
    alpha, sigma = sde.alpha_sigma(ts)
    v = (sigma**2 + kappa * alpha**2).tolist()        # the potentials' variances v_k
    alpha = alpha.tolist()
    y, observed = y.repeat_interleave(K, 0), observed.repeat_interleave(K, 0)   # (B K, *shape)
    offsets = torch.arange(B, device=y.device)[:, None] * K

    def draw():
        return normal(y.shape, generator, dtype=y.dtype, device=y.device)

    def log_potential(x, k):                          # log g_k(x), up to a constant
        return -0.5 * _observed_square(x - alpha[k] * y, observed) / v[k]

    nfe_before, ess = model.nfe, []
    # x_0 ~ p_T g_0: U from the prior, O from the prior times the potential
    x = sde.prior_sample(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    x = torch.where(observed, _gaussian_product(torch.zeros_like(y), sde.prior_std**2,
                                                alpha[0] * y, v[0], draw()), x)
    log_g = log_potential(x, 0)
    log_W = torch.zeros(B, K, dtype=torch.float64, device=y.device)     # carried log weights
    keep = torch.arange(K, device=y.device).expand(B, K)
    with torch.no_grad():
        for k in tqdm(range(N), disable=not progress, desc="inpaint (smc)", dynamic_ncols=True):
            m = a[k] * x + b[k] * model.eps(x, ts[k])                  # the kernel's mean m_k(x_k)
            var_next = eta[k] ** 2 + v[k + 1]
            # predictive likelihood of the next potential over the current one
            log_w = -0.5 * _observed_square(m - alpha[k + 1] * y, observed) / var_next - log_g
            log_W = log_W + log_w.reshape(B, K).to(torch.float64)
            w = torch.softmax(log_W, dim=1)
            frac = 1 / w.pow(2).sum(1) / K
            ess.append(float(frac.mean()))
            again = frac < ess_threshold if ess_threshold < 1 else torch.ones_like(frac, dtype=bool)
            ancestors = torch.where(again[:, None], _choose(w, K, generator), keep)
            log_W = torch.where(again[:, None], 0.0, log_W)
            m = m[(ancestors + offsets).reshape(-1)]                   # multinomial resampling
            z = draw()
            x = torch.where(observed,
                            _gaussian_product(m, eta[k] ** 2, alpha[k + 1] * y, v[k + 1], z),
                            m + eta[k] * z)
            log_g = log_potential(x, k + 1)
        # weighted draws of p_N g_N: one per output sample
        pick = _choose(torch.softmax(log_W, dim=1), 1, generator)
        x = x[(pick + offsets).reshape(-1)]
        if denoise:
            x = model.x0(x, ts[-1])
    if not bool(torch.isfinite(x).all()):
        raise NumericalError("inpaint (smc): the result has non-finite values; check that the model's "
                             "output is finite, take more steps, or sample in float64")
    nfe = model.nfe - nfe_before
    per_sample = N * K + (1 if denoise else 0)
    return SampleResult(x=x, nfe=nfe, times=ts,
                        evaluations=per_sample * model.evaluations_per_call,
                        extra={"particles": K, "kappa": kappa, "ess": ess})

"""Deterministic encoding, decoding and exact likelihood through the probability-flow ODE
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", section 4.3 and appendix D;
Chen et al. 2018 and Grathwohl et al. 2019 (FFJORD) for the instantaneous change of variables).

The probability-flow ODE

    dx/dt = f~(x, t) = f(t) x - g(t)^2 score(x, t) / 2

(:meth:`~sdediff.sde.ForwardProcess.reverse_drift` with ``probability_flow=True``) carries the
marginal ``p_t`` into ``p_s`` for any ``s, t``: it is an invertible map between data at ``t_min``
and latents at ``T``.

- :func:`encode` solves it forward, ``x(t_min) = x0 -> z = x(T)``; :func:`decode` backward,
  ``z -> x(t_min)``. Both use the same ``t_min`` (default the process's ``t_min``: :data:`T_MIN`,
  or a discrete chain's first index ``1/M``), so a round trip is exact up
  to the solver's tolerance. ``decode(model, z)`` equals
  ``sd.sample(model, x_T=z, t_end=t_min, denoise=False)``.
- :func:`log_likelihood`: along the same path, ``d log p_t(x_t) / dt = -div f~(x_t, t)``, so

      log p_{t_min}(x0) = log p_T(z) + integral_{t_min}^{T} div f~(x_t, t) dt,

  integrated as the augmented state ``(x, delta logp)`` from ``(x0, 0)``. Each evaluation makes one
  network call for ``f~`` and gets the divergence from the same autograd graph:

  * ``"exact"``: ``div f~ = sum_i d f~_i / d x_i`` from ``D`` vector-Jacobian products with the
    unit vectors (batched, :data:`EXACT_CHUNK` at a time) -- for small ``D``;
  * ``"hutchinson"`` (Skilling 1989, Hutchinson 1990): ``div f~ = E_v[v^T (d f~/d x) v]`` for
    probes with ``E[v v^T] = I`` (Rademacher ``+-1`` or standard Gaussian), one vector-Jacobian
    product per probe. The probes are drawn once per sample from ``generator`` and kept along the
    whole path, so the solver integrates one smooth ODE per probe and each probe's integral is an
    unbiased estimate of the exact one. With ``probes = P >= 2`` the ``P`` integrals are tracked
    separately: their mean is the estimate and their spread its standard error.

- :func:`bits_per_dim` turns the negative log-likelihood of uniformly dequantized discrete data
  into bits per dimension, ``nll / (D ln 2) - log2(bin width)``, with the bin width
  :func:`bin_width` ``= (high - low) / n_levels``; :func:`dequantize` adds noise of exactly that
  width. 8-bit data in ``[-1, 1]``: width ``2/256``, offset ``+7`` (score_sde's); the 17-level
  digits: width ``2/17``, offset ``log2(8.5) = +3.087``. ``docs/encoding.md`` derives both.
- :func:`interpolate`: spherical interpolation between two latents, decoded.

Solvers: every solve here is a sampler's :meth:`~sdediff.samplers.base.Sampler.solve` (or, for
the likelihood's augmented system, the ``ode`` sampler's ``solve_augmented``) on the sampler's
own grid from ``T`` to ``t_min``, flipped to encode. ``sampler="ode"`` (default) runs torchdiffeq
with any of the ``ode`` sampler's methods and options (``method``, ``rtol``, ``atol``,
``schedule`` for fixed-step methods; validated by that sampler), optionally through
``torchdiffeq.odeint_adjoint`` (``adjoint=True``: differentiable with respect to the input and
the network's parameters at memory constant in the number of steps). Encoding and decoding can
also run through any deterministic sampler that declares itself ``reversible``
(:func:`sdediff.samplers.reversible`). ``steps`` follows the samplers' one rule: an adaptive
method refuses it.

NFE counts network calls (one batched call = 1); vector-Jacobian products are reported apart. Like
the samplers, everything here runs without gradients unless ``adjoint=True``; never wrap a model
in DDP for these solves (adaptive steps differ per batch, ranks would hang).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from . import samplers
from .checks import (
    AccuracyWarning,
    InputValueError,
    NumericalError,
    check_batch,
    check_choice,
    check_float,
    check_int,
    check_same_shape,
    check_score_model,
    coefficient_dtype,
)
from .samplers.base import SampleResult
from .score import ScoreModel, convert_prediction
from .sde import ForwardProcess
from .streams import PROBES, SampleSeeds, normal, rademacher, uniform

#: Song et al.'s likelihood and encoding end time (paper appendix D.2; score_sde ``eps=1e-5``).
T_MIN = ForwardProcess.t_min
DIVERGENCES = ("exact", "hutchinson")
PROBE_NOISES = ("rademacher", "gaussian")
#: :func:`log_likelihood`'s default solver of the augmented ODE, chosen by measurement
#: (``benchmarks/bench_encoding.py``, ``docs/encoding.md``): a fixed-step method on a fixed grid.
LIKELIHOOD_SAMPLER = "dpm_solver++"
LIKELIHOOD_OPTIONS = {"schedule": "logsnr", "order": 3, "lower_order_final": False}
LIKELIHOOD_STEPS = 19
#: :func:`interpolate`'s default encoder: exactly invertible BDIA (``samplers/bdia.py``), one
#: call per step each way, chosen by measurement (``docs/encoding.md``).
INTERPOLATE_SAMPLER = "bdia"
#: Warn when an encoding's estimated relative latent error (:func:`coarse_grid`), averaged over
#: the batch, exceeds this.
ENCODE_WARN_REL = 0.05
#: Warn when a likelihood's estimated error, averaged over the batch, exceeds this many bits per
#: dimension: twice the accuracy the default aims at, since the mean of the per-sample estimates
#: runs above the error of the mean (single samples err up to 0.06 on the digits where the mean
#: is within 0.005).
LIKELIHOOD_WARN_BITS = 0.02
#: Unit vectors per batched vector-Jacobian product of the exact divergence (bounds its memory
#: to ``EXACT_CHUNK`` copies of the batch).
EXACT_CHUNK = 64


# ----------------------------------------------------------------------------------- results

@dataclass
class LikelihoodResult:
    """``nll``: negative log-likelihood ``-log p_{t_min}(x0)`` in nats per sample ``(B,)``;
    ``stderr``: its Hutchinson standard error ``(B,)`` when ``probes >= 2`` (else ``None``);
    ``z``: the latents ``x(T)`` (the encoding); ``prior_logp`` = ``log p_T(z)`` and ``delta_logp``
    = the divergence integral, ``(B,)`` each, with ``-nll = prior_logp + delta_logp``;
    ``nfe``: network calls; ``vjps``: vector-Jacobian products (``D`` or ``probes`` per call);
    ``seconds``: wall time; ``error_estimate``: a fixed-step solve's estimated error of ``nll``
    in nats ``(B,)`` (Richardson against every other time of its grid; ``None`` for adaptive
    solves), whose ``estimate_nfe`` calls are not in ``nfe`` (nor in ``vjps``)."""

    nll: torch.Tensor
    stderr: torch.Tensor | None
    z: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    nfe: int
    vjps: int
    seconds: float
    divergence: str
    probes: int
    error_estimate: torch.Tensor | None = None
    estimate_nfe: int = 0


# ------------------------------------------------------------------------- bits per dimension

def bin_width(n_levels: int, data_range=(-1.0, 1.0)) -> float:
    """Width of one dequantization bin: ``(high - low) / n_levels``.

    The ``n_levels`` bins of this width tile an interval of the data's length, as in score_sde
    (8-bit data in ``[-1, 1]``: ``2/256``). The levels themselves are ``(high - low) / (n_levels - 1)``
    apart, so bins centred on them (:func:`dequantize`) are disjoint and the dequantized
    likelihood bounds the discrete one.
    """
    check_int("n_levels", n_levels, minimum=2)
    low, high = _check_range(data_range)
    return (high - low) / n_levels


def dequantization_offset(n_levels: int, data_range=(-1.0, 1.0)) -> float:
    """``-log2(bin width)``, the bits per dimension that dequantization adds to ``nll / (D ln 2)``."""
    return -math.log2(bin_width(n_levels, data_range))


def bits_per_dim(nll, D: int, n_bits: int | None = None, data_range=(-1.0, 1.0),
                 n_levels: int | None = None):
    """Bits per dimension of uniformly dequantized discrete data:
    ``nll / (D ln 2) - log2(bin width)``.

    ``nll``: negative log-likelihood in nats (a number or tensor, per sample); ``D``: dimensions per
    sample; the data have ``n_levels`` values per dimension (or ``2**n_bits``; default 8 bits)
    spanning ``data_range``, and the bin width is :func:`bin_width`. 8-bit data in ``[-1, 1]``
    give the familiar offset ``+7``; the 17-level digits ``+log2(8.5) = +3.087``.
    """
    check_int("D", D, minimum=1)
    if n_bits is not None:
        check_int("n_bits", n_bits, minimum=1, maximum=32)
        if n_levels is not None and n_levels != 2**n_bits:
            raise InputValueError(f"n_bits={n_bits} and n_levels={n_levels} disagree; give one of them")
    levels = n_levels if n_levels is not None else 2 ** (8 if n_bits is None else n_bits)
    return nll / (D * math.log(2)) + dequantization_offset(levels, data_range)


def dequantize(x: torch.Tensor, n_levels: int, data_range=(-1.0, 1.0),
               generator: torch.Generator | SampleSeeds | None = None) -> torch.Tensor:
    """Uniform dequantization: ``x + w (u - 1/2)``, ``u ~ U[0, 1)``, ``w`` = :func:`bin_width`.

    ``x`` must lie on the ``n_levels``-level grid ``low + k (high - low) / (n_levels - 1)`` (as
    :mod:`sdediff.data` stores discrete data); the noise fills a bin of width ``w`` centred on each
    level, so the data keep the scale the model was trained on.
    """
    check_batch("x", x)
    low, high = _check_range(data_range)
    width = bin_width(n_levels, data_range)
    spacing = (high - low) / (n_levels - 1)
    wide = x.to(coefficient_dtype(x.device))                  # float64 (float32 on MPS)
    k = torch.round((wide - low) / spacing)
    off = float((wide - (low + k * spacing)).abs().max())
    if off > 1e-3 * spacing or float(k.min()) < 0 or float(k.max()) > n_levels - 1:
        raise InputValueError(f"x is not on the grid of {n_levels} levels over [{low:g}, {high:g}] "
                              f"(an entry is {off:.3g} off a level, or outside the range); dequantize "
                              "discrete data only, with their own n_levels and data_range")
    u = uniform(x.shape, generator, dtype=torch.float64, device=x.device)
    return (wide + width * (u.to(device=x.device, dtype=wide.dtype) - 0.5)).to(x.dtype)


def _check_range(data_range) -> tuple[float, float]:
    try:
        low, high = data_range
    except (TypeError, ValueError):
        raise InputValueError(f"data_range must be (low, high), got {data_range!r}") from None
    low = check_float("data_range low", low)
    high = check_float("data_range high", high, low, None, low_open=True)
    return low, high


# ----------------------------------------------------------------------------- the ODE solves

def _solver(model, sampler: str, steps, t_min, adjoint: bool, options: dict, forward: bool):
    """The configured sampler and its grid between ``T`` and ``t_min`` (increasing when
    ``forward``): the sampler's own grid and step rule, flipped to encode."""
    model = check_score_model(model)
    t_min = model.sde.t_min if t_min is None else t_min
    t_min = check_float("t_min", t_min, 0.0, model.sde.T, low_open=True, high_open=True)
    if adjoint:
        if sampler != "ode":
            raise InputValueError(f"adjoint=True needs sampler='ode' (torchdiffeq), got {sampler!r}")
        options = {**options, "adjoint": True}
    solver = samplers.get(sampler, **options)
    if solver.is_stochastic():
        raise InputValueError(f"sampler {sampler!r} is stochastic with these options; encoding and "
                              "decoding need a deterministic one, e.g. 'ode' or 'ddim' (eta=0)")
    ts = solver.grid(model.sde, steps, t_min)
    return model, solver, ts.flip(0) if forward else ts


def _transport(model, x, forward: bool, sampler: str, steps, t_min, adjoint: bool,
               progress: bool, options: dict, what: str):
    """Carry ``x`` along the probability-flow ODE from ``t_min`` to ``T`` (``forward``) or back;
    a :attr:`~sdediff.samplers.base.Sampler.paired` sampler decodes its latent pair. Returns
    ``(solver, result)``."""
    model, solver, ts = _solver(model, sampler, steps, t_min, adjoint, options, forward)
    check_batch(what, x)
    pair = solver.paired and not forward
    if pair:
        solver.check_pair(x, ts, what)
    return solver, solver.solve(model, x, ts, progress=progress,
                                desc="encode" if forward else "decode", pair=pair)


def encode(model: ScoreModel, x0: torch.Tensor, *, sampler: str = "ode", steps: int | None = None,
           t_min: float | None = None, adjoint: bool = False, progress: bool = False,
           return_info: bool = False, error_estimate: bool = True, **options):
    """Latents ``z = x(T)`` of data ``x0 = x(t_min)`` along the probability-flow ODE.

    ``x0``: ``(B, ...)``; ``z``: ``(B, ...)``, or for a :func:`paired <sdediff.samplers.paired>`
    sampler (``"bdia"``, ``"edict"``: exactly invertible at any step count) the latent pair
    ``(B, 2, ...)``, whose first member is the state at ``T``; :func:`decode` takes the pair back.
    ``sampler="ode"`` (default): torchdiffeq, ``options`` are the ``ode`` sampler's (``method``
    any torchdiffeq method, default ``dopri5``; ``rtol``/``atol`` default ``1e-5``; ``schedule``
    and ``steps`` for fixed-step methods). Another deterministic sampler that declares itself
    ``reversible`` (:func:`sdediff.samplers.reversible`) runs its ``steps``-step grid in
    reverse, with its own options.
    ``adjoint=True`` makes the result differentiable (``odeint_adjoint``). Returns ``z``, or a
    :class:`~sdediff.samplers.base.SampleResult` (``x``, ``nfe``, ``times``, ``seconds``) with
    ``return_info=True``.

    A fixed-step encoding estimates its own error (``error_estimate=True``): the same sampler on
    every other time of its grid (:func:`coarse_grid`, about half the calls again), and
    Richardson's ``|z - z_coarse| / (r^order - 1)`` (``r`` = 2, or ``N / ceil(N/2)`` for odd
    ``N``: :func:`step_ratio`) relative to ``|z|``, per sample, in
    ``extra["error_estimate"]`` (its calls in ``extra["estimate_nfe"]``, not in ``nfe``); when
    the batch mean exceeds :data:`ENCODE_WARN_REL` it warns
    (:class:`~sdediff.checks.AccuracyWarning`). Adaptive solvers control their error by
    ``rtol``/``atol`` and report ``None``.
    """
    solver, result = _transport(model, x0, True, sampler, steps, t_min, adjoint, progress, options,
                                "x0")
    if error_estimate and not adjoint:
        _estimate_encoding_error(model, x0, result, solver)
    return result if return_info else result.x


def coarse_grid(ts: torch.Tensor) -> torch.Tensor:
    """Every other time of the grid ``ts``, both ends kept: ``ceil(N / 2)`` steps for ``N``."""
    index = list(range(0, ts.numel(), 2))
    if index[-1] != ts.numel() - 1:
        index.append(ts.numel() - 1)
    return ts[index]


def richardson_error(fine: torch.Tensor, coarse: torch.Tensor, order: float,
                     ratio: float = 2.0) -> torch.Tensor:
    """Richardson's estimate of the error of ``fine``, solved on ``ratio`` times the steps of
    ``coarse`` by a method of global ``order``: ``|fine - coarse| / (ratio^order - 1)``."""
    return (fine - coarse).abs() / (ratio ** order - 1)


def step_ratio(ts: torch.Tensor) -> float:
    """Steps of the grid ``ts`` over those of its :func:`coarse_grid`: 2, or ``N / ceil(N/2)``
    for an odd ``N`` (3 steps against 2: 1.5)."""
    return (ts.numel() - 1) / (coarse_grid(ts).numel() - 1)


def _estimate_encoding_error(model, x0, result: SampleResult, solver) -> None:
    """The relative error of a fixed-step encoding's latent, per sample, by Richardson against
    the same sampler on :func:`coarse_grid`: ``result.extra["error_estimate"]`` ``(B,)`` and
    ``["estimate_nfe"]``; warns (:class:`~sdediff.checks.AccuracyWarning`) above
    :data:`ENCODE_WARN_REL`. Adaptive solves control their error by ``rtol``/``atol`` instead."""
    ts = result.times
    if solver.adaptive or ts.numel() < 3:
        result.extra.update(error_estimate=None, estimate_nfe=0)
        return
    coarse = solver.solve(model, x0, coarse_grid(ts), pair=False)
    fine_z, coarse_z = (result.x, coarse.x) if not solver.paired else (result.x[:, 0], coarse.x[:, 0])
    error = richardson_error(fine_z, coarse_z, solver.order, step_ratio(ts)).flatten(1).norm(dim=1)
    relative = error / fine_z.flatten(1).norm(dim=1)
    result.extra.update(error_estimate=relative, estimate_nfe=coarse.nfe)
    mean = float(relative.mean())
    if not mean <= ENCODE_WARN_REL:                     # a non-finite estimate warns too
        warnings.warn(
            f"encode: the latent's estimated relative error is {mean:.3g} (mean over the batch; > "
            f"{ENCODE_WARN_REL:g}, "
            f"{solver.name} with {ts.numel() - 1} steps against {coarse_grid(ts).numel() - 1}); take "
            "more steps or another grid (schedule=...)", AccuracyWarning, stacklevel=3)


def decode(model: ScoreModel, z: torch.Tensor, *, sampler: str = "ode", steps: int | None = None,
           t_min: float | None = None, adjoint: bool = False, progress: bool = False,
           return_info: bool = False, **options):
    """Data ``x(t_min)`` of latents ``z = x(T)``: the inverse of :func:`encode` with the same
    ``t_min`` and options. Any deterministic sampler may decode; the result equals
    ``sd.sample(model, x_T=z, sampler=..., t_end=t_min, denoise=False)``."""
    _, result = _transport(model, z, False, sampler, steps, t_min, adjoint, progress, options, "z")
    return result if return_info else result.x


# ----------------------------------------------------------------------------------- likelihood

def draw_probes(shape, probes: int, noise: str, generator: torch.Generator | SampleSeeds | None,
                dtype: torch.dtype, device=None) -> torch.Tensor:
    """``probes`` Skilling-Hutchinson probes per sample, shape ``(probes, *shape)``, with
    ``E[v v^T] = I``: Rademacher (``+-1`` with probability 1/2) or standard Gaussian."""
    check_choice("noise", noise, PROBE_NOISES)
    draw = rademacher if noise == "rademacher" else normal
    if isinstance(generator, SampleSeeds):    # sample i's probes from (seed, i): (B, probes, ...)
        per_sample = (shape[0], probes, *shape[1:])
        return draw(per_sample, generator, dtype=dtype, device=device,
                    stream=PROBES).transpose(0, 1)
    return draw((probes, *shape), generator, dtype=dtype, device=device, stream=PROBES)


def batched_vjp(drift: torch.Tensor, x: torch.Tensor, grads: torch.Tensor,
                create_graph: bool = False) -> torch.Tensor:
    """The vector-Jacobian products ``grads[k]^T (d drift / d x)``, shape ``grads.shape``
    ``(K, *x.shape)``: one batched backward pass (``is_grads_batched``, vmap), or, for a network
    with an operation vmap does not support (diffusers' U-Nets: "NYI: querying is_contiguous
    inside of vmap"), one backward pass per ``k``. A single product is always one plain pass."""
    if grads.shape[0] > 1:
        try:
            return torch.autograd.grad(drift, x, grads, retain_graph=True,
                                       create_graph=create_graph, is_grads_batched=True)[0]
        except RuntimeError as error:
            if "vmap" not in str(error):
                raise
    return torch.stack([torch.autograd.grad(drift, x, g, retain_graph=True,
                                            create_graph=create_graph)[0] for g in grads])


def exact_divergence(drift: torch.Tensor, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """``sum_i d drift_i / d x_i`` per sample ``(B,)``, from ``D`` vector-Jacobian products with the
    unit vectors (batched :data:`EXACT_CHUNK` at a time); ``drift`` must be a function of ``x``."""
    B, D = x.shape[0], x[0].numel()
    div = torch.zeros(B, dtype=drift.dtype, device=drift.device)
    for lo in range(0, D, EXACT_CHUNK):
        idx = torch.arange(lo, min(D, lo + EXACT_CHUNK), device=x.device)
        basis = torch.zeros(len(idx), B, D, dtype=drift.dtype, device=drift.device)
        basis[torch.arange(len(idx)), :, idx] = 1
        vjp = batched_vjp(drift, x, basis.reshape(len(idx), *x.shape), create_graph)
        div = div + vjp.reshape(len(idx), B, D)[torch.arange(len(idx)), :, idx].sum(0)
    return div


def hutchinson_divergence(drift: torch.Tensor, x: torch.Tensor, v: torch.Tensor,
                          create_graph: bool = False) -> torch.Tensor:
    """``v_p^T (d drift / d x) v_p`` per sample and probe, shape ``(B, P)``; ``v``: ``(P, *x.shape)``."""
    vjp = batched_vjp(drift, x, v, create_graph)
    return (vjp * v).flatten(2).sum(-1).T


def _divergence(drift: torch.Tensor, x: torch.Tensor, v: torch.Tensor | None,
                create_graph: bool = False) -> torch.Tensor:
    """``(B, P)``: the exact divergence (``v is None``, ``P = 1``) or one Hutchinson estimate per probe."""
    if v is None:
        return exact_divergence(drift, x, create_graph)[:, None]
    return hutchinson_divergence(drift, x, v, create_graph)


def _augmented_solve(model, solver, x0, ts, v, progress: bool):
    """The ``ode`` sampler on the augmented system ``(x, delta logp)``, ``d/dt = (f~, div f~)``.
    Returns ``(nll, z, prior_logp, delta (B, P), observer, calls)``."""
    sde = model.sde
    time_dtype = coefficient_dtype(x0.device)     # float64 (float32 on MPS), once
    calls = [0]

    def augmented(t, state):
        x = state[0]
        # Only odeint_adjoint's backward pass calls with gradients on; it hands in a state that
        # requires grad, and the divergence must then be differentiable itself.
        create_graph = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            if not create_graph:
                x = x.detach().requires_grad_(True)
            drift = sde.reverse_drift(model, x, t.to(time_dtype), probability_flow=True)
            div = _divergence(drift, x, v, create_graph)
        calls[0] += 1
        if not create_graph:
            drift, div = drift.detach(), div.detach()
        return drift, div                         # d(x, delta logp)/dt = (f~, div f~)

    P = 1 if v is None else v.shape[0]
    state = (x0, torch.zeros(x0.shape[0], P, dtype=x0.dtype, device=x0.device))
    (z, delta), run = solver.solve_augmented(model, augmented, state, ts, progress=progress)
    prior = model.sde.prior_logp(z)
    return -(prior + delta.mean(1)), z, prior, delta, run, calls[0]


class _TracedModel(ScoreModel):
    """``model`` whose every call also records ``div eps_theta`` at the call's point and time
    (:func:`_traced_solve`): the network runs under autograd, the divergence comes from its graph
    (:func:`_divergence` with probes ``v``), and the prediction is handed on detached."""

    def __init__(self, model: ScoreModel, v: torch.Tensor | None):
        super().__init__(model.net, model.sde, prediction=model.prediction, autocast=model.autocast)
        self.evaluations_per_call = model.evaluations_per_call
        self.v, self.times, self.divergences = v, [], []

    def predict(self, x, t, kind):
        with torch.enable_grad():
            x_grad = x.detach().requires_grad_(True)
            eps = super().predict(x_grad, t, "eps")
            self.divergences.append(_divergence(eps, x_grad, self.v).detach())
        self.times.append(float(t))
        alpha, sigma = self._alpha_sigma(float(t))
        return convert_prediction(eps.detach(), "eps", kind, x, alpha, sigma)


def _traced_solve(model, solver, x0, ts, v, progress: bool):
    """A reversible sampler carries ``x0`` up its grid ``ts`` to ``z``; the divergence integral is
    a quadrature over its own network calls, plus one call at ``T``.

    With ``f = d log alpha/dt`` and ``g^2 = -2 sigma^2 d lambda/dt`` (``lambda = log(alpha/sigma)``),
    the probability-flow drift is ``f x - sigma lambda' eps`` and

        integral_{t_min}^{T} div f~ dt = D log(alpha_T / alpha_{t_min})
                                         + integral_{lambda_T}^{lambda_{t_min}} sigma div eps dlambda,

    the first term exact, the second by the trapezoidal rule in ``lambda`` (scipy) over the times the
    sampler evaluated the network: each time of the grid once (one-call-per-step samplers), and
    ``T``. Returns ``(nll, z, prior_logp, delta (B, P), observer, calls)``."""
    from scipy.integrate import trapezoid

    traced = _TracedModel(model, v)
    run = solver.solve(traced, x0, ts, progress=progress, desc="likelihood")
    traced.predict(run.x, ts[-1], "eps")          # the last node, at T
    run.nfe += 1
    if traced.times != ts.tolist():
        raise InputValueError(f"log_likelihood: sampler {solver.name!r} does not call the network once "
                              "per time of its grid, which the quadrature needs; use a one-call-per-step "
                              "sampler (dpm_solver++, unipc, ipndm, lms, ddim) or sampler='ode'")
    sde = model.sde
    alpha, sigma = sde.alpha_sigma(ts)
    lam = sde.log_snr(ts)
    values = sigma[:, None, None] * torch.stack(traced.divergences).to(torch.float64).cpu()   # (N+1, B, P)
    # lambda decreases along ts: the rule from lambda_{t_min} to lambda_T is minus the integral
    integral = -trapezoid(values.numpy(), x=lam.numpy(), axis=0)
    D = x0[0].numel()
    delta = (torch.from_numpy(integral) + D * float(torch.log(alpha[-1] / alpha[0])))
    delta = delta.to(device=x0.device, dtype=x0.dtype)
    prior = sde.prior_logp(run.x)
    return -(prior + delta.mean(1)), run.x, prior, delta, run, len(traced.times)


def log_likelihood(model: ScoreModel, x0: torch.Tensor, *, divergence: str = "hutchinson",
                   probes: int | None = None, noise: str | None = None,
                   generator: torch.Generator | SampleSeeds | None = None,
                   t_min: float | None = None,
                   sampler: str | None = None, steps: int | None = None, adjoint: bool = False,
                   progress: bool = False, return_info: bool = False, error_estimate: bool = True,
                   **options):
    """Negative log-likelihood ``-log p_{t_min}(x0)`` in nats per sample, shape ``(B,)``.

    The augmented probability-flow ODE ``(x, delta logp)`` is solved from ``(x0, 0)`` at ``t_min``
    to ``(z, delta)`` at ``T``, and ``log p = prior_logp(z) + delta``. ``divergence``:
    ``"exact"`` (``D`` vector-Jacobian products per call; small ``D``) or ``"hutchinson"``
    (``probes`` per sample, default 1, ``noise`` ``"rademacher"`` (default) or ``"gaussian"``,
    drawn once from ``generator``; :class:`~sdediff.streams.SampleSeeds` draws sample ``i``'s
    from ``(seed, i)``). ``adjoint=True``: differentiable with respect to ``x0`` and the
    network's parameters. With ``return_info=True`` returns a :class:`LikelihoodResult`
    (standard error when ``probes >= 2``, latents, NFE, error estimate).

    The solver, two ways:

    * ``sampler="ode"``: torchdiffeq on the augmented system, ``options`` the ``ode`` sampler's
      (``method``, ``rtol``, ``atol``, ``schedule``; ``steps`` for fixed-step methods); giving
      ``method``, ``rtol`` or ``atol`` without a sampler selects it (tolerances alone:
      ``dopri5``).
    * any other single-state reversible sampler that calls the network once per grid time
      (``dpm_solver++``, ``unipc``, ``ipndm``, ``lms``, ``ddim``) carries ``x`` up its grid and the
      divergence integral is a quadrature over its own calls (:func:`_traced_solve`), one more
      call at ``T``: ``steps + 1`` calls. The default, :data:`LIKELIHOOD_SAMPLER` with
      :data:`LIKELIHOOD_OPTIONS` and :data:`LIKELIHOOD_STEPS` steps (20 calls), is within
      0.01 bits/dim of the tight adaptive value on the digits and on mixtures in 16 to 64
      dimensions, not on 2-D ones (0.013-0.025 there, 80 calls needed: ``docs/encoding.md``).

    A fixed-step solve estimates its own error (``error_estimate=True``): the same solve on
    every other time of its grid (:func:`coarse_grid`, about half the calls again, reported
    apart) and Richardson's ``|nll - nll_coarse| / (r^order - 1)`` per sample
    (:func:`step_ratio`); when the batch mean exceeds :data:`LIKELIHOOD_WARN_BITS` bits/dim it warns
    (:class:`~sdediff.checks.AccuracyWarning`).
    """
    check_batch("x0", x0)
    check_choice("divergence", divergence, DIVERGENCES)
    if divergence == "exact":
        given = [f"{k}={v!r}" for k, v in (("probes", probes), ("noise", noise)) if v is not None]
        if given:
            raise InputValueError(f"{', '.join(given)} given with divergence='exact', which draws no "
                                  "probes; use divergence='hutchinson'")
        P = 1
    else:
        P = check_int("probes", 1 if probes is None else probes, minimum=1)
        noise = check_choice("noise", "rademacher" if noise is None else noise, PROBE_NOISES)
    default = sampler is None and not options      # the default solver: its warning's advice differs
    if sampler is None:
        if {"method", "rtol", "atol"} & set(options):
            sampler = "ode"
            options = options if "method" in options else {**options, "method": "dopri5"}
        else:
            sampler = LIKELIHOOD_SAMPLER
            options = {**LIKELIHOOD_OPTIONS, **options}
            steps = LIKELIHOOD_STEPS if steps is None else steps
    model, solver, ts = _solver(model, sampler, steps, t_min, adjoint, options, forward=True)
    if solver.paired or not solver.reversible:
        allowed = [n for n in samplers.reversible() if n not in samplers.paired()]
        raise InputValueError(f"log_likelihood: sampler {sampler!r} cannot carry the likelihood "
                              f"(a single-state reversible sampler is needed); allowed: {', '.join(allowed)}")
    v = None if divergence == "exact" else draw_probes(
        x0.shape, P, noise, generator, x0.dtype, x0.device)
    D = x0[0].numel()
    solve = _augmented_solve if sampler == "ode" else _traced_solve
    nll, z, prior, delta, run, calls = solve(model, solver, x0, ts, v, progress)
    if not bool(torch.isfinite(nll).all()):
        raise NumericalError("log_likelihood: a non-finite log-likelihood; check the model's "
                             "output, tighten rtol/atol or take more steps")
    vjps = calls * (D if v is None else P)
    error, estimate_nfe = None, 0
    if error_estimate and not solver.adaptive and not adjoint and ts.numel() >= 3:
        coarse_nll, *_, coarse_run, _ = solve(model, solver, x0, coarse_grid(ts), v, False)
        error = richardson_error(nll, coarse_nll, solver.order, step_ratio(ts))
        estimate_nfe = coarse_run.nfe
        mean = float(error.mean()) / (D * math.log(2))
        if not mean <= LIKELIHOOD_WARN_BITS:           # a non-finite estimate warns too
            grid = solver.options.get("schedule")
            grid = grid if isinstance(grid, str) else "an explicit grid"
            warnings.warn(
                f"log_likelihood: estimated error {mean:.3g} bits/dim (mean over the batch; > "
                f"{LIKELIHOOD_WARN_BITS:g}; {solver.options.get('method', sampler)!r}, "
                f"{ts.numel() - 1} steps on {grid!r} against {coarse_grid(ts).numel() - 1}); take "
                f"more steps{'' if default else ', use the default solver,'} or an adaptive one "
                "(rtol=...)",
                AccuracyWarning, stacklevel=2)
    if not return_info:
        return nll
    stderr = delta.std(1) / math.sqrt(P) if P >= 2 else None
    return LikelihoodResult(
        nll=nll, stderr=stderr, z=z, prior_logp=prior, delta_logp=delta.mean(1),
        nfe=run.nfe, vjps=vjps, seconds=run.seconds,
        divergence=divergence, probes=P, error_estimate=error, estimate_nfe=estimate_nfe)


# ------------------------------------------------------------------------------- interpolation

def slerp(z_a: torch.Tensor, z_b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation, per sample, of the directions of ``z_a`` and ``z_b`` ``(B, ...)``,
    with the norm interpolated linearly: ``(B, len(weights), ...)``.

    At weight ``w`` the direction is ``(sin((1-w) theta) u_a + sin(w theta) u_b) / sin(theta)``
    (``theta`` the angle between the unit vectors ``u_a``, ``u_b``) and the norm
    ``(1-w) |z_a| + w |z_b|``, so every latent keeps a norm between the endpoints' (a Gaussian
    latent's norm concentrates near ``sqrt(D)``; a straight line would cut inside that shell).
    """
    check_same_shape("z_b", z_b, z_a, "z_a")
    B = z_a.shape[0]
    dtype = coefficient_dtype(z_a.device)                       # float64 (float32 on MPS)
    a, b = z_a.reshape(B, -1).to(dtype), z_b.reshape(B, -1).to(dtype)
    r_a, r_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    if bool((r_a == 0).any() | (r_b == 0).any()):
        raise InputValueError("cannot slerp a zero latent: it has no direction")
    u_a, u_b = a / r_a, b / r_b
    theta = torch.arccos((u_a * u_b).sum(1, keepdim=True).clamp(-1, 1))   # (B, 1)
    w = weights.to(device=a.device, dtype=dtype).reshape(1, -1, 1)        # (1, n, 1)
    theta = theta[:, :, None]
    sin = torch.sin(theta)
    # sin(w theta) / sin(theta) -> w as theta -> 0 (parallel latents: linear interpolation)
    small = sin.abs() < 1e-8
    c_a = torch.where(small, 1 - w, torch.sin((1 - w) * theta) / torch.where(small, 1, sin))
    c_b = torch.where(small, w, torch.sin(w * theta) / torch.where(small, 1, sin))
    direction = c_a * u_a[:, None] + c_b * u_b[:, None]
    direction = direction / direction.norm(dim=2, keepdim=True)
    radius = (1 - w) * r_a[:, None] + w * r_b[:, None]
    return (radius * direction).to(z_a.dtype).reshape(B, -1, *z_a.shape[1:])


def interpolate(model: ScoreModel, x_a: torch.Tensor, x_b: torch.Tensor, n: int, *,
                return_latents: bool = False, **kwargs):
    """Decoded :func:`slerp` between the latents of ``x_a`` and ``x_b``: ``(B, n, ...)`` for pairs
    ``(B, ...)``; the endpoints are ``decode(encode(x_a))`` and ``decode(encode(x_b))``.

    ``kwargs`` go to :func:`encode` and :func:`decode` alike (``sampler``, ``steps``, ``t_min``,
    ``method``, ``rtol``, ...). The default sampler is :data:`INTERPOLATE_SAMPLER`, the exact
    encoder: the endpoints come back to round-off (``method``, ``rtol`` or ``atol`` without a
    sampler select ``ode``). A paired sampler's latent pairs are
    interpolated member by member with the same weights. With ``return_latents=True`` returns
    ``(images, latents)``.
    """
    check_batch("x_a", x_a)
    check_batch("x_b", x_b)
    check_same_shape("x_b", x_b, x_a, "x_a")
    n = check_int("n", n, minimum=2)
    for bad in ("return_info", "adjoint"):
        if bad in kwargs:
            raise InputValueError(f"unknown option {bad!r} for interpolate")
    B = x_a.shape[0]
    # the exact encoder, unless torchdiffeq's options name the ode solver
    kwargs.setdefault("sampler", "ode" if {"method", "rtol", "atol"} & set(kwargs) else INTERPOLATE_SAMPLER)
    z = encode(model, torch.cat([x_a, x_b]), **kwargs)
    weights = torch.linspace(0, 1, n, dtype=torch.float64)
    if z.shape[1:] == x_a.shape[1:]:
        path = slerp(z[:B], z[B:], weights)                       # (B, n, ...)
    else:                     # a latent pair (B, 2, ...): both members along the same weights
        path = torch.stack([slerp(z[:B, k], z[B:, k], weights) for k in range(2)], dim=2)
    decode_kwargs = {k: v for k, v in kwargs.items() if k != "error_estimate"}   # encode's alone
    x = decode(model, path.reshape(B * n, *z.shape[1:]), **decode_kwargs).reshape(B, n, *x_a.shape[1:])
    return (x, path) if return_latents else x

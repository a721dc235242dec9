"""k-diffusion's samplers as peers of the sdediff samplers, on the exact mixtures.

k-diffusion (Crowson) writes every sampler as a plain function ``sample_x(model, x, sigmas)`` of a
**denoiser** ``D(y, s)`` in EDM's variables ``y = x / alpha`` and ``s = sigma / alpha``, in which
every Gaussian process's probability flow is ``dy/ds = (y - D(y, s)) / s`` (Karras et al. 2022,
sec. 4; :mod:`sdediff.bench.problems`). :class:`KarrasDenoiser` is that denoiser over any sdediff
:class:`~sdediff.score.ScoreModel`:

    D(y, s) = y - s * eps(alpha(t) y, t),   t = t(s) = sde.t_of_log_snr(-log s)

(sdediff's log-SNR is ``lambda = log(alpha / sigma) = -log s``), with an ``nfe`` counter of its
calls. So the peers run on the same model, from the same ``x_T`` (``y_T = x_T / alpha(T)`` at
``s = s(T)``), as the sdediff samplers.

**The peers** (:data:`KDIFF_PEERS`): the deterministic samplers of ``k_diffusion/sampling.py``:
``kdiff:euler``, ``heun``, ``dpm_2``, ``lms`` (order 4), ``dpmpp_2m``, ``dpmpp_3m_sde`` (at
``eta = 0``: the deterministic DPM-Solver++(3M)) on k-diffusion's own noise grids
(:data:`KDIFF_GRIDS`: ``get_sigmas_karras`` rho 7, ``get_sigmas_exponential``,
``get_sigmas_polyexponential`` at rho 2 -- at its default rho 1 it is the exponential grid --
and ``get_sigmas_vp``, the linear VP's uniform-in-t grid, linear VP only), and
``kdiff:dpm_fast`` (DPM-Solver-fast, its own uniform-in-log-sigma grid, ``n`` = its NFE) and
``kdiff:dpm_adaptive`` (DPM-Solver-23 with its PID step control, at ``rtol``/``atol``).

**The problem they solve.** A grid runs from ``s(T)`` down to ``s(t_end)``, the span the sdediff
samplers cover with ``denoise=False``, so a peer is measured against the very same exact endpoint
(the grid constructors reproduce both ends to rounding: they are checked to 1e-10 and pinned).
With ``append_zero=True`` the grid keeps k-diffusion's usual final ``0``: one more step, the
denoising jump to ``s = 0``, measured against the flow at ``s = 0``. :func:`run_kdiffusion`
reports where a run started and ended in ``(y, s)``, like the diffusers peers
(:func:`sdediff.bench.peers.run_peer`), so the sweep carries the start along the exact flow to the
end. A budget is met by :func:`kdiffusion_steps`, the most steps whose calls fit (Heun and DPM-2:
two calls per step, one for a final step to ``s = 0``).

The peers run with torch's default dtype set to float64 (:func:`float64_defaults`): k-diffusion
builds its grids with ``torch.linspace`` and ``torch.tensor(sigma)``, which are float32 at
torch's default, and DPM-Solver's coefficients from them (``h.expm1()``) would carry float32
rounding into float64 samples. Within it, sdediff's own coefficients are float64 anyway.

**Loading.** k-diffusion's package ``__init__`` imports clip, wandb, torchvision, accelerate...;
:func:`load_sampling` executes only its ``sampling.py`` (which needs torch, scipy, torchdiffeq,
torchsde and tqdm, all sdediff dependencies) from the installed distribution, with a stand-in for
``from . import utils``: ``sampling.py`` uses ``utils.append_dims`` alone, defined here. k-diffusion
is optional: ``pip install --no-deps k-diffusion==0.1.1.post1`` (its own dependencies would pull
torchvision and CUDA wheels); without it the sweep skips these peers with a note.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
import time
import types
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checks import InputTypeError, InputValueError, check_choice, check_float, check_int
from ..score import ScoreModel
from ..sde import VPSDE
from .plan import Task

#: The k-diffusion release the peers are written against (the file is loaded, not the package).
KDIFF_VERSION = "0.1.1.post1"
#: How to get the peers (in the note printed when k-diffusion is absent).
PIP_KDIFF = (f"pip install --no-deps k-diffusion=={KDIFF_VERSION}  (only its sampling.py is used: "
             "its declared dependencies are not needed)")
#: The ``source`` column of the peers' rows.
SOURCE = "k-diffusion"
#: Where the sampling module is registered (a private package name: the real ``k_diffusion``
#: package, should anything import it, is left alone).
_PACKAGE = "_sdediff_kdiffusion"
#: Relative agreement required of a grid constructor's ends with ``s(T)`` and ``s(t_end)``.
GRID_END_RTOL = 1e-10


@dataclass(frozen=True)
class KPeer:
    """One k-diffusion sampler: its function in ``sampling.py``, its kind (``"grid"``: a sigma
    grid; ``"fast"``: ``sigma_min, sigma_max, n``; ``"adaptive"``: ``sigma_min, sigma_max`` and
    tolerances), ``stages`` (model calls per grid step) and the keywords it is run with."""

    function: str
    kind: str
    stages: int = 1
    keywords: dict = field(default_factory=dict)

    def calls(self, steps: int, append_zero: bool = False) -> int | None:
        """Model calls of ``steps`` steps (``None``: adaptive). A multi-stage step to ``s = 0``
        is a single Euler call in k-diffusion."""
        if self.kind == "adaptive":
            return None
        if self.kind == "fast":
            return steps
        return self.stages * steps - (self.stages - 1 if append_zero else 0)


#: The deterministic k-diffusion samplers run as peers, by name.
KDIFF_PEERS = {
    "kdiff:euler": KPeer("sample_euler", "grid"),
    "kdiff:heun": KPeer("sample_heun", "grid", stages=2),
    "kdiff:dpm_2": KPeer("sample_dpm_2", "grid", stages=2),
    "kdiff:lms": KPeer("sample_lms", "grid"),
    "kdiff:dpmpp_2m": KPeer("sample_dpmpp_2m", "grid"),
    "kdiff:dpmpp_3m_sde": KPeer("sample_dpmpp_3m_sde", "grid", keywords={"eta": 0.0}),
    "kdiff:dpm_fast": KPeer("sample_dpm_fast", "fast"),
    "kdiff:dpm_adaptive": KPeer("sample_dpm_adaptive", "adaptive"),
}
#: k-diffusion's grid constructors offered to the grid samplers: name -> (function, keywords).
KDIFF_GRIDS = {
    "karras": ("get_sigmas_karras", {"rho": 7.0}),
    "exponential": ("get_sigmas_exponential", {}),
    "polyexponential": ("get_sigmas_polyexponential", {"rho": 2.0}),
    "vp": ("get_sigmas_vp", {}),
}


def kdiffusion_available() -> bool:
    """Whether k-diffusion is installed (its ``sampling.py`` is found; nothing is imported)."""
    return _sampling_path() is not None


def _sampling_path() -> Path | None:
    try:
        spec = importlib.util.find_spec("k_diffusion")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "sampling.py"
        if path.is_file():
            return path
    return None


def kdiffusion_version() -> str | None:
    """The installed k-diffusion's version (from its metadata), or ``None``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("k-diffusion")
    except PackageNotFoundError:
        return None


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """``x`` with trailing singleton dimensions up to ``target_dims`` (k-diffusion's
    ``utils.append_dims``, the one helper its ``sampling.py`` takes from ``utils``)."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise InputValueError(f"append_dims: the input has {x.ndim} dimensions, more than "
                              f"target_dims={target_dims}")
    return x[(...,) + (None,) * missing]


def _utils_stand_in() -> types.ModuleType:
    utils = types.ModuleType(f"{_PACKAGE}.utils", "sdediff's stand-in for k_diffusion.utils")
    utils.append_dims = append_dims

    def missing(name):
        raise AttributeError(f"k-diffusion's sampling.py asked for utils.{name}, which sdediff's "
                             "stand-in does not provide (it has append_dims); a newer k-diffusion? "
                             f"the peers are written against {KDIFF_VERSION}")

    utils.__getattr__ = missing
    return utils


@functools.lru_cache(maxsize=1)
def load_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling`` module, executed alone from the installed distribution (its
    package ``__init__``, with its heavy imports, never runs). Cached."""
    path = _sampling_path()
    if path is None:
        raise ModuleNotFoundError(f"k-diffusion is not installed; {PIP_KDIFF}")
    package = types.ModuleType(_PACKAGE, "k-diffusion's sampling.py, loaded by sdediff.bench")
    package.__path__ = []
    utils = _utils_stand_in()
    package.utils = utils
    sys.modules[_PACKAGE] = package
    sys.modules[utils.__name__] = utils
    spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.sampling", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    package.sampling = module
    return module


@contextmanager
def float64_defaults():
    """torch's default dtype float64 inside (k-diffusion's grids and ``torch.tensor(sigma)``)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class KarrasDenoiser:
    """A sdediff :class:`~sdediff.score.ScoreModel` as k-diffusion's denoiser ``D(y, s)``.

    ``denoiser(y, sigma)``: ``y = x / alpha`` of shape ``(B, ...)``, ``sigma = s = sigma/alpha``
    a tensor of shape ``(B,)`` (as k-diffusion calls it), ``(1,)``, a 0-d tensor or a number.
    Returns ``y - s * eps(alpha(t) y, t)`` at ``t = sde.t_of_log_snr(-log s)``, the model's
    ``x0`` prediction, in ``y``'s dtype. At ``s = 0`` the denoiser is the identity (no network
    call: a batch all at 0 is not counted). ``nfe`` counts the calls, one per batch.
    """

    def __init__(self, model: ScoreModel):
        if not isinstance(model, ScoreModel):
            raise InputTypeError(f"KarrasDenoiser wraps a sdediff ScoreModel, got {type(model).__name__}")
        self.model = model
        self.sde = model.sde
        self.nfe = 0

    def time_of(self, s: torch.Tensor) -> torch.Tensor:
        """The process's time of noise level ``s > 0`` (float64): ``t(lambda = -log s)``."""
        return self.sde.t_of_log_snr(-torch.log(s.to(torch.float64)))

    def __call__(self, y: torch.Tensor, sigma) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu().reshape(-1)
        batch = y.shape[0]
        if s.numel() not in (1, batch):
            raise InputValueError(f"sigma has {s.numel()} entries for a batch of {batch}; give one "
                                  f"noise level or one per sample, shape ({batch},)")
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise InputValueError(f"sigma must be finite and >= 0, got {s.tolist()[:4]}")
        positive = s > 0
        if not bool(positive.any()):
            return y.clone()
        if bool((s == s[0]).all()):            # one level for the batch: a scalar time
            t = self.time_of(s[:1])[0]
            alpha = float(self.sde.alpha(t))
            eps = self.model.eps(alpha * y, t)
            self.nfe += 1
            return y - float(s[0]) * eps
        s = s.expand(batch)
        t = self.time_of(torch.where(positive, s, torch.ones_like(s)))   # s = 0 rows: any time
        shape = (batch,) + (1,) * (y.ndim - 1)
        alpha = self.sde.alpha(t).to(y.device, y.dtype).reshape(shape)
        eps = self.model.eps(alpha * y, t.to(y.device))
        self.nfe += 1
        denoised = y - s.to(y.device, y.dtype).reshape(shape) * eps
        return torch.where(positive.to(y.device).reshape(shape), denoised, y)


def check_peer(name: str) -> KPeer:
    """The :class:`KPeer` called ``name``; an unknown name raises, listing the peers."""
    return KDIFF_PEERS[check_choice("k-diffusion peer", name, KDIFF_PEERS)]


def kdiffusion_steps(name: str, budget: int, append_zero: bool = False) -> int | None:
    """The most steps of peer ``name`` whose model calls fit ``budget`` (``None``: even one step
    costs more). An adaptive peer has no answer (it runs at a tolerance)."""
    peer = check_peer(name)
    check_int("budget", budget, minimum=1)
    if peer.kind == "adaptive":
        raise InputValueError(f"{name} is adaptive: give it rtol/atol instead of an NFE budget")
    if peer.calls(1, append_zero) > budget:
        return None
    steps = 1
    while peer.calls(steps + 1, append_zero) <= budget:
        steps += 1
    return steps


def _ends(sde, t_end: float) -> tuple[float, float]:
    """``(s(T), s(t_end))`` in float64."""
    t = torch.tensor([sde.T, t_end], dtype=torch.float64)
    s_max, s_min = sde.sigma_over_alpha(t).tolist()
    return s_max, s_min


def make_sigmas(grid: str, steps: int, sde, t_end: float, append_zero: bool = False) -> torch.Tensor:
    """k-diffusion's grid ``grid`` of ``steps`` steps from ``s(T)`` to ``s(t_end)`` (then ``0``
    with ``append_zero``), float64. The constructor's ends must agree with ``s(T)`` and
    ``s(t_end)`` to :data:`GRID_END_RTOL` and are then pinned to them exactly."""
    check_choice("k-diffusion grid", grid, KDIFF_GRIDS)
    check_int("steps", steps, minimum=1)
    sampling = load_sampling()
    function, keywords = KDIFF_GRIDS[grid]
    s_max, s_min = _ends(sde, t_end)
    n = steps if append_zero else steps + 1          # the constructors append 0 themselves
    with float64_defaults():
        if grid == "vp":
            if not (isinstance(sde, VPSDE) and sde.schedule == "linear" and sde.T == 1.0):
                raise InputValueError(f"the k-diffusion grid 'vp' is the linear VP schedule; the "
                                      f"process is {sde!r}; use one of karras, exponential, "
                                      "polyexponential")
            config = sde.config()
            sigmas = sampling.get_sigmas_vp(n, beta_d=config["beta_max"] - config["beta_min"],
                                            beta_min=config["beta_min"], eps_s=t_end)
        else:
            sigmas = getattr(sampling, function)(n, s_min, s_max, **keywords)
    sigmas = sigmas.to(torch.float64)
    if not append_zero:
        sigmas = sigmas[:-1]
    last = len(sigmas) - (2 if append_zero else 1)
    ends = ((0, s_max),) if last == 0 else ((0, s_max), (last, s_min))   # one step to 0: no s_min
    for index, target in ends:
        if abs(float(sigmas[index]) / target - 1) > GRID_END_RTOL:
            raise InputValueError(f"k-diffusion grid {grid!r} has sigma {float(sigmas[index])!r} "
                                  f"where the process has {target!r}")
        sigmas[index] = target
    return sigmas


class _NoNoise:
    """A noise sampler of zeros for ``eta = 0``: k-diffusion still calls (or builds) one, and its
    default would draw from the global generator (or build a Brownian tree) for nothing."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        return torch.zeros_like(self.x)


def run_kdiffusion(name: str, steps: int | None, model: ScoreModel, x_T: torch.Tensor,
                   grid: str | None = None, t_end: float = 1e-3, rtol: float | None = None,
                   atol: float | None = None, append_zero: bool = False):
    """Run the k-diffusion peer ``name`` from ``x_T``, a prior draw at ``T`` of ``model.sde``.

    ``steps``: grid steps for the grid samplers (on k-diffusion's ``grid``, see
    :data:`KDIFF_GRIDS`), the NFE ``n`` of ``kdiff:dpm_fast``, ``None`` for
    ``kdiff:dpm_adaptive`` (which takes ``rtol`` and ``atol``). ``append_zero``: the grid
    samplers end at ``s = 0`` (k-diffusion's final denoising step) instead of ``s(t_end)``.

    Returns ``(x, nfe, seconds, (y_start, s_start, s_end, scale))`` as
    :func:`sdediff.bench.peers.run_peer`: the endpoint mapped back to ``x = scale * y(s_end)``
    (``scale = alpha(t(s_end))``, 1 at ``s = 0``), the calls counted by :class:`KarrasDenoiser`,
    the wall time, and the run's start ``y_start = x_T / alpha(T)`` at ``s_start = s(T)``.
    """
    peer = check_peer(name)
    if not isinstance(model, ScoreModel):
        raise InputTypeError(f"model must be a sdediff ScoreModel, got {type(model).__name__}")
    check_float("t_end", t_end, 0.0, model.sde.T, low_open=True, high_open=True)
    if peer.kind == "adaptive":
        if steps is not None or grid is not None:
            raise InputValueError(f"{name} chooses its own steps: give rtol and atol, not steps={steps} "
                                  f"or grid={grid!r}")
        if rtol is None or atol is None:
            raise InputValueError(f"{name} needs rtol and atol (got rtol={rtol}, atol={atol})")
        check_float("rtol", rtol, 0.0, None, low_open=True)
        check_float("atol", atol, 0.0, None, low_open=True)
    else:
        if rtol is not None or atol is not None:
            raise InputValueError(f"{name} runs fixed steps; rtol/atol are for kdiff:dpm_adaptive")
        check_int("steps", steps, minimum=1)
    if peer.kind == "grid":
        check_choice("k-diffusion grid", grid, KDIFF_GRIDS)
    elif grid is not None:
        raise InputValueError(f"{name} builds its own grid (uniform in log sigma); got grid={grid!r}, "
                              "allowed: None")
    function = getattr(load_sampling(), peer.function)
    sde = model.sde
    s_max, s_min = _ends(sde, t_end)
    alpha_T = float(sde.alpha(torch.tensor(sde.T, dtype=torch.float64)))
    y = x_T.double() / alpha_T
    denoiser = KarrasDenoiser(model)
    reached = []                                  # the adaptive solver's last noise level
    with float64_defaults(), torch.no_grad():
        if peer.kind == "grid":
            sigmas = make_sigmas(grid, steps, sde, t_end, append_zero)
            start = time.perf_counter()
            out = function(denoiser, y, sigmas, disable=True, **peer.keywords,
                           **({"noise_sampler": _NoNoise(y)} if "eta" in peer.keywords else {}))
            s_end = float(sigmas[-1])
        elif peer.kind == "fast":
            start = time.perf_counter()
            out = function(denoiser, y, s_min, s_max, steps, disable=True, noise_sampler=_NoNoise(y))
            s_end = s_min
        else:
            start = time.perf_counter()
            out = function(denoiser, y, s_min, s_max, rtol=rtol, atol=atol, disable=True,
                           noise_sampler=_NoNoise(y),
                           callback=lambda info: reached.append(float(info["sigma"])))
            # it stops within 1e-5 of log s(t_end): report where it did stop
            s_end = reached[-1] if reached else s_max
        seconds = time.perf_counter() - start
    if s_end > 0:
        t = denoiser.time_of(torch.tensor(s_end, dtype=torch.float64))
        scale = float(sde.alpha(t))
    else:
        scale = 1.0                                   # s = 0 is the data: t = 0, alpha = 1
    if steps is not None and denoiser.nfe != peer.calls(steps, append_zero):
        raise RuntimeError(f"{name}: counted {denoiser.nfe} calls, expected "
                           f"{peer.calls(steps, append_zero)} for {steps} steps")
    return scale * out, denoiser.nfe, seconds, (y, s_max, s_end, scale)


def plan_kdiffusion(names: Iterable[str], budgets: Sequence[int], tolerances: Sequence[float],
                    grids: Sequence[str] = tuple(KDIFF_GRIDS)) -> tuple[list[Task], list[str]]:
    """The peers' runs (``source`` :data:`SOURCE`): each grid sampler on every grid of ``grids``
    at every budget (options ``{"grid": name}``), ``dpm_fast`` at every budget, ``dpm_adaptive``
    at every tolerance (``rtol = atol``); and notes on budgets no step count fits."""
    for grid in grids:
        check_choice("k-diffusion grid", grid, KDIFF_GRIDS)
    tasks, notes = [], []
    for name in names:
        peer = check_peer(name)
        if peer.kind == "adaptive":
            tasks += [Task(name, SOURCE, {"rtol": tol, "atol": tol}, None, None) for tol in tolerances]
            continue
        for budget in budgets:
            steps = kdiffusion_steps(name, budget)
            if steps is None:
                notes.append(f"{name}: skipped at NFE {budget} (its smallest run costs "
                             f"{peer.calls(1)} calls)")
            elif peer.kind == "fast":
                tasks.append(Task(name, SOURCE, {}, budget, steps))
            else:
                tasks += [Task(name, SOURCE, {"grid": grid}, budget, steps) for grid in grids]
    return tasks, notes


def run_task(task: Task, model: ScoreModel, x_T: torch.Tensor, t_end: float):
    """:func:`run_kdiffusion` for a :class:`~sdediff.bench.plan.Task` of :func:`plan_kdiffusion`."""
    options = dict(task.options)
    return run_kdiffusion(task.sampler, task.steps, model, x_T, grid=options.pop("grid", None),
                          t_end=t_end, **options)


def same_ends(a: tuple, b: tuple, rtol: float = 1e-12) -> bool:
    """Whether two ``(s_start, s_end, scale)`` agree to ``rtol`` (the same exact reference)."""
    return all(math.isclose(u, v, rel_tol=rtol, abs_tol=0.0) for u, v in zip(a, b, strict=True))


__all__ = ["KDIFF_GRIDS", "KDIFF_PEERS", "KDIFF_VERSION", "PIP_KDIFF", "SOURCE",
           "KPeer", "KarrasDenoiser", "append_dims", "float64_defaults", "kdiffusion_available",
           "kdiffusion_steps", "kdiffusion_version", "load_sampling", "make_sigmas", "plan_kdiffusion",
           "run_kdiffusion", "run_task", "same_ends"]

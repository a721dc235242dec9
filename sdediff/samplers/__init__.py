"""Samplers chosen by name: the registry and the one entry point :func:`sample`.

A sampler is one module in this package with one ``@register("name")`` class deriving from
:class:`~sdediff.samplers.base.Sampler`; modules are discovered on import, so adding a file is
all it takes. Third-party samplers call :func:`register` themselves.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch

from ..checks import InputTypeError, InputValueError, check_choice
from ..score import ScoreModel
from .base import Observer, Sampler, SampleResult
from .grids import CONTINUOUS_GRIDS, GRIDS, SPACINGS, make_grid

_REGISTRY: dict[str, type[Sampler]] = {}

#: Infrastructure modules of this package that hold no sampler.
_NOT_SAMPLERS = {"base", "grids", "noise", "expint"}


def register(name: str):
    """Class decorator adding a :class:`Sampler` subclass to the registry under ``name``."""
    if not isinstance(name, str) or not name:
        raise InputValueError(f"a sampler name must be a non-empty string, got {name!r}")

    def decorator(cls: type[Sampler]) -> type[Sampler]:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise InputTypeError(f"register({name!r}) needs a Sampler subclass, got {cls!r}")
        if name in _REGISTRY:
            raise InputValueError(f"a sampler named {name!r} is already registered "
                                  f"({_REGISTRY[name].__module__}.{_REGISTRY[name].__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available() -> list[str]:
    """Names of the registered samplers, in registration order."""
    return list(_REGISTRY)


def get(name: str, **options) -> Sampler:
    """A configured :class:`Sampler`; unknown names and options raise ``ValueError``."""
    check_choice("sampler", name, _REGISTRY)
    return _REGISTRY[name](**options)


def reversible() -> list[str]:
    """Names of the samplers whose update rule runs in either direction of time (they encode):
    read from each class's declared ``reversible``."""
    return [name for name, cls in _REGISTRY.items() if cls.reversible]


def paired() -> list[str]:
    """Names of the samplers whose state is a pair (EDICT, BDIA): their latents are ``(B, 2, ...)``."""
    return [name for name, cls in _REGISTRY.items() if cls.paired]


#: The sampler of :func:`sample` and ``sdediff sample`` when none is named: the best default of the
#: fast solvers over the mixtures and the digits model at 5, 10 and 20 NFE
#: (``benchmarks/bench_defaults.py``, ``docs/benchmarks.md``).
DEFAULT_SAMPLER = "unipc"


def sample(model: ScoreModel, shape=None, x_T: torch.Tensor | None = None,
           sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
           generator: torch.Generator | None = None, t_end: float | None = None,
           denoise: bool = True,
           return_info: bool = False, progress: bool = False, keep_trajectory: bool = False,
           dtype: torch.dtype = torch.float32, device=None, **options):
    """Generate samples with the sampler called ``sampler``.

    Give ``shape`` ``(B, ...)`` to start from a prior draw (seeded by ``generator``), or the
    starting state ``x_T`` itself. ``steps`` defaults per sampler (adaptive samplers refuse it:
    they take ``rtol``/``atol``); ``options`` are the sampler's own (``schedule=``, ``eta=``,
    ...). Returns the samples, or a :class:`~sdediff.samplers.base.SampleResult` (``x``,
    ``nfe``, ``times``, ``trajectory``) with ``return_info=True``.
    """
    result = get(sampler, **options)(
        model, x_T, shape=shape, steps=steps, generator=generator, t_end=t_end, denoise=denoise,
        progress=progress, keep_trajectory=keep_trajectory, dtype=dtype, device=device)
    return result if return_info else result.x


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_SAMPLERS:
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["CONTINUOUS_GRIDS", "DEFAULT_SAMPLER", "GRIDS", "Observer", "SPACINGS", "SampleResult", "Sampler",
           "available", "get", "make_grid", "paired", "register", "reversible",
           "sample"]

"""Samplers chosen by name: the registry and the one entry point :func:`sample`.

A sampler is one module in this package with one ``@register("name")`` class deriving from
:class:`~sdediff.samplers.base.Sampler`; modules are discovered on import, so adding a file is
all it takes. Third-party samplers call :func:`register` themselves.
"""

from __future__ import annotations

import importlib
import pkgutil

import torch

from ..checks import check_choice, check_int
from ..score import ScoreModel
from .base import Sampler, SampleResult, check_x_shape
from .grids import GRIDS, make_grid

_REGISTRY: dict[str, type[Sampler]] = {}

#: Infrastructure modules of this package that hold no sampler.
_NOT_SAMPLERS = {"base", "grids", "noise", "expint"}


def register(name: str):
    """Class decorator adding a :class:`Sampler` subclass to the registry under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a sampler name must be a non-empty string, got {name!r}")

    def decorator(cls: type[Sampler]) -> type[Sampler]:
        if not (isinstance(cls, type) and issubclass(cls, Sampler)):
            raise TypeError(f"register({name!r}) needs a Sampler subclass, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"a sampler named {name!r} is already registered "
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


def sample(model: ScoreModel, shape=None, x_T: torch.Tensor | None = None,
           sampler: str = "ddim", steps: int | None = None,
           generator: torch.Generator | None = None, t_end: float = 1e-3, denoise: bool = True,
           return_info: bool = False, progress: bool = False, keep_trajectory: bool = False,
           dtype: torch.dtype = torch.float32, device=None, **options):
    """Generate samples with the sampler called ``sampler``.

    Give ``shape`` ``(B, ...)`` to start from a prior draw (seeded by ``generator``), or the
    starting state ``x_T`` itself. ``steps`` defaults per sampler; ``options`` are the sampler's
    own (``schedule=``, ``eta=``, ...). Returns the samples, or a
    :class:`~sdediff.samplers.base.SampleResult` (``x``, ``nfe``, ``times``, ``trajectory``)
    with ``return_info=True``.
    """
    chosen = get(sampler, **options)
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a sdediff.ScoreModel, got {type(model).__name__}")
    if x_T is None:
        if shape is None:
            raise ValueError("give either shape=(batch, ...) or x_T")
        shape = tuple(shape)
        for n in shape:
            check_int("each entry of shape", n, minimum=1)
        x_T = model.sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    elif shape is not None:
        check_x_shape(x_T, shape)
    result = chosen(model, x_T, steps=steps, generator=generator, t_end=t_end, denoise=denoise,
                    progress=progress, keep_trajectory=keep_trajectory)
    return result if return_info else result.x


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_SAMPLERS:
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["GRIDS", "SampleResult", "Sampler", "available", "get", "make_grid", "register",
           "sample"]

"""The validators that write every user-facing error message.

Every public function of sdediff checks its arguments through these helpers, so each message has
one wording: it names the bad value and what is allowed. ``ValueError`` is raised for a bad value,
``TypeError`` for a bad type. The CLI turns both into one line on stderr and exit status 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch


class NumericalError(RuntimeError):
    """A numerical breakdown (non-finite state or loss) with advice on what to change."""


def _listing(allowed: Iterable[Any]) -> str:
    return ", ".join(str(a) for a in allowed)


def check_choice(what: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; else raise naming both."""
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {_listing(allowed)}")
    return value


def check_options(owner: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse options that ``owner`` does not take (never silently ignore them)."""
    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise ValueError(
            f"unknown option {names} for {owner}; allowed: {_listing(allowed) or '(none)'}"
        )


def check_int(what: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bools refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what} must be <= {maximum}, got {value}")
    return value


def check_float(
    what: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number in the interval given by ``low``/``high`` (open ends on request)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        raise ValueError(f"{what} must be in {interval}, got {value}")
    return value


def check_tensor(what: str, x: Any, *, floating: bool = True, finite: bool = True) -> torch.Tensor:
    """A (floating, finite) tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(
            f"{what} must have a floating dtype (float32, float64, bfloat16, ...), got {x.dtype}"
        )
    if finite and floating and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {bad} non-finite value(s) (NaN or inf); all must be finite")
    return x


def check_shape(what: str, x: torch.Tensor, expected: tuple[int, ...]) -> torch.Tensor:
    """``x.shape == expected``, with both shapes in the message."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{what} has shape {tuple(x.shape)}, expected {tuple(expected)}")
    return x


def check_same_shape(what: str, got: torch.Tensor, reference: torch.Tensor, reference_name: str) -> None:
    """``got`` must have the shape and dtype of ``reference`` (the network-output probe)."""
    if got.shape != reference.shape:
        raise ValueError(
            f"{what} has shape {tuple(got.shape)} but {reference_name} has shape "
            f"{tuple(reference.shape)}; they must match"
        )


def check_batch_times(t: torch.Tensor, batch: int) -> None:
    """Times given to a model: a scalar or one time per batch element."""
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(
            f"t has shape {tuple(t.shape)}; expected a scalar or shape ({batch},) for a batch of {batch}"
        )


def check_finite_value(what: str, value: float, advice: str) -> float:
    """Stop on a non-finite scalar (a loss, a step size) with advice."""
    if not math.isfinite(value):
        raise NumericalError(f"{what} is {value}; {advice}")
    return value


def check_batch(what: str, x: Any) -> torch.Tensor:
    """A floating, finite batch ``(B, ...)`` with at least one example."""
    check_tensor(what, x)
    if x.dim() < 2:
        raise ValueError(f"{what} must have shape (batch, ...), got {tuple(x.shape)}; add a batch "
                         f"dimension (e.g. {what}[None])")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)}); give at least one example")
    return x

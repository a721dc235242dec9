"""The validators that write every user-facing error message.

Every public function of sdediff checks its arguments through these helpers, so each message has
one wording: it names the bad value and what is allowed. :class:`InputValueError` (a ``ValueError``)
is raised for a bad value, :class:`InputTypeError` (a ``TypeError``) for a bad type: both are
:class:`InputError`, which the CLI turns into one line on stderr and exit status 2, while an
exception no check raised (a bug) keeps its traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch


class InputError(Exception):
    """An error about what the caller passed in (a value, a type, a name, a file's content),
    raised by the library's own checks with a message that names the bad value and what is
    allowed. The CLI prints such errors as one line and exits 2; any other exception is a bug
    and keeps its traceback."""


class InputValueError(InputError, ValueError):
    """A bad value (catch it as ``ValueError``)."""


class InputTypeError(InputError, TypeError):
    """A bad type (catch it as ``TypeError``)."""


class NumericalError(RuntimeError):
    """A numerical breakdown (non-finite state or loss) with advice on what to change."""


class AccuracyWarning(UserWarning):
    """A result whose own error estimate exceeds its threshold (a fixed-step likelihood or
    encoding too coarse to trust); the message gives the estimate and what to change."""


def _listing(allowed: Iterable[Any]) -> str:
    return ", ".join(str(a) for a in allowed)


def check_choice(what: str, value: Any, allowed: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``allowed``; else raise naming both."""
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise InputValueError(f"unknown {what} {value!r}; allowed: {_listing(allowed)}")
    return value


def check_options(owner: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse options that ``owner`` does not take (never silently ignore them)."""
    allowed = sorted(allowed)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise InputValueError(
            f"unknown option {names} for {owner}; allowed: {_listing(allowed) or '(none)'}"
        )


def check_bool(what: str, value: Any) -> bool:
    """A flag that must be a real ``bool`` (``1`` or ``"yes"`` are refused, not guessed)."""
    if not isinstance(value, bool):
        raise InputTypeError(f"{what} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_score_model(model: Any):
    """The one score interface: every sampler, encoder and likelihood takes a ``ScoreModel``."""
    from .score import ScoreModel  # score.py imports this module

    if not isinstance(model, ScoreModel):
        raise InputTypeError(f"model must be a sdediff.ScoreModel, got {type(model).__name__}; wrap a "
                             "network with ScoreModel(net, sde) or a function with "
                             "ScoreModel.from_fn(score_fn, sde)")
    return model


def check_int(what: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bools refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputTypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise InputValueError(f"{what} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InputValueError(f"{what} must be <= {maximum}, got {value}")
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
        raise InputTypeError(f"{what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    lo = "(" if low_open or low is None else "["       # an infinite end is never allowed
    hi = ")" if high_open or high is None else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        raise InputValueError(f"{what} must be in {interval}, got {value}")
    return value


def check_tensor(what: str, x: Any, *, floating: bool = True, finite: bool = True) -> torch.Tensor:
    """A (floating, finite) tensor."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise InputTypeError(
            f"{what} must have a floating dtype (float32, float64, bfloat16, ...), got {x.dtype}"
        )
    if finite and floating and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise InputValueError(f"{what} contains {bad} non-finite value(s) (NaN or inf); all must be finite")
    return x


def check_shape(what: str, x: torch.Tensor, expected: tuple[int, ...]) -> torch.Tensor:
    """``x.shape == expected``, with both shapes in the message."""
    if tuple(x.shape) != tuple(expected):
        raise InputValueError(f"{what} has shape {tuple(x.shape)}, expected {tuple(expected)}")
    return x


def check_same_shape(what: str, got: torch.Tensor, reference: torch.Tensor, reference_name: str) -> None:
    """``got`` must have the shape and dtype of ``reference`` (the network-output probe)."""
    if got.shape != reference.shape:
        raise InputValueError(
            f"{what} has shape {tuple(got.shape)} but {reference_name} has shape "
            f"{tuple(reference.shape)}; they must match"
        )


def check_batch_times(t: torch.Tensor, batch: int) -> None:
    """Times given to a model: a scalar or one time per batch element."""
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, batch)):
        raise InputValueError(
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
        raise InputValueError(f"{what} must have shape (batch, ...), got {tuple(x.shape)}; add a batch "
                              f"dimension (e.g. {what}[None])")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise InputValueError(f"{what} is empty (shape {tuple(x.shape)}); give at least one example")
    return x


#: The device names ``device=`` and ``--device`` accept (``N`` an index).
DEVICE_NAMES = ("cpu", "cuda", "cuda:N", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def available_devices() -> list[str]:
    """The device names this machine can use: ``cpu``, then ``cuda`` and ``cuda:0..`` and ``mps``
    where present."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def default_device() -> torch.device:
    """``cuda`` when a CUDA device is available, else ``cpu`` (the CLI's ``--device`` default)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_device(name: Any) -> torch.device:
    """A device name (``cpu``, ``cuda``, ``cuda:N``, ``mps``) or ``torch.device`` that this machine
    has, as a ``torch.device``; a malformed or absent one raises naming the available devices."""
    if isinstance(name, torch.device):
        kind, index = name.type, name.index
        text = str(name)
    elif isinstance(name, str):
        text = name.strip()
        kind, sep, number = text.partition(":")
        index = int(number) if number.isdigit() else None
        if sep and (index is None or kind not in ("cuda", "mps")):
            kind = None                                        # 'cuda:x', 'cpu:0', 'gpu:1'
    else:
        raise InputTypeError(f"device must be a name such as 'cpu' or 'cuda:0' or a torch.device, "
                             f"got {name!r} ({type(name).__name__})")
    available = _listing(available_devices())
    if kind not in ("cpu", "cuda", "mps"):
        raise InputValueError(f"unknown device {text!r}; allowed: {_listing(DEVICE_NAMES)} "
                              f"(available here: {available})")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputValueError(f"device {text!r} is not available (no CUDA device: "
                              f"torch.cuda.is_available() is False); available: {available}")
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise InputValueError(f"device {text!r} is not available ({torch.cuda.device_count()} CUDA "
                              f"device(s)); available: {available}")
    if kind == "mps" and (not _mps_available() or (index or 0) > 0):
        raise InputValueError(f"device {text!r} is not available (no Apple MPS device); available: "
                              f"{available}")
    return torch.device(kind if index is None else f"{kind}:{index}")


def coefficient_dtype(device) -> torch.dtype:
    """The dtype of solver times and coefficients that must live on ``device``: float64, or
    float32 with a one-line warning on a device without float64 (Apple MPS). Grids and the
    per-step coefficient lists are computed on the host in float64 whatever the device; this
    serves the tensors that run on the device (an adaptive ODE solve's times, per-sample drifts)."""
    if torch.device(device).type != "mps":
        return torch.float64
    import warnings

    warnings.warn("device mps has no float64: solver times and coefficients on it fall back to "
                  "float32 (grids and per-step coefficients stay float64 on the host)", stacklevel=2)
    return torch.float32


def check_labels(y: Any, num_classes: int | None, batch: int, *, null: bool = False,
                 what: str = "y") -> torch.Tensor:
    """Class labels for a batch of ``batch``: an int (one class for the batch) or an integer
    tensor of shape ``()`` or ``(batch,)``, each in ``0 .. num_classes - 1`` (with ``null``, also
    ``num_classes``, the reserved unconditional class). Returns ``(batch,)`` int64.
    ``num_classes=None`` (an unconditional model) refuses every label."""
    if num_classes is None:
        raise InputValueError(f"{what}={y!r} given, but the model is unconditional (it has no classes); "
                              "train one with --conditional (num_classes=...) to use labels")
    if isinstance(y, torch.Tensor):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise InputTypeError(f"{what} must be an int or a tensor of integer class labels, got dtype "
                                 f"{y.dtype}")
        if y.dim() > 1 or (y.dim() == 1 and y.shape[0] != batch):
            raise InputValueError(f"{what} has shape {tuple(y.shape)}; expected an int, a 0-d tensor "
                                  f"or shape ({batch},) for a batch of {batch}")
        labels = y.reshape(-1).to(torch.long)
    elif isinstance(y, int) and not isinstance(y, bool):
        labels = torch.tensor([y])
    else:
        raise InputTypeError(f"{what} must be an int or a tensor of integer class labels, got {y!r} "
                             f"({type(y).__name__})")
    top = num_classes if null else num_classes - 1
    bad = (labels < 0) | (labels > top)
    if bool(bad.any()):
        allowed = f"0..{top}" + (f" ({num_classes} = the null class)" if null else "")
        raise InputValueError(f"class {what}={int(labels[bad][0])} is out of range; allowed: {allowed} "
                              f"(num_classes={num_classes})")
    return labels.expand(batch) if labels.numel() == 1 else labels


def check_observation(x: Any, mask: Any, what: str = "x_known") -> tuple[torch.Tensor, torch.Tensor]:
    """An observed batch ``x`` ``(B, *shape)`` and its 0/1 ``mask`` (1 = observed), of shape
    ``shape`` (one mask for every example) or ``(B, *shape)`` (one per example); ``bool`` masks
    are taken too. Returns ``(x, observed)`` with ``observed`` a ``bool`` tensor of ``x``'s shape
    on ``x``'s device.

    Every example must observe at least one coordinate and hide at least one (all 0: nothing to
    condition on; all 1: nothing to fill in). Observed values must be finite; unobserved ones are
    ignored and may be NaN.
    """
    check_tensor(what, x, finite=False)
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise InputValueError(f"{what} must have shape (batch, ...) with at least one example, got "
                              f"{tuple(x.shape)}; add a batch dimension (e.g. {what}[None])")
    shape, batch = tuple(x.shape[1:]), x.shape[0]
    allowed = f"{shape} (one mask for every example) or {(batch, *shape)} (one per example)"
    if not isinstance(mask, torch.Tensor):
        raise InputTypeError(f"mask must be a torch.Tensor of 0/1 (1 = observed) of shape {allowed}, "
                             f"got {type(mask).__name__}")
    if tuple(mask.shape) not in (shape, (batch, *shape)):
        raise InputValueError(f"mask has shape {tuple(mask.shape)}, expected {allowed}, the shape of "
                              f"{what}'s examples")
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        odd = mask[(mask != 0) & (mask != 1)] if not mask.is_complex() else mask.flatten()
        bad = ", ".join(str(v) for v in odd.unique().tolist()[:5])
        raise InputValueError(f"mask must hold only 0 and 1 (1 = observed), got {bad}")
    observed = (mask == 1).to(x.device).expand(x.shape)
    per_example = observed.reshape(batch, -1)
    for empty, says, advice in ((~per_example.any(1), "observes no coordinate (all 0)",
                                 "nothing to condition on; observe at least one coordinate (for "
                                 "unconditional samples use sdediff.sample)"),
                                (per_example.all(1), "observes every coordinate (all 1)",
                                 "nothing to fill in; leave at least one coordinate unobserved")):
        if bool(empty.any()):
            which = "" if mask.dim() == len(shape) else f" of example {int(empty.nonzero()[0])}"
            raise InputValueError(f"mask{which} {says}: {advice}")
    bad = int((observed & ~torch.isfinite(x)).sum())
    if bad:
        raise InputValueError(f"{what} has {bad} non-finite observed value(s) (NaN or inf); observed "
                              "values must be finite (unobserved ones are ignored and may be NaN)")
    return x, observed

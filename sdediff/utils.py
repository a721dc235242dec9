"""Small tensor helpers shared by every module (one broadcasting rule, one time conversion)."""

from __future__ import annotations

import torch


def as_time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` as a floating tensor: floats become float64 (coefficients are computed in float64)."""
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.float64)
    device = like.device if like is not None else None
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def expand_like(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample coefficient (scalar or shape ``(B,)``) against ``x`` of shape ``(B, ...)``.

    The coefficient is cast to ``x``'s dtype and device, and trailing singleton dimensions are
    appended, so ``expand_like(alpha, x) * x`` works for points ``(B, D)`` and images
    ``(B, C, H, W)`` alike.
    """
    coef = torch.as_tensor(coef).to(dtype=x.dtype, device=x.device)
    if coef.dim() == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


def scalar_time(t) -> float | None:
    """``t`` as a Python float when it is one time for the whole batch, else ``None``.

    One time is a Python number, or a 0-d or 1-element 1-d tensor on the CPU that needs no
    gradient (a sampler's ``ts[i]``). Reading it costs no tensor operation, and its float64 value
    is exact for every floating dtype. A time on an accelerator (reading it would wait for the
    device), one that needs a gradient (the graph would be cut), or ``(B,)`` per-sample times
    give ``None``: those keep the tensor path of :func:`batch_times`.
    """
    if isinstance(t, torch.Tensor):
        if t.numel() != 1 or t.dim() > 1 or t.requires_grad or t.is_complex() or not t.is_cpu:
            return None
        return float(t)
    if isinstance(t, (int, float)):
        return float(t)
    return None


def batch_times(t, x: torch.Tensor) -> torch.Tensor:
    """Times of shape ``(B,)`` for a batch ``x``: a scalar ``t`` is repeated, a ``(B,)`` one kept."""
    t = as_time(t, like=x).to(x.device)
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(()).expand(x.shape[0])
    return t

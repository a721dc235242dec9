"""Time embeddings: the transformer sinusoid of continuous time, then a small MLP.

Every network in :mod:`sdediff.nets` sees time only through :func:`sinusoidal_embedding`, so the
scale that maps continuous ``t`` to the sinusoid's argument lives here and nowhere else.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import (
    InputValueError,
    check_batch_times,
    check_float,
    check_int,
    check_labels,
    check_shape,
)
from ..utils import batch_times

TIME_SCALE = 1000.0
"""Continuous time ``t`` in ``[0, 1]`` is multiplied by this before the sinusoid.

The DDPM positional embedding (Ho et al. 2020) is applied to integer steps ``0 .. 999``; scaling
``t`` by 1000 gives the same range of phases, so the frequencies tuned for DDPM (``max_period =
10000``) resolve neighbouring steps here too. With ``t`` fed unscaled, every sinusoid but the
fastest would be nearly constant over ``[0, 1]`` and the network could hardly tell times apart.
This is the one place the scale lives: callers pass continuous ``t``, never ``999 * t``.
"""


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoid of ``s = TIME_SCALE * t``.

    With ``half = dim // 2`` and frequencies ``w_k = max_period ** (-k / half)``,
    ``k = 0 .. half - 1`` (from 1 down to nearly ``1 / max_period``)::

        emb(t) = [cos(s w_0), ..., cos(s w_{half-1}), sin(s w_0), ..., sin(s w_{half-1})]

    and one zero column appended when ``dim`` is odd.

    ``t``: shape ``(B,)``. Returns shape ``(B, dim)``, computed in at least float32 (a bfloat16
    phase of ``1000 t`` would be off by several radians), in float64 when ``t`` is float64.
    """
    check_int("dim", dim, minimum=2)
    check_float("max_period", max_period, 1.0, low_open=True)
    if not isinstance(t, torch.Tensor) or t.dim() != 1:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputValueError(f"t must be a tensor of shape (batch,), got {got}")
    dtype = torch.promote_types(t.dtype, torch.float32)
    half = dim // 2
    exponent = torch.arange(half, dtype=dtype, device=t.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    phase = (TIME_SCALE * t.to(dtype))[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """``t -> Linear(SiLU(Linear(sinusoid(t))))``, the DDPM time embedding.

    ``TimeEmbedding(sinusoid_dim, out_dim)``: :func:`sinusoidal_embedding` of width
    ``sinusoid_dim``, then ``Linear(sinusoid_dim, out_dim)``, SiLU, ``Linear(out_dim, out_dim)``.
    ``forward(t)``: ``t`` of shape ``(B,)`` -> ``(B, out_dim)`` in the layers' dtype.
    """

    def __init__(self, sinusoid_dim: int, out_dim: int, max_period: float = 10000.0):
        super().__init__()
        self.sinusoid_dim = check_int("sinusoid_dim", sinusoid_dim, minimum=2)
        self.out_dim = check_int("out_dim", out_dim, minimum=1)
        self.max_period = check_float("max_period", max_period, 1.0, low_open=True)
        self.mlp = nn.Sequential(
            nn.Linear(sinusoid_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.sinusoid_dim, self.max_period)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Module):
    """A learned vector per class plus one for the null class (classifier-free guidance).

    ``ClassEmbedding(num_classes, dim)``: ``num_classes + 1`` rows of width ``dim``; row
    ``num_classes`` is the null class ``∅`` (its own learned vector, Ho & Salimans 2022), which
    ``y=None`` selects for the whole batch. The table starts at zero, so an untrained conditional
    network behaves as the unconditional one; training moves each class away from it.
    ``forward(y, batch)``: ``y`` ``None``, an int or ``(B,)`` labels in ``0 .. num_classes``
    (checked) -> ``(B, dim)``. A network adds it to its time embedding.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y, batch: int) -> torch.Tensor:
        device = self.table.weight.device
        if y is None:
            return self.table.weight[self.num_classes].expand(batch, -1)
        labels = check_labels(y, self.num_classes, batch, null=True)
        return self.table(labels.to(device))


def class_embedding(num_classes: int | None, dim: int) -> ClassEmbedding | None:
    """The class embedding of a network with ``num_classes`` classes, or ``None`` (unconditional)."""
    return None if num_classes is None else ClassEmbedding(num_classes, dim)


def embed(time_embed: nn.Module, class_embed: ClassEmbedding | None, t: torch.Tensor, y
          ) -> torch.Tensor:
    """The time embedding of ``t`` ``(B,)``, plus ``y``'s class embedding for a conditional
    network. ``y`` given to an unconditional network (``class_embed`` ``None``) is refused."""
    emb = time_embed(t)
    if class_embed is None:
        if y is not None:
            check_labels(y, None, t.shape[0])
        return emb
    return emb + class_embed(y, t.shape[0]).to(emb.dtype)


def check_net_input(x: torch.Tensor, t, sample_shape: tuple[int, ...]) -> torch.Tensor:
    """Check ``x`` against ``(B, *sample_shape)``; return ``t`` as shape ``(B,)`` on ``x``'s device.

    A scalar ``t`` (or one of shape ``(1,)``) is repeated over the batch.
    """
    batch = x.shape[0] if x.dim() > 0 else 1
    check_shape("x", x, (batch, *sample_shape))
    t = batch_times(t, x)
    check_batch_times(t, batch)
    return t

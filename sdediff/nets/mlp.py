"""Residual MLP for low-dimensional (toy) data such as the 2-D sets in :mod:`sdediff.data`."""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_int
from .embedding import TimeEmbedding, check_net_input, class_embedding, embed


class MLP(nn.Module):
    """Time-conditioned residual MLP: ``(x, t[, y]) -> output of x's shape``.

    ``MLP(data_dim=2, hidden=256, depth=4, emb_dim=128, num_classes=None)``::

        e   = TimeEmbedding(emb_dim, emb_dim)(t)                 # (B, emb_dim)
        e   = e + ClassEmbedding(num_classes, emb_dim)(y)        # conditional only
        h   = Linear(data_dim, hidden)(x)                        # (B, hidden)
        h   = h + Linear(SiLU(LayerNorm(h) + Linear_i(e)))      # depth times, i = 1 .. depth
        out = Linear(hidden, data_dim)(SiLU(LayerNorm(h)))      # (B, data_dim), zero-initialised

    ``forward(x, t, y=None)``: ``x`` of shape ``(B, data_dim)``, ``t`` of shape ``(B,)`` (or a
    scalar), ``y`` (conditional networks only) ``None`` (the null class), an int or ``(B,)``
    labels in ``0 .. num_classes`` (``num_classes`` = null); returns ``(B, data_dim)``. The
    output layer starts at zero, so an untrained eps-prediction is 0 and the first loss is the
    noise variance rather than a random network's.

    One hidden-by-hidden matrix per block and the time projections of all blocks fused in one
    ``Linear`` keep a training step cheap on a CPU (few, large matrix products).
    """

    def __init__(self, data_dim: int = 2, hidden: int = 256, depth: int = 4, emb_dim: int = 128,
                 num_classes: int | None = None):
        super().__init__()
        self.data_dim = check_int("data_dim", data_dim, minimum=1)
        self.hidden = check_int("hidden", hidden, minimum=1)
        self.depth = check_int("depth", depth, minimum=1)
        self.emb_dim = check_int("emb_dim", emb_dim, minimum=2)
        self.time_embed = TimeEmbedding(emb_dim, emb_dim)
        self.class_embed = class_embedding(num_classes, emb_dim)
        self.num_classes = num_classes
        # Each block's time bias comes from its own slice of one fused projection.
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, depth * hidden))
        self.inp = nn.Linear(data_dim, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.linears = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, data_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable; :func:`sdediff.nets.build_net` inverts it."""
        config = {"name": "mlp", "data_dim": self.data_dim, "hidden": self.hidden,
                  "depth": self.depth, "emb_dim": self.emb_dim}
        return config if self.num_classes is None else config | {"num_classes": self.num_classes}

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        t = check_net_input(x, t, (self.data_dim,))
        emb = embed(self.time_embed, self.class_embed, t, y)
        biases = self.time_proj(emb).chunk(self.depth, dim=1)
        h = self.inp(x)
        for norm, linear, bias in zip(self.norms, self.linears, biases, strict=True):
            h = h + linear(nn.functional.silu(norm(h) + bias))
        return self.out(nn.functional.silu(self.out_norm(h)))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "name")

"""Noise-conditional classifier ``p_t(y | x_t)`` for classifier guidance (Dhariwal & Nichol 2021).

:class:`NoisyClassifier` maps a noisy example and its time to class logits, ``(x, t) -> (B, C)``,
which is what :meth:`ScoreModel.guide <sdediff.score.ScoreModel.guide>` takes. It is trained by
cross-entropy on ``x_t`` drawn from the same forward process as the score model, ``t`` uniform
(:func:`~sdediff.losses.classifier_loss`; :class:`~sdediff.train.Trainer` picks that objective
for a classifier). A classifier trained on clean data only gives useless gradients at large
``sigma``: the time input is what makes it usable along the whole reverse path.

Its checkpoints record the prediction ``"logits"`` (:data:`sdediff.losses.LOGITS`; a score
network records ``eps``, ``x0``, ``v`` or ``score``), which is how
:func:`~sdediff.checkpoint.load_classifier` and :func:`~sdediff.checkpoint.load_model` tell the
two apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import InputValueError, check_float, check_int
from .embedding import TimeEmbedding, check_net_input
from .mlp import MLP
from .unet import AttentionBlock, Downsample, ResBlock, _int_tuple, _Stage

#: Defaults per kind of input. The image ones fit the 8x8 digits: the digits U-Net's 32 channels
#: and two levels, one residual block per level (two gave the same held-out accuracy, 0.997 against
#: 0.994 at t = 0.01 and 0.69 against 0.71 at t = 0.3, at twice the training time).
POINT_DEFAULTS = {"width": 256, "depth": 4, "emb_dim": 128}
IMAGE_DEFAULTS = {"width": 32, "depth": 1, "channel_mult": (1, 2), "dropout": 0.0, "num_groups": 8}
_IMAGE_ONLY = ("channel_mult", "dropout", "num_groups")


class NoisyClassifier(nn.Module):
    """Time-conditioned classifier ``(x, t) -> logits (B, num_classes)`` of ``p_t(y | x)``.

    ``NoisyClassifier(shape, num_classes, width=None, depth=None, emb_dim=None,
    channel_mult=None, dropout=None, num_groups=None)``; ``shape`` is one example's shape, and
    picks the trunk.

    Points, ``shape = (D,)`` (``width`` 256, ``depth`` 4, ``emb_dim`` 128 by default): the residual
    trunk of :class:`~sdediff.nets.MLP`, its output layer replaced by the class head::

        e      = TimeEmbedding(emb_dim, emb_dim)(t)                   # (B, emb_dim)
        h      = Linear(D, width)(x)                                  # (B, width)
        h      = h + Linear(SiLU(LayerNorm(h) + Linear_i(e)))         # depth times
        logits = Linear(width, num_classes)(SiLU(LayerNorm(h)))      # (B, num_classes)

    Images, ``shape = (C, S, S)`` (``width`` 32, ``depth`` 1, ``channel_mult`` (1, 2),
    ``dropout`` 0, ``num_groups`` 8, ``emb_dim`` ``4 * width`` by default): the encoder half of
    :class:`~sdediff.nets.UNet` (its ``ResBlock``, ``Downsample`` and ``AttentionBlock``), as
    Dhariwal & Nichol's classifier, with global average pooling instead of their attention
    pooling. With ``L = len(channel_mult)`` and ``C_l = width * channel_mult[l]``::

        e      = TimeEmbedding(width, emb_dim)(t)                     # (B, emb_dim)
        h      = Conv3x3(C -> width)(x)                               # (B, C_0, S, S)
        level l = 0 .. L-1 at resolution S / 2^l:
                 depth x ResBlock(-> C_l, e), then Downsample except after the last level
        middle : ResBlock, AttentionBlock, ResBlock at S / 2^(L-1)
        logits = Linear(C_{L-1}, num_classes)(mean_HW SiLU(GroupNorm(h)))   # (B, num_classes)

    The head starts at zero, so an untrained classifier is uniform (loss ``log num_classes``).
    ``forward(x, t)``: ``x`` of shape ``(B, *shape)`` in any float dtype (cast to the weights'
    dtype; autograd carries ``grad_x`` back to ``x``'s), ``t`` of shape ``(B,)`` or a scalar;
    returns ``(B, num_classes)`` logits in the weights' dtype.
    """

    def __init__(self, shape: Sequence[int], num_classes: int, width: int | None = None,
                 depth: int | None = None, emb_dim: int | None = None,
                 channel_mult: Sequence[int] | None = None, dropout: float | None = None,
                 num_groups: int | None = None):
        super().__init__()
        shape = _int_tuple("shape", shape, minimum=1, nonempty=True)
        if len(shape) not in (1, 3):
            raise InputValueError(f"shape must be (D,) for points or (C, H, W) for images, got "
                                  f"{shape}")
        self.shape = shape
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        if len(shape) == 1:
            given = [k for k, v in zip(_IMAGE_ONLY, (channel_mult, dropout, num_groups),
                                       strict=True) if v is not None]
            if given:
                raise InputValueError(f"option {', '.join(given)} is for image classifiers (shape "
                                      f"(C, H, W)) only, and shape {shape} is points; leave it out")
            d = POINT_DEFAULTS
            self.width = check_int("width", d["width"] if width is None else width, minimum=1)
            self.depth = check_int("depth", d["depth"] if depth is None else depth, minimum=1)
            self.emb_dim = check_int("emb_dim", d["emb_dim"] if emb_dim is None else emb_dim,
                                     minimum=2)
            self.trunk = MLP(data_dim=shape[0], hidden=self.width, depth=self.depth,
                             emb_dim=self.emb_dim)
            self.trunk.out = _zero_linear(self.width, self.num_classes)
        else:
            self._build_encoder(shape, width, depth, emb_dim, channel_mult, dropout, num_groups)

    def _build_encoder(self, shape, width, depth, emb_dim, channel_mult, dropout, num_groups):
        d = IMAGE_DEFAULTS
        in_channels, height, size = shape
        if height != size:
            raise InputValueError(f"image classifiers take square images, got shape {shape}")
        self.width = check_int("width", d["width"] if width is None else width, minimum=1)
        self.depth = check_int("depth", d["depth"] if depth is None else depth, minimum=1)
        self.emb_dim = 4 * self.width if emb_dim is None else check_int("emb_dim", emb_dim, minimum=1)
        self.channel_mult = _int_tuple("channel_mult", d["channel_mult"] if channel_mult is None
                                       else channel_mult, minimum=1, nonempty=True)
        self.dropout = check_float("dropout", d["dropout"] if dropout is None else dropout,
                                   0.0, 1.0, high_open=True)
        self.num_groups = check_int("num_groups", d["num_groups"] if num_groups is None
                                    else num_groups, minimum=1)
        factor = 2 ** (len(self.channel_mult) - 1)
        if size % factor:
            raise InputValueError(f"image size {size} is not divisible by 2 ** (len(channel_mult) - 1) "
                                  f"= {factor} (channel_mult={list(self.channel_mult)}); allowed: a "
                                  f"multiple of {factor}, or fewer levels")
        if self.width % self.num_groups:
            raise InputValueError(f"width={self.width} is not divisible by num_groups={self.num_groups} "
                                  f"(GroupNorm splits the channels into equal groups); allowed: a "
                                  f"multiple of {self.num_groups}")

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, self.emb_dim, self.dropout, self.num_groups)

        self.time_embed = TimeEmbedding(self.width, self.emb_dim)
        self.stem = nn.Conv2d(in_channels, self.width, 3, padding=1)
        self.down = nn.ModuleList()
        ch = self.width
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.depth):
                self.down.append(_Stage([res(ch, self.width * mult)]))
                ch = self.width * mult
            if level < len(self.channel_mult) - 1:
                self.down.append(_Stage([Downsample(ch)]))
        self.middle = _Stage([res(ch, ch), AttentionBlock(ch, 1, self.num_groups), res(ch, ch)])
        self.out_norm = nn.GroupNorm(self.num_groups, ch)
        self.head = _zero_linear(ch, self.num_classes)

    @property
    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable; :func:`sdediff.nets.build_net` inverts it."""
        config = {"name": "noisy_classifier", "shape": list(self.shape),
                  "num_classes": self.num_classes, "width": self.width, "depth": self.depth,
                  "emb_dim": self.emb_dim}
        if len(self.shape) == 3:
            config |= {"channel_mult": list(self.channel_mult), "dropout": self.dropout,
                       "num_groups": self.num_groups}
        return config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = check_net_input(x, t, self.shape)
        if len(self.shape) == 1:
            return self.trunk(x.to(self.trunk.inp.weight.dtype), t)
        emb = self.time_embed(t)
        h = self.stem(x.to(self.stem.weight.dtype))
        for stage in self.down:
            h = stage(h, emb)
        h = self.middle(h, emb)
        return self.head(F.silu(self.out_norm(h)).mean(dim=(2, 3)))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "name")


def _zero_linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def is_classifier(net) -> bool:
    """Whether ``net`` (or the module inside a DDP or ``torch.compile`` wrapper) is a
    :class:`NoisyClassifier`: a network trained by cross-entropy rather than score matching."""
    return any(isinstance(candidate, NoisyClassifier)
               for candidate in (net, getattr(net, "module", None), getattr(net, "_orig_mod", None)))

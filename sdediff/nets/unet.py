"""DDPM-style U-Net for images (Ho et al. 2020, with Nichol & Dhariwal's 2021 refinements).

Architecture, for ``L = len(channel_mult)`` levels and ``C_l = base_channels * channel_mult[l]``::

    e = TimeEmbedding(base_channels, emb_dim)(t)                          # (B, emb_dim)
    e = e + ClassEmbedding(num_classes, emb_dim)(y)                       # conditional only
    h = Conv3x3(in_channels -> base_channels)(x)                          # (B, C_0, S, S)
    down, level l = 0 .. L-1 at resolution S / 2^l:
        num_res_blocks x [ResBlock(-> C_l, e), Attention if resolution in attention_resolutions]
        Downsample (3x3 conv, stride 2), except after the last level
    middle, at S / 2^(L-1): ResBlock, Attention, ResBlock
    up, level l = L-1 .. 0, mirror of down:
        (num_res_blocks + 1) x [concat skip, ResBlock(-> C_l, e), Attention if listed]
        Upsample (nearest x2, then 3x3 conv), except after level 0
    out = Conv3x3(SiLU(GroupNorm(h)))                                      # (B, in_channels, S, S)

Every activation of the down path (the stem, each block, each downsample) is kept and
concatenated, last in first out, to the input of one up-path ResBlock.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import InputTypeError, InputValueError, check_float, check_int
from .embedding import TimeEmbedding, check_net_input, class_embedding, embed


def _zero(module: nn.Module) -> nn.Module:
    # A block whose last layer starts at zero starts as the identity (its residual branch adds
    # nothing), which is the DDPM initialisation and keeps a deep U-Net stable at step 0.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with the time embedding as a per-channel scale and shift.

    ``h = Conv3x3(SiLU(GroupNorm(x)))``;
    ``h = Conv3x3(Dropout(SiLU(GroupNorm(h) * (1 + scale) + shift)))`` with
    ``(scale, shift) = Linear(SiLU(e))`` (Nichol & Dhariwal's scale-shift norm);
    returns ``skip(x) + h``, ``skip`` a 1x1 conv when the channel count changes.
    ``x``: ``(B, in_ch, H, W)``, ``e``: ``(B, emb_dim)`` -> ``(B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(num_groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H * W`` spatial positions, with a residual.

    ``q, k, v = Conv1x1(GroupNorm(x))``, split into ``num_heads`` heads of ``C / num_heads``
    channels; ``softmax(q k^T / sqrt(d)) v`` by ``scaled_dot_product_attention``; a zero-initialised
    1x1 output conv; returns ``x + out``. ``x``: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, num_heads: int, num_groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> 3 x (B, heads, H*W, C/heads): positions are the attention sequence.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve ``H`` and ``W`` with a stride-2 3x3 conv (channels kept)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double ``H`` and ``W`` by nearest-neighbour repetition, then a 3x3 conv (no checkerboard
    artefacts, unlike a transposed conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class _Stage(nn.ModuleList):
    """Layers applied in order; only the residual blocks receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """DDPM-style U-Net ``(x, t[, y]) -> output of x's shape`` (see the module docstring).

    ``forward(x, t, y=None)``: ``x`` of shape ``(B, in_channels, image_size, image_size)``, ``t``
    of shape ``(B,)`` (or a scalar), ``y`` (conditional networks, ``num_classes`` set) ``None``
    (the null class), an int or ``(B,)`` labels in ``0 .. num_classes`` (``num_classes`` = null);
    returns ``x``'s shape. The output conv starts at zero, so the
    untrained network predicts 0.

    Arguments: ``channel_mult[l]`` multiplies ``base_channels`` at level ``l`` (each level after
    the first halves the resolution, so ``image_size`` must be divisible by
    ``2 ** (len(channel_mult) - 1)``); ``attention_resolutions`` lists the feature-map sizes in
    pixels (4 = the 4x4 maps) that get self-attention after each residual block, besides the one
    in the middle block, and each must be a size this U-Net has (a size that no level has raises
    rather than silently giving no attention, so the default ``(4,)`` fits 8x8 images with two
    levels; pass e.g. ``(16,)`` or ``(8,)`` for larger ones); ``num_groups`` is GroupNorm's
    group count and must divide ``base_channels``; ``emb_dim`` defaults to
    ``4 * base_channels``; ``num_heads`` must divide the channel count at each attention
    resolution.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (4,),
        dropout: float = 0.1,
        num_groups: int = 8,
        emb_dim: int | None = None,
        num_heads: int = 1,
        num_classes: int | None = None,
    ):
        super().__init__()
        check_int("in_channels", in_channels, minimum=1)
        check_int("image_size", image_size, minimum=1)
        check_int("base_channels", base_channels, minimum=1)
        channel_mult = _int_tuple("channel_mult", channel_mult, minimum=1, nonempty=True)
        check_int("num_res_blocks", num_res_blocks, minimum=1)
        attention_resolutions = _int_tuple("attention_resolutions", attention_resolutions,
                                           minimum=1)
        check_float("dropout", dropout, 0.0, 1.0, high_open=True)
        check_int("num_groups", num_groups, minimum=1)
        emb_dim = 4 * base_channels if emb_dim is None else check_int("emb_dim", emb_dim,
                                                                      minimum=1)
        check_int("num_heads", num_heads, minimum=1)

        factor = 2 ** (len(channel_mult) - 1)
        if image_size % factor:
            raise InputValueError(
                f"image_size={image_size} is not divisible by 2 ** (len(channel_mult) - 1) = "
                f"{factor} (channel_mult={list(channel_mult)} has {len(channel_mult)} levels); "
                f"allowed: a multiple of {factor}, or fewer levels"
            )
        resolutions = [image_size // 2**level for level in range(len(channel_mult))]
        unused = [r for r in attention_resolutions if r not in resolutions]
        if unused:
            raise InputValueError(
                f"attention_resolutions has {unused}, which no level has; allowed: "
                f"{', '.join(map(str, resolutions))} (the feature-map sizes of this U-Net)"
            )
        # Every level's channel count is a multiple of base_channels, so this one check suffices.
        if base_channels % num_groups:
            raise InputValueError(
                f"base_channels={base_channels} is not divisible by num_groups={num_groups} "
                f"(GroupNorm splits the channels into equal groups); allowed: a multiple of "
                f"{num_groups}, or a num_groups dividing {base_channels}"
            )
        channels = [base_channels * m for m in channel_mult]
        attention_channels = {ch for ch, r in zip(channels, resolutions, strict=True)
                              if r in attention_resolutions} | {channels[-1]}
        for ch in sorted(attention_channels):
            if ch % num_heads:
                raise InputValueError(
                    f"num_heads={num_heads} does not divide {ch}, the channel count at an "
                    f"attention resolution; allowed: a divisor of {ch}"
                )

        self.in_channels = in_channels
        self.image_size = image_size
        self.base_channels = base_channels
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.num_groups = num_groups
        self.emb_dim = emb_dim
        self.num_heads = num_heads

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, num_groups)

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, num_groups)

        self.time_embed = TimeEmbedding(base_channels, emb_dim)
        self.class_embed = class_embedding(num_classes, emb_dim)
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        # Down path: one stage per kept activation; skip_channels mirrors what forward stores.
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, (out_ch, size) in enumerate(zip(channels, resolutions, strict=True)):
            for _ in range(num_res_blocks):
                stage = _Stage([res(ch, out_ch)])
                ch = out_ch
                if size in attention_resolutions:
                    stage.append(attn(ch))
                self.down.append(stage)
                skip_channels.append(ch)
            if level < len(channels) - 1:
                self.down.append(_Stage([Downsample(ch)]))
                skip_channels.append(ch)

        self.middle = _Stage([res(ch, ch), attn(ch), res(ch, ch)])

        # Up path: each stage eats one skip (concatenated), the last of a level upsamples.
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            out_ch, size = channels[level], resolutions[level]
            for block in range(num_res_blocks + 1):
                stage = _Stage([res(ch + skip_channels.pop(), out_ch)])
                ch = out_ch
                if size in attention_resolutions:
                    stage.append(attn(ch))
                if level > 0 and block == num_res_blocks:
                    stage.append(Upsample(ch))
                self.up.append(stage)

        self.out = nn.Sequential(
            nn.GroupNorm(num_groups, ch), nn.SiLU(),
            _zero(nn.Conv2d(ch, in_channels, 3, padding=1)),
        )

    @property
    def config(self) -> dict:
        """Constructor arguments, JSON-serialisable; :func:`sdediff.nets.build_net` inverts it."""
        config = {
            "name": "unet", "in_channels": self.in_channels, "image_size": self.image_size,
            "base_channels": self.base_channels, "channel_mult": list(self.channel_mult),
            "num_res_blocks": self.num_res_blocks,
            "attention_resolutions": list(self.attention_resolutions), "dropout": self.dropout,
            "num_groups": self.num_groups, "emb_dim": self.emb_dim, "num_heads": self.num_heads,
        }
        return config if self.num_classes is None else config | {"num_classes": self.num_classes}

    def forward(self, x: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        t = check_net_input(x, t, (self.in_channels, self.image_size, self.image_size))
        emb = embed(self.time_embed, self.class_embed, t, y)
        h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items() if k != "name")


def _int_tuple(what: str, value, minimum: int, nonempty: bool = False) -> tuple[int, ...]:
    """A sequence of integers >= ``minimum`` (a JSON list or a tuple) as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InputTypeError(f"{what} must be a sequence of integers, got {value!r}")
    if nonempty and not value:
        raise InputValueError(f"{what} must have at least one entry, got {list(value)}")
    return tuple(check_int(f"{what}[{i}]", v, minimum=minimum) for i, v in enumerate(value))

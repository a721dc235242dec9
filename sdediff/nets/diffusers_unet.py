"""diffusers' ``UNet2DModel`` as an sdediff network ``net(x, t)`` with continuous ``t``.

A diffusers U-Net takes a (fractional) timestep index of its training chain, not ``t``: the
wrapper feeds it :func:`~sdediff.sde.diffusers_timestep` ``(t) = t M - 1`` (the one home of that
map) as a float32 tensor of shape ``(B,)`` (a Python float would be truncated by the U-Net), and
runs it in its own dtype, casting its output back to ``x``'s. A U-Net trained with a learned
variance (``out_channels = 2 C``, improved DDPM) predicts ``eps`` in its first ``C`` channels;
only those are returned.

Built from a config (``{"name": "diffusers_unet", "unet": UNet2DModel config,
"num_train_timesteps": M}``, how sdediff checkpoints rebuild it) or around an existing
``UNet2DModel`` (:meth:`DiffusersUNet.wrap`, how a pipeline folder is loaded). diffusers is
imported only here, when such a network is made.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import InputValueError, check_int
from ..sde import diffusers_timestep

#: How to install diffusers (the ``interop`` extra), named in every error that needs it.
INTEROP_EXTRA = "pip install 'sdediff[interop]' (or pip install diffusers)"


def import_diffusers(what: str):
    """The diffusers module, or a one-line error naming ``what`` needed it and the extra."""
    try:
        import diffusers
    except ImportError as err:
        raise InputValueError(f"{what} needs diffusers, which is not installed: "
                              f"{INTEROP_EXTRA}") from err
    return diffusers


def default_unet_config(shape) -> dict:
    """A small ``UNet2DModel`` for images of ``shape = (C, H, W)`` (the 8x8 digits: 0.5 M
    parameters): two resolutions, attention at the lower one, one residual block per level."""
    channels, height, width = (int(n) for n in shape)
    if height != width or height % 2:
        raise InputValueError(f"--model diffusers-unet needs square images of even size, got "
                              f"{height}x{width}")
    return {"sample_size": height, "in_channels": channels, "out_channels": channels,
            "layers_per_block": 1, "block_out_channels": [32, 64],
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8}


class DiffusersUNet(nn.Module):
    """``net(x, t)``: a diffusers ``UNet2DModel`` of an ``M``-step chain at continuous time ``t``.

    ``x``: ``(B, C, H, W)``, any float dtype; ``t``: ``(B,)``. Returns ``(B, C, H, W)``.
    """

    def __init__(self, unet: dict, num_train_timesteps: int = 1000, _module=None):
        super().__init__()
        self.num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps, minimum=2)
        if _module is None:
            diffusers = import_diffusers("a diffusers U-Net")
            _module = diffusers.UNet2DModel.from_config(dict(unet))
        self.unet = _module
        #: the public part of the U-Net's config (diffusers' ``_``-keys dropped), JSON-serialisable
        self.config = {"name": "diffusers_unet",
                       "unet": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in dict(_module.config).items() if not k.startswith("_")},
                       "num_train_timesteps": self.num_train_timesteps}
        self.channels = int(_module.config.in_channels)
        out = int(_module.config.out_channels)
        if out not in (self.channels, 2 * self.channels):
            raise InputValueError(f"the U-Net has {self.channels} input and {out} output channels; "
                                  "supported: equal, or twice as many out (a learned variance)")

    @classmethod
    def wrap(cls, unet, num_train_timesteps: int) -> DiffusersUNet:
        """Around an existing ``UNet2DModel`` (its weights are shared, not copied)."""
        return cls(dict(unet.config), num_train_timesteps, _module=unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        timestep = diffusers_timestep(t, self.num_train_timesteps).to(torch.float32)
        out = self.unet(x.to(self.unet.dtype), timestep.to(x.device)).sample
        return out[:, :self.channels].to(x.dtype)

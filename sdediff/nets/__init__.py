"""Score networks ``net(x, t) -> tensor of x's shape``, and their rebuild from a config.

``MLP`` serves low-dimensional data, ``UNet`` images; ``DiffusersUNet`` is diffusers'
``UNet2DModel`` (optional: needs diffusers). ``NoisyClassifier`` is the odd one out: class logits
``net(x, t) -> (B, num_classes)`` of ``p_t(y | x)``, for classifier guidance. Each records its
constructor arguments in ``net.config`` (JSON-serialisable, with a ``"name"``), and
:func:`build_net` turns such a dict back into the network, which is how a checkpoint is reloaded.
"""

from __future__ import annotations

import inspect

from torch import nn

from ..checks import check_choice, check_options
from .classifier import NoisyClassifier
from .diffusers_unet import DiffusersUNet
from .embedding import TIME_SCALE, ClassEmbedding, TimeEmbedding, sinusoidal_embedding
from .mlp import MLP
from .unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "unet": UNet, "diffusers_unet": DiffusersUNet,
                                    "noisy_classifier": NoisyClassifier}

__all__ = ["ClassEmbedding", "DiffusersUNet", "MLP", "NETS", "NoisyClassifier", "TIME_SCALE", "TimeEmbedding",
           "UNet", "build_net", "sinusoidal_embedding"]


def build_net(config: dict) -> nn.Module:
    """The network described by ``config`` (as written by ``net.config``).

    ``config["name"]`` picks the class in :data:`NETS`; the other keys are its constructor
    arguments. An unknown name or argument raises ``ValueError`` listing the allowed ones.
    """
    config = dict(config)
    name = check_choice("network", config.pop("name", None), NETS)
    cls = NETS[name]
    allowed = list(inspect.signature(cls).parameters)
    check_options(f"network {name!r}", config, allowed)
    return cls(**config)

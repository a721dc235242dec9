"""sdediff: score-based diffusion models through SDEs and ODEs.

Public API (see ``docs/`` and the design notes): forward processes, the one score interface,
samplers by name, denoising score matching and training.
"""

from . import samplers
from .checks import NumericalError
from .losses import dsm_loss
from .samplers import sample
from .score import PREDICTIONS, GaussianMixture, ScoreModel, convert_prediction
from .sde import SDES, VESDE, VPSDE, DDPMChain, ForwardProcess, SubVPSDE, sde_from_config
from .train import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "DDPMChain",
    "ForwardProcess",
    "GaussianMixture",
    "NumericalError",
    "PREDICTIONS",
    "SDES",
    "ScoreModel",
    "SubVPSDE",
    "TrainConfig",
    "Trainer",
    "VESDE",
    "VPSDE",
    "convert_prediction",
    "dsm_loss",
    "sample",
    "samplers",
    "sde_from_config",
]

"""sdediff: score-based diffusion models through SDEs and ODEs.

Public API (see ``docs/`` and the design notes): forward processes, the one score interface,
samplers by name, deterministic encoding and exact likelihood through the
probability-flow ODE, denoising score matching and training.
"""

from . import samplers
from .checkpoint import load_classifier, load_model
from .checks import AccuracyWarning, NumericalError
from .inpaint import inpaint
from .losses import dsm_loss
from .ode import bits_per_dim, decode, encode, interpolate, log_likelihood
from .samplers import sample
from .score import PREDICTIONS, GaussianMixture, ScoreModel, convert_prediction
from .sde import VESDE, VPSDE, DDPMChain, DiscreteVPSDE, ForwardProcess, SubVPSDE
from .streams import SampleSeeds
from .train import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "AccuracyWarning",
    "DDPMChain",
    "DiscreteVPSDE",
    "ForwardProcess",
    "GaussianMixture",
    "NumericalError",
    "PREDICTIONS",
    "SampleSeeds",
    "ScoreModel",
    "SubVPSDE",
    "TrainConfig",
    "Trainer",
    "VESDE",
    "VPSDE",
    "bits_per_dim",
    "convert_prediction",
    "decode",
    "dsm_loss",
    "encode",
    "inpaint",
    "interpolate",
    "load_classifier",
    "load_model",
    "log_likelihood",
    "sample",
    "samplers",
]

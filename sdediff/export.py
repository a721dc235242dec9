"""Models out: an sdediff model as a diffusers pipeline folder (the reverse of :mod:`sdediff.interop`).

A model exports when its network is a :class:`~sdediff.nets.DiffusersUNet` (a ``UNet2DModel``
fed the timestep ``t M - 1``) and its process a :class:`~sdediff.sde.DiscreteVPSDE` (a chain of
``M`` betas, ``abar_i = prod_{j <= i} (1 - beta_j)`` at chain index ``i``, that is at time
``t_i = (i + 1)/M``): that pair is exactly what diffusers calls a ``UNet2DModel`` plus a
scheduler config, so no weight or number is converted. Written (by diffusers'
``DDPMPipeline.save_pretrained``):

- ``model_index.json``: ``DDPMPipeline`` with a ``unet`` and a ``scheduler``;
- ``unet/config.json`` and ``unet/diffusion_pytorch_model.safetensors``: the U-Net's weights
  (the EMA copy when the model came from :func:`sdediff.load_model`);
- ``scheduler/scheduler_config.json``: a ``DDPMScheduler`` with the process's
  ``num_train_timesteps``, ``beta_schedule``, ``beta_start``, ``beta_end``, ``trained_betas``,
  ``steps_offset``, the prediction mapped back (``eps``, ``v``, ``x0`` -> ``epsilon``,
  ``v_prediction``, ``sample``) and ``clip_sample=False``: sdediff never clips the ``x0``
  prediction, so diffusers' default clip to ``[-1, 1]`` would change the samples.

The folder loads back with :func:`sdediff.load_model` (the same model) and with
``diffusers.DDPMPipeline.from_pretrained`` alone. diffusers' pipelines map images from
``[-1, 1]`` to ``[0, 1]`` on output: models trained on data in another range still export, but
their pipeline images are shifted accordingly.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .checks import InputValueError
from .interop import DIFFUSERS_PREDICTION_TYPES
from .nets.diffusers_unet import DiffusersUNet, import_diffusers
from .sde import DiscreteVPSDE


def check_exportable(model) -> None:
    """Refuse, in one line naming what the model has and what is needed, a model that no diffusers
    pipeline can hold: another network, another process, the ``score`` prediction, or a U-Net
    with learned-variance channels (sdediff trains only the ``eps`` half of those)."""
    net, sde = model.net, model.sde
    if not isinstance(net, DiffusersUNet):
        name = getattr(net, "config", {}).get("name", type(net).__name__)
        raise InputValueError(f"export needs a run trained with --model diffusers-unet (this run's "
                              f"network is {name!r})")
    if not isinstance(sde, DiscreteVPSDE):
        raise InputValueError(f"export needs a run trained with --sde discrete, diffusers' chain of "
                              f"betas (this run's process is {sde.config().get('name')!r})")
    if model.prediction not in DIFFUSERS_PREDICTION_TYPES:
        raise InputValueError(f"export needs a model predicting {', '.join(DIFFUSERS_PREDICTION_TYPES)} "
                              f"(this run predicts {model.prediction!r}, which diffusers cannot read)")
    out_channels = int(net.unet.config.out_channels)
    if out_channels != net.channels:
        raise InputValueError(f"export needs a U-Net with as many output as input channels (this one "
                              f"has {net.channels} in, {out_channels} out: a learned variance)")
    if net.num_train_timesteps != sde.num_train_timesteps:
        raise InputValueError(f"export needs the network's and the process's chains to agree (the "
                              f"network has {net.num_train_timesteps} steps, the process "
                              f"{sde.num_train_timesteps})")


def scheduler_config(sde: DiscreteVPSDE, prediction: str) -> dict:
    """The ``DDPMScheduler`` arguments that describe ``sde`` and ``prediction`` (see the module
    docstring for why ``clip_sample`` is off)."""
    return {"num_train_timesteps": sde.num_train_timesteps, "beta_schedule": sde.beta_schedule,
            "beta_start": sde.beta_start, "beta_end": sde.beta_end,
            "trained_betas": sde.trained_betas, "steps_offset": sde.steps_offset,
            "prediction_type": DIFFUSERS_PREDICTION_TYPES[prediction], "clip_sample": False}


def check_out_folder(out: Path) -> None:
    """``out`` may be new or an empty folder; anything else is refused, never overwritten."""
    if out.is_dir():
        if any(out.iterdir()):
            raise InputValueError(f"{str(out)!r} already exists and is not empty; allowed: a new or "
                                  "empty folder (export never overwrites)")
    elif out.exists():
        raise InputValueError(f"{str(out)!r} is a file; allowed: a new or empty folder")


def export_pipeline(model, out) -> Path:
    """Write ``model`` (a :class:`~sdediff.score.ScoreModel`) as a diffusers ``DDPMPipeline``
    folder at ``out`` and return its path.

    The folder is written in full in a temporary sibling and then renamed onto ``out``, so that
    ``out`` never holds half a pipeline (a failed or interrupted export removes its staging
    folder; only a killed process leaves a hidden ``.OUT.*.partial`` sibling). ``out`` must be
    new or an empty folder. The U-Net's weights are saved as they are (dtype and values).
    """
    check_exportable(model)
    out = Path(out)
    check_out_folder(out)
    diffusers = import_diffusers("exporting a diffusers pipeline")
    pipeline = diffusers.DDPMPipeline(
        unet=model.net.unet,
        scheduler=diffusers.DDPMScheduler(**scheduler_config(model.sde, model.prediction)))
    out.parent.mkdir(parents=True, exist_ok=True)
    # a fresh hidden sibling (same file system, so the rename is atomic); mkdir, unlike mkdtemp,
    # gives it the user's usual permissions, which the exported folder keeps
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.partial"
    staging.mkdir()
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        # rename(2) replaces an empty folder atomically and refuses a non-empty one (one created
        # since the check above): the folder either appears whole or not at all.
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out

"""Bring your own model: diffusers pipelines as :class:`~sdediff.score.ScoreModel` s.

A diffusers pixel-space pipeline (``DDPMPipeline``, ``DDIMPipeline``, ...) is a ``UNet2DModel``
trained on a discrete chain of betas, plus a scheduler config that names the chain. sdediff
reads both and builds

- the process: :class:`~sdediff.sde.DiscreteVPSDE` from the scheduler config (``beta_schedule``
  ``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` or ``trained_betas``);
- the network: :class:`~sdediff.nets.DiffusersUNet`, which feeds the U-Net the timestep
  ``t M - 1`` of continuous time ``t``;
- the prediction: diffusers' ``prediction_type`` ``epsilon``, ``v_prediction``, ``sample`` are
  sdediff's ``eps``, ``v``, ``x0``.

Every sampler, grid, ``encode``, ``decode``, ``log_likelihood``, ``interpolate`` and ``fit_grid``
then runs on the model unchanged. Folders are read with ``local_files_only=True``: nothing is
downloaded. diffusers is the optional ``interop`` extra.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checks import InputValueError, check_choice
from .nets.diffusers_unet import DiffusersUNet, import_diffusers
from .score import ScoreModel
from .sde import DiscreteVPSDE

#: diffusers' ``prediction_type`` -> sdediff's prediction.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: sdediff's prediction -> diffusers' ``prediction_type`` (the inverse; ``score`` has none).
DIFFUSERS_PREDICTION_TYPES = {ours: theirs for theirs, ours in PREDICTION_TYPES.items()}
#: The U-Net classes sdediff wraps (unconditional, pixel space).
SUPPORTED_UNETS = ("UNet2DModel",)
#: Schedulers whose config describes a variance-preserving discrete chain of betas.
SUPPORTED_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "DEISMultistepScheduler", "UniPCMultistepScheduler",
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
    "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
)
#: The pipeline's weight files, in the order diffusers prefers them.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def _unsupported_unet(name: str) -> InputValueError:
    hint = (" (text-conditional, e.g. Stable Diffusion): not supported yet"
            if name == "UNet2DConditionModel" else ": not supported")
    return InputValueError(f"U-Net class {name}{hint}; supported: {', '.join(SUPPORTED_UNETS)} "
                           "(unconditional pixel-space pipelines such as DDPMPipeline, DDIMPipeline)")


def _check_unet(unet) -> None:
    name = type(unet).__name__
    if name not in SUPPORTED_UNETS:
        raise _unsupported_unet(name)
    config = unet.config
    if config.get("num_class_embeds") or config.get("class_embed_type"):
        raise InputValueError("this UNet2DModel is class-conditional (num_class_embeds/"
                              "class_embed_type set): not supported yet; supported: unconditional "
                              "UNet2DModel")


def _scheduler_config(scheduler) -> tuple[str | None, dict]:
    """``(class name or None, config dict)`` of a scheduler object or a config dict."""
    if isinstance(scheduler, dict):
        return scheduler.get("_class_name"), dict(scheduler)
    if hasattr(scheduler, "config"):
        return type(scheduler).__name__, dict(scheduler.config)
    raise InputValueError(f"scheduler must be a diffusers scheduler or its config dict, got "
                          f"{type(scheduler).__name__}")


def process_of(scheduler) -> tuple[DiscreteVPSDE, str]:
    """The forward process and sdediff prediction of a diffusers scheduler (object or config)."""
    name, config = _scheduler_config(scheduler)
    if name is not None and name not in SUPPORTED_SCHEDULERS:
        raise InputValueError(f"scheduler {name} is not supported (it does not describe a discrete "
                              f"variance-preserving chain of betas); supported: "
                              f"{', '.join(SUPPORTED_SCHEDULERS)}")
    prediction = check_choice("prediction_type", config.get("prediction_type", "epsilon"),
                              PREDICTION_TYPES)
    if config.get("timestep_type", "discrete") != "discrete":
        raise InputValueError(f"timestep_type {config['timestep_type']!r}: not supported; "
                              "supported: 'discrete'")
    return DiscreteVPSDE.from_diffusers_config(config), PREDICTION_TYPES[prediction]


def from_diffusers(unet, scheduler, autocast: str | None = None) -> ScoreModel:
    """A :class:`ScoreModel` around an in-memory ``UNet2DModel`` and its scheduler (or the
    scheduler's config dict). The U-Net's weights are shared, not copied."""
    _check_unet(unet)
    sde, prediction = process_of(scheduler)
    net = DiffusersUNet.wrap(unet, sde.num_train_timesteps)
    return ScoreModel(net, sde, prediction=prediction, autocast=autocast)


def is_pipeline(path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (it holds ``model_index.json``)."""
    return (Path(path) / "model_index.json").is_file()


def _read_json(file: Path, what: str) -> dict:
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as err:
        raise InputValueError(f"{what}: {file} is missing") from err
    except json.JSONDecodeError as err:
        raise InputValueError(f"{what}: {file} is not valid JSON ({err.msg}, line {err.lineno})") \
            from err


def load_pipeline(path, device=None, autocast: str | None = None) -> tuple[ScoreModel, dict]:
    """``(model, config)`` of the diffusers pipeline folder ``path`` (``model_index.json`` with
    ``unet`` and ``scheduler``, as ``DDPMPipeline.save_pretrained`` writes it). ``config``
    carries what the CLI needs: the data shape ``(C, H, W)`` (images in ``[-1, 1]``), the
    process, the prediction and the pipeline's class names."""
    folder = Path(path)
    index = _read_json(folder / "model_index.json", "not a diffusers pipeline folder")
    missing = [key for key in ("unet", "scheduler") if key not in index]
    if missing:
        raise InputValueError(f"{folder / 'model_index.json'} has no {' or '.join(missing)} entry; "
                              "supported: pipelines with a unet and a scheduler (DDPMPipeline, "
                              "DDIMPipeline)")
    unet_class, scheduler_class = index["unet"][-1], index["scheduler"][-1]
    if unet_class not in SUPPORTED_UNETS:
        raise _unsupported_unet(unet_class)
    scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json",
                                  "the pipeline's scheduler config")
    scheduler_config["_class_name"] = scheduler_class
    sde, prediction = process_of(scheduler_config)      # refuse a bad scheduler before any weights
    unet_dir = folder / "unet"
    _read_json(unet_dir / "config.json", "the pipeline's U-Net config")
    if not any((unet_dir / name).is_file() for name in WEIGHT_FILES):
        raise InputValueError(f"the pipeline's U-Net weights are missing: no {' or '.join(WEIGHT_FILES)} "
                              f"in {unet_dir}")
    diffusers = import_diffusers("loading a diffusers pipeline folder")
    # low_cpu_mem_usage=False: the default asks for `accelerate` (a warning) to save memory we
    # do not need for pixel-space U-Nets
    unet = diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True,
                                                 low_cpu_mem_usage=False)
    unet.eval()
    if device is not None:
        unet.to(device)
    model = from_diffusers(unet, scheduler_config, autocast=autocast)
    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    config = {"source": "diffusers", "path": str(folder), "pipeline": index.get("_class_name"),
              "scheduler": scheduler_class, "net": model.net.config, "sde": sde.config(),
              "prediction": prediction,
              "data": {"kind": "images", "name": folder.name,
                       "shape": [int(unet.config.in_channels), int(height), int(width)],
                       "data_range": [-1.0, 1.0]}}
    return model, config

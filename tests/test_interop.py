"""diffusers pipelines as ScoreModels: the discrete process, diffusers' spacings, and sdediff's
samplers against diffusers' own schedulers on the same seeded random UNet2DModel (diffusers is
the independent reference; nothing is downloaded)."""

import json
import sys

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff.checks import InputValueError
from sdediff.cli import main
from sdediff.samplers.grids import diffusers_timesteps
from sdediff.sde import DiscreteVPSDE, diffusers_timestep
from tests.test_cli import fails_with

diffusers = pytest.importorskip("diffusers")
# A small U-Net on 8x8 images: two torch threads only wait on each other on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 1, 8, 8)
#: Equivalence tolerance of the issue: max |ours - diffusers| / max |diffusers|, float32.
TOL = 1e-5
CHAINS = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    "trained_betas": {"trained_betas": np.linspace(2e-4, 0.03, 1000).tolist()},
}


def tiny_unet(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def x_T(seed: int = 1) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def diffusers_loop(unet, scheduler, steps: int, x: torch.Tensor, **step_kwargs) -> torch.Tensor:
    """The loop of diffusers' pipelines (DDIMPipeline.__call__, step 2)."""
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x, **step_kwargs).prev_sample
    return x


# --- the discrete process ----------------------------------------------------------------------
@pytest.mark.parametrize("chain", list(CHAINS))
def test_process_has_diffusers_alphas_cumprod_at_every_index(chain):
    sde = DiscreteVPSDE(**CHAINS[chain])
    scheduler = diffusers.DDIMScheduler(**CHAINS[chain])
    alpha, sigma = sde.alpha_sigma(sde.index_to_time(torch.arange(1000)))
    assert torch.allclose(alpha**2, scheduler.alphas_cumprod.double(), rtol=0, atol=1e-15)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(1000, dtype=torch.float64), atol=1e-15)


def test_log_alpha_is_linear_in_t_between_the_nodes_with_f_its_slope():
    sde = DiscreteVPSDE()
    nodes = sde.index_to_time(torch.arange(1000))
    la = torch.log(sde.alpha(nodes))
    mid = 0.5 * (nodes[1:] + nodes[:-1])
    assert torch.allclose(torch.log(sde.alpha(mid)), 0.5 * (la[1:] + la[:-1]), rtol=1e-12, atol=0)
    assert torch.allclose(sde.f(mid), (la[1:] - la[:-1]) * 1000, rtol=1e-9)
    assert torch.allclose(sde.g2(mid), -2 * sde.f(mid))
    # below the first node log alpha runs linearly to 0 at t = 0: finite for every t > 0
    low = torch.tensor([1e-7, 1e-5, 5e-4], dtype=torch.float64)
    assert torch.allclose(torch.log(sde.alpha(low)), la[0] * low * 1000, rtol=1e-12)
    assert bool(torch.isfinite(sde.log_snr(low)).all())


@pytest.mark.parametrize("chain", list(CHAINS))
def test_inverse_log_snr_is_exact(chain):
    sde = DiscreteVPSDE(**CHAINS[chain])
    t = torch.cat([torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                   sde.index_to_time(torch.arange(1000)), torch.tensor([1e-6, 1e-4, 1.0])])
    assert torch.allclose(sde.t_of_log_snr(sde.log_snr(t)), t, rtol=1e-10, atol=1e-14)


def test_timestep_map_gives_back_every_index_in_float32():
    index = torch.arange(1000)
    assert torch.equal(diffusers_timestep(DiscreteVPSDE().index_to_time(index), 1000).float(),
                       index.float())


def test_config_round_trip_and_bad_chains():
    sde = DiscreteVPSDE(**CHAINS["scaled_linear"], steps_offset=1)
    again = sd.sde.sde_from_config(sde.config())
    assert torch.equal(again.node_log_alpha, sde.node_log_alpha) and again.steps_offset == 1
    with pytest.raises(InputValueError, match=r"beta_schedule 'sigmoid'.*linear, scaled_linear"):
        DiscreteVPSDE(beta_schedule="sigmoid")
    with pytest.raises(InputValueError, match=r"beta_999 = 1: every beta must lie in \(0, 1\)"):
        DiscreteVPSDE(trained_betas=[0.01] * 999 + [1.0])
    with pytest.raises(InputValueError, match="rescale_betas_zero_snr=True"):
        DiscreteVPSDE.from_diffusers_config({"rescale_betas_zero_snr": True})


# --- diffusers' spacings --------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [2, 7, 10, 50, 999])
@pytest.mark.parametrize("offset", [0, 1])
def test_spacings_are_diffusers_timesteps(spacing, steps, offset):
    ddim = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ddpm = diffusers.DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ddim.set_timesteps(steps)
    ddpm.set_timesteps(steps)
    ours = diffusers_timesteps(spacing, 1000, steps, offset if spacing == "leading" else 0)
    assert torch.equal(ours, ddim.timesteps) and torch.equal(ours, ddpm.timesteps)
    sde = DiscreteVPSDE(steps_offset=offset)
    grid = sd.samplers.get("ddim", schedule=spacing).grid(sde, steps, 1e-3)
    assert torch.equal(grid, (ddim.timesteps.double() + 1) / 1000)


def test_spacings_need_a_discrete_process_and_refuse_t_end(unet):
    with pytest.raises(InputValueError, match=r"schedule 'leading' is one of diffusers' timestep "
                                              r"spacings .* got VPSDE; its grids: uniform"):
        sd.sample(sd.GaussianMixture([[0.0]], 1.0).score_model(sd.VPSDE()), shape=(2, 1),
                  schedule="leading", steps=5)
    model = sd.ScoreModel.from_diffusers(unet, diffusers.DDIMScheduler())
    with pytest.raises(InputValueError, match=r"t_end=0.01 given with schedule 'trailing'"):
        sd.sample(model, shape=SHAPE, schedule="trailing", steps=5, t_end=0.01)


# --- sdediff's samplers against diffusers' schedulers, same network, same x_T ---------------------
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_equals_diffusers_ddim(unet, prediction, spacing, steps):
    scheduler = diffusers.DDIMScheduler(clip_sample=False, prediction_type=prediction,
                                        timestep_spacing=spacing)
    reference = diffusers_loop(unet, scheduler, steps, x_T(), eta=0.0)
    model = sd.ScoreModel.from_diffusers(unet, scheduler)
    result = sd.sample(model, x_T=x_T(), sampler="ddim", schedule=spacing, steps=steps,
                       return_info=True)
    assert result.nfe == steps                   # steps - 1 steps, then the final denoise
    assert relative(result.x, reference) <= TOL


def test_ddim_equals_the_ddim_pipeline_itself(unet):
    pipeline = diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler(clip_sample=False))
    images = pipeline(batch_size=3, generator=torch.Generator().manual_seed(1), eta=0.0,
                      num_inference_steps=10, output_type="pt").images
    model = sd.ScoreModel.from_diffusers(unet, pipeline.scheduler)
    ours = sd.sample(model, x_T=x_T(), sampler="ddim", schedule="leading", steps=10)
    # the pipeline's postprocessing, (x/2 + 1/2) clamped to [0, 1] (it clips, so compare absolutely)
    assert float(((ours / 2 + 0.5).clamp(0, 1) - images).abs().max()) <= TOL


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_pp_2m_equals_diffusers(unet, spacing, steps):
    scheduler = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, timestep_spacing=spacing,
        final_sigmas_type="zero", lower_order_final=True)
    reference = diffusers_loop(unet, scheduler, steps, x_T())
    model = sd.ScoreModel.from_diffusers(unet, scheduler)
    # diffusers' last step to sigma = 0 (first order) is the final denoise at its last timestep;
    # every step between its timesteps is 2M (no lowered order there)
    times = model.sde.index_to_time(scheduler.timesteps)
    if spacing == "trailing":      # the DDIM and DPM rules agree for trailing: the named grid
        options = {"schedule": "trailing", "steps": steps}
    else:                          # DPM's linspace drops the last of N + 1 points: explicit grid
        options = {"schedule": times, "t_end": float(times[-1])}
    result = sd.sample(model, x_T=x_T(), sampler="dpm_solver++", order=2,
                       lower_order_final=False, return_info=True, **options)
    assert result.nfe == steps
    assert relative(result.x, reference) <= TOL


def test_ddpm_equals_diffusers_ddpm_step_for_step(unet, monkeypatch):
    """Both get the same noise tensors: sdediff's are recorded and replayed into diffusers'
    ``randn_tensor`` (drawn after each model call with t > 0, as DDPMScheduler.step does)."""
    from diffusers.schedulers import scheduling_ddpm

    from sdediff.samplers.noise import BrownianNoise

    drawn = []
    normal = BrownianNoise.normal

    def record(self, t_cur, t_next):
        z = normal(self, t_cur, t_next)
        drawn.append(z.clone())
        return z

    monkeypatch.setattr(BrownianNoise, "normal", record)
    scheduler = diffusers.DDPMScheduler(clip_sample=False)
    model = sd.ScoreModel.from_diffusers(unet, scheduler)
    ours = sd.sample(model, x_T=x_T(), sampler="ddpm", schedule="leading", steps=10,
                     generator=torch.Generator().manual_seed(2), keep_trajectory=True,
                     return_info=True)
    assert len(drawn) == 9 and ours.nfe == 10
    replay = iter(drawn)
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda *a, **k: next(replay))
    scheduler.set_timesteps(10)
    x, states = x_T(), []
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x).prev_sample
            states.append(x)
    for mine, theirs in zip(ours.trajectory[1:], states[:-1], strict=True):   # each step
        assert relative(mine, theirs) <= TOL
    assert relative(ours.x, states[-1]) <= TOL                                 # final denoise


# --- pipeline folders -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline_dir(unet, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "ddim-pipe"
    diffusers.DDIMPipeline(unet, diffusers.DDIMScheduler(prediction_type="v_prediction",
                                                         beta_schedule="scaled_linear",
                                                         beta_start=0.00085, beta_end=0.012)
                           ).save_pretrained(folder)
    return folder


def test_load_model_reads_a_pipeline_folder(unet, pipeline_dir):
    model, config = sd.load_model(pipeline_dir)
    assert isinstance(model.sde, DiscreteVPSDE) and model.prediction == "v"
    assert model.sde.config()["beta_schedule"] == "scaled_linear"
    assert config["data"]["shape"] == [1, 8, 8] and config["source"] == "diffusers"
    in_memory = sd.ScoreModel.from_diffusers(unet, diffusers.DDIMScheduler(
        prediction_type="v_prediction", beta_schedule="scaled_linear", beta_start=0.00085,
        beta_end=0.012))
    for sampler in ("unipc", "ddim"):
        a = sd.sample(model, x_T=x_T(), sampler=sampler, steps=5)
        b = sd.sample(in_memory, x_T=x_T(), sampler=sampler, steps=5)
        assert torch.equal(a, b)


def test_cli_samples_a_pipeline_folder(pipeline_dir, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", "--checkpoint", str(pipeline_dir), "--sampler", "unipc", "--steps",
                 "10", "--num", "4", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (4, 1, 8, 8) and out.with_suffix(".png").is_file()
    assert "unipc: 4 samples, NFE 11" in capsys.readouterr().out


def _copy(pipeline_dir, tmp_path):
    import shutil

    folder = tmp_path / "pipe"
    shutil.copytree(pipeline_dir, folder)
    return folder


def _edit_json(file, **changes):
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


@pytest.mark.parametrize("damage, message", [
    ("not_a_pipeline", "no checkpoint at .* or a diffusers pipeline folder holding model_index.json"),
    ("no_unet_entry", "model_index.json has no unet entry; supported: pipelines with a unet"),
    ("conditional_unet", "U-Net class UNet2DConditionModel \\(text-conditional, e.g. Stable "
                         "Diffusion\\): not supported yet; supported: UNet2DModel"),
    ("scheduler_class", "scheduler ScoreSdeVeScheduler is not supported .* supported: DDPMScheduler"),
    ("beta_schedule", "beta_schedule 'sigmoid'.*allowed.*linear, scaled_linear, squaredcos_cap_v2"),
    ("no_weights", "the pipeline's U-Net weights are missing: no diffusion_pytorch_model.safetensors"),
])
def test_bad_pipelines_are_one_line_errors(pipeline_dir, tmp_path, capsys, damage, message):
    folder = _copy(pipeline_dir, tmp_path)
    index = folder / "model_index.json"
    if damage == "not_a_pipeline":
        index.unlink()
    elif damage == "no_unet_entry":
        data = json.loads(index.read_text())
        del data["unet"]
        index.write_text(json.dumps(data))
    elif damage == "conditional_unet":
        _edit_json(index, unet=["diffusers", "UNet2DConditionModel"])
    elif damage == "scheduler_class":
        _edit_json(index, scheduler=["diffusers", "ScoreSdeVeScheduler"])
    elif damage == "beta_schedule":
        _edit_json(folder / "scheduler" / "scheduler_config.json", beta_schedule="sigmoid")
    else:
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    fails_with(capsys, ["sample", "--checkpoint", str(folder), "--num", "2", "--out",
                        str(tmp_path / "s.npy"), "--no-progress"], message)


def test_without_diffusers_loading_names_the_extra(pipeline_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)      # `import diffusers` now fails
    with pytest.raises(InputValueError, match=r"loading a diffusers pipeline folder needs diffusers, "
                                              r"which is not installed: pip install 'sdediff\[interop\]'"):
        sd.load_model(pipeline_dir)


def test_class_conditional_unets_are_refused():
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(32,), down_block_types=("DownBlock2D",),
                                 up_block_types=("UpBlock2D",), norm_num_groups=8,
                                 num_class_embeds=10)
    with pytest.raises(InputValueError, match="class-conditional .* not supported yet"):
        sd.ScoreModel.from_diffusers(unet, diffusers.DDPMScheduler())


def test_likelihood_on_a_diffusers_unet_falls_back_from_vmap(unet):
    """diffusers' U-Net backward cannot run under vmap (``is_grads_batched``): the divergences
    fall back to one backward pass per vector, with the same values."""
    from sdediff.ode import batched_vjp

    model = sd.ScoreModel.from_diffusers(unet, diffusers.DDIMScheduler())
    x = (torch.rand(SHAPE, generator=torch.Generator().manual_seed(4)) * 2 - 1).requires_grad_()
    drift = model.sde.reverse_drift(model, x, torch.full((3,), 0.5, dtype=torch.float64),
                                    probability_flow=True)
    v = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(5))
    one_by_one = torch.stack([batched_vjp(drift, x, v[k:k + 1])[0] for k in range(2)])
    assert torch.equal(batched_vjp(drift, x, v), one_by_one)
    for divergence, extra in (("exact", {}), ("hutchinson", {"probes": 2})):
        nll = sd.log_likelihood(model, x.detach()[:1], divergence=divergence, method="rk4",
                                steps=2, **extra)
        assert bool(torch.isfinite(nll).all()), divergence

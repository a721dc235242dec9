"""Devices: ``--device`` on every command, ``device=`` in the API, and samplers whose step loops
keep every tensor on the state's device with no host round trip.

No accelerator is needed. Placement is tested on PyTorch's ``meta`` device, which behaves as a
strict accelerator: reading a value on the host (``float``, ``bool``, ``.item()``, ``.tolist()``)
raises, and so does mixing it with a CPU tensor that is not a 0-d scalar. A dispatch mode counts
the host-to-device copies made after the first network call, i.e. inside the step loop.
"""

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sdediff as sd
from sdediff import samplers
from sdediff.checks import InputValueError, check_device, coefficient_dtype
from sdediff.cli import main
from sdediff.samplers.base import Observer
from sdediff.samplers.noise import BrownianNoise, SampleBrownian
from sdediff.streams import SampleSeeds

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def fails_with(capsys, argv, pattern):
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdediff: error: "), err
    assert re.search(pattern, err), err


# ------------------------------------------------------------------------------- the names

def test_check_device_accepts_the_machines_devices():
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu:0", "meta", ""])
def test_a_malformed_device_name_names_the_allowed_and_available_ones(name):
    with pytest.raises(InputValueError, match=r"unknown device .*; allowed: cpu, cuda, cuda:N, mps "
                                              r"\(available here: cpu"):
        check_device(name)


def test_mps_without_float64_falls_back_to_float32_with_one_warning(recwarn):
    assert coefficient_dtype("cpu") == torch.float64 and not recwarn.list
    with pytest.warns(UserWarning, match=r"^device mps has no float64: .* fall back to float32"):
        assert coefficient_dtype(torch.device("mps")) == torch.float32


# ----------------------------------------------------------------------------------- the CLI

#: Every command that computes, with the least it needs to reach its device check.
COMMANDS = {
    "sample": ["sample"],
    "encode": ["encode", "--data", "digits"],
    "decode": ["decode", "--input", "latents.npy"],
    "likelihood": ["likelihood", "--data", "digits"],
    "interpolate": ["interpolate", "--data", "digits"],
    "train": ["train", "--data", "moons", "--out", "run"],
    "bench": ["bench", "--problem", "digits"],
    "demo": ["demo"],
}


@NO_CUDA
@pytest.mark.parametrize("command", COMMANDS)
def test_device_cuda_without_cuda_is_one_line_naming_the_available_devices(capsys, command,
                                                                           tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails_with(capsys, [*COMMANDS[command], "--device", "cuda"],
               r"device 'cuda' is not available \(no CUDA device.*\); available: cpu$")
    assert not any(tmp_path.iterdir())          # refused before any work


@pytest.mark.parametrize("name", ["gpu", "cuda:x"])
def test_a_malformed_device_is_one_line(capsys, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails_with(capsys, ["sample", "--device", name], rf"unknown device '{re.escape(name)}'; allowed: "
               r"cpu, cuda, cuda:N, mps \(available here: cpu")


def test_device_cpu_runs_sample_encode_likelihood_and_train(capsys, tmp_path):
    import numpy as np

    out = tmp_path / "s.npy"
    assert main(["sample", "--device", "cpu", "--sampler", "ddim", "--steps", "2", "--num", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (2, 1, 8, 8)
    z = tmp_path / "z.npy"
    assert main(["encode", "--device", "cpu", "--data", "digits", "--num", "2", "--sampler",
                 "ddim", "--steps", "2", "--out", str(z), "--no-progress"]) == 0
    assert np.load(z).shape == (2, 1, 8, 8)
    assert main(["likelihood", "--device", "cpu", "--data", "digits", "--num", "2", "--method",
                 "euler", "--steps", "2", "--no-progress"]) == 0
    assert "bits/dim" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--device", "cpu", "--data", "moons", "--out", str(run), "--steps", "2",
                 "--batch-size", "8", "--checkpoint-every", "2", "--no-progress"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"


# ----------------------------------------------------------------------------------- the API

def _mlp_model():
    from sdediff.nets import MLP

    return sd.ScoreModel(MLP(data_dim=2), sd.VPSDE())


@NO_CUDA
def test_the_api_refuses_an_absent_device():
    model = _mlp_model()
    with pytest.raises(InputValueError, match=r"device 'cuda' is not available.*available: cpu"):
        sd.sample(model, shape=(2, 2), steps=2, device="cuda")
    with pytest.raises(InputValueError, match=r"unknown device 'gpu'"):
        sd.sample(model, shape=(2, 2), steps=2, device="gpu")
    from sdediff.train import Trainer

    with pytest.raises(InputValueError, match=r"device 'cuda' is not available"):
        Trainer(model.net, model.sde, torch.zeros(4, 2), "unused", device="cuda")


def test_samples_default_to_the_models_device_and_one_seed_gives_one_draw():
    model = _mlp_model()
    assert model.device == torch.device("cpu")
    assert sd.ScoreModel.from_fn(lambda x, t: -x, sd.VPSDE()).device is None

    def draw(**kw):
        return sd.sample(model, shape=(3, 2), steps=2, generator=torch.Generator().manual_seed(0),
                         **kw)

    assert torch.equal(draw(), draw(device="cpu"))


def test_a_state_on_another_device_than_the_network_is_one_message():
    meta_model = sd.ScoreModel(torch.nn.Linear(2, 2, device="meta"), sd.VPSDE())
    assert meta_model.device == torch.device("meta")
    sampler = samplers.get("ddim")
    with pytest.raises(InputValueError, match=r"x is on cpu but the model's network is on meta"):
        sampler.solve(meta_model, torch.zeros(2, 2), sampler.grid(meta_model.sde, 2, 1e-3))


# ----------------------------------------------------------------- placement in the step loops

class _MetaInterval:
    """A Brownian path on the meta device, in the interface the samplers use (torchsde's own
    ``BrownianInterval`` cannot draw there: it needs a generator of the device)."""

    levy_area_approximation = "none"

    def __init__(self, shape, device):
        self.shape, self.device, self.dtype = shape, device, torch.float32

    def __call__(self, ta, tb, return_U=False):
        return torch.randn(self.shape, device=self.device) * (float(tb) - float(ta)) ** 0.5


class _MetaNoise(BrownianNoise):
    def __init__(self, shape, T):
        self.shape, self.T, self.seed = tuple(shape), float(T), 0
        self.dtype, self.device = torch.float32, torch.device("meta")
        self._interval = _MetaInterval(self.shape, self.device)

    def corrector_normal(self, step, k):
        return torch.randn(self.shape, device=self.device)


class _HostToDevice(TorchDispatchMode):
    """Counts copies from the CPU to another device made once ``model.nfe >= 1``."""

    def __init__(self, model):
        super().__init__()
        self.model, self.in_loop = model, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aten = torch.ops.aten
        if func in (aten._to_copy.default, aten.copy_.default) and self.model.nfe >= 1:
            src = args[0] if func is aten._to_copy.default else args[1]
            dst = out if func is aten._to_copy.default else args[0]
            if src.device.type == "cpu" and dst.device.type != "cpu":
                self.in_loop.append(str(func))
        return out


#: Every registered sampler but the adaptive ones, whose step control reads an error estimate
#: (dpm_adaptive) or its times (torchdiffeq, behind ``ode``) on the host at every step by design.
ON_DEVICE = [(name, {}) for name in samplers.available() if not samplers.get(name).adaptive] + [
    ("ddim", {"eta": 0.5}), ("heun", {"s_churn": 1.0}), ("pc", {"corrector_steps": 2})]


@pytest.mark.parametrize(("name", "options"), ON_DEVICE, ids=lambda v: str(v) if v else "")
@pytest.mark.parametrize("forward", [False, True, "per-sample"], ids=["sample", "encode",
                                                                      "sample-SampleSeeds"])
def test_the_step_loop_keeps_every_tensor_on_the_state_device(name, options, forward):
    """(``sample-SampleSeeds``: the per-sample Brownian paths of :class:`SampleSeeds`, hashed on
    the device.)"""
    sampler = samplers.get(name, **options)
    per_sample, forward = forward == "per-sample", forward is True
    if forward and not (sampler.reversible and not sampler.is_stochastic()):
        pytest.skip("only reversible deterministic samplers encode")
    if per_sample and not sampler.is_stochastic():
        pytest.skip("a deterministic sampler draws no noise in the loop")
    sde = sd.VPSDE()
    seen = []

    def score(x, t):
        seen.append(t.device)
        return -x

    model = sd.ScoreModel.from_fn(score, sde)
    ts = sampler._check_times(sde, sampler.grid(sde, 4, 1e-3))   # as solve: a host grid
    ts = ts.flip(0) if forward else ts
    x = torch.zeros(3, 2, device="meta")
    noise = _MetaNoise(x.shape, sde.T) if sampler.is_stochastic() else None
    if per_sample:
        noise = SampleBrownian(SampleSeeds(0), x.shape, sde.T, device=x.device)
    model.remember_times(ts)
    observe = Observer(ts, False, False, name, False, x)
    with torch.no_grad(), _HostToDevice(model) as copies:
        out = (sampler.run_pair(model, x, ts, observe, False) if sampler.paired
               else sampler.run(model, x, ts, noise, observe))
    pair = sampler.paired and forward                 # an encoding's latent pair (B, 2, ...)
    assert out.device.type == "meta" and out.shape == ((3, 2, 2) if pair else x.shape)
    assert model.nfe >= 4 and set(d.type for d in seen) == {"meta"}
    assert copies.in_loop == [], f"{name}: host-to-device copies in the step loop"


def test_the_ode_sampler_hands_torchdiffeq_its_times_on_the_state_device(monkeypatch):
    from sdediff.samplers import ode as ode_module

    got = {}

    def fake_odeint(func, y0, t, **kwargs):
        got["t"] = t
        return torch.stack([y0] * len(t))

    monkeypatch.setattr(ode_module, "odeint", fake_odeint)
    sampler = samplers.get("ode")
    x = torch.zeros(2, 2, device="meta")
    sampler.integrate(lambda t, y: y, x, torch.tensor([1.0, 1e-3], dtype=torch.float64))
    assert got["t"].device.type == "meta" and got["t"].dtype == torch.float64


def test_no_sampler_module_moves_tensors_to_the_host():
    """Source check, beside the meta runs: the one host-side move in the samplers is the grid's
    (``Sampler._check_times``); ``fitted.py`` runs no step loop (its optimiser works in numpy)."""
    from pathlib import Path

    folder = Path(samplers.__file__).parent
    hits = [line.strip() for path in sorted(folder.glob("*.py")) if path.name != "fitted.py"
            for line in path.read_text().splitlines()
            if re.search(r"\.item\(\)|\.cpu\(\)|device=\"cpu\"|\.numpy\(\)", line)]
    assert hits == ['ts = ts.detach().to(device="cpu", dtype=torch.float64).flatten()'], hits

"""The contract every registered sampler keeps, checked from the registry (a new sampler file is
covered without editing this test): shapes, dtypes, seeding, counted NFE, errors, processes."""

import re

import pytest
import torch

import sdediff as sd
from sdediff.samplers import Sampler, register
from tests.exact import ring_mixture

NAMES = sd.samplers.available()
PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()]
STEPS = 6


def model_for(sde, event_shape=(2,)):
    gmm = ring_mixture() if event_shape == (2,) else sd.GaussianMixture(
        torch.zeros((2,) + event_shape, dtype=torch.float64) + torch.tensor([-1.0, 1.0]).reshape(
            (2,) + (1,) * len(event_shape)), 0.3)
    return gmm.score_model(sde)


def run(name, model, x_T=None, seed=0, steps=STEPS, **kw):
    if sd.samplers.get(name).adaptive:      # adaptive samplers choose their own steps
        steps = None
    return sd.sample(model, shape=None if x_T is not None else (16, 2), x_T=x_T, sampler=name,
                     steps=steps, generator=torch.Generator().manual_seed(seed),
                     return_info=True, **kw)


def test_registry_lists_the_samplers():
    assert "ddim" in NAMES
    for name in NAMES:
        sampler = sd.samplers.get(name)
        assert isinstance(sampler, Sampler) and sampler.name == name
        assert sampler.family and sampler.order > 0 and sampler.default_steps >= 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_counted_nfe(name, dtype):
    model = model_for(sd.VPSDE(), (1, 2, 2))
    x_T = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=dtype)
    sampler = sd.samplers.get(name)
    for denoise in (True, False):
        result = run(name, model, x_T=x_T, denoise=denoise)
        assert result.x.shape == x_T.shape and result.x.dtype == dtype
        assert bool(torch.isfinite(result.x).all())
        declared = sampler.nfe(STEPS)
        if declared is None:  # adaptive: measured
            assert result.nfe > 0
        else:
            assert result.nfe == declared + int(denoise)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_samples(name):
    model = model_for(sd.VPSDE())
    a, b, c = (run(name, model, seed=s).x for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # a new seed draws a new x_T (and new noise)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_every_process(name, sde):
    result = run(name, model_for(sde), steps=12)
    assert result.x.shape == (16, 2) and bool(torch.isfinite(result.x).all())
    assert float(result.times[0]) == sde.T


@pytest.mark.parametrize("name", NAMES)
def test_errors_name_the_bad_value(name):
    model = model_for(sd.VPSDE())
    bogus = rf"unknown option 'bogus' for sampler '{re.escape(name)}'; allowed: "
    with pytest.raises(ValueError, match=bogus):
        sd.sample(model, shape=(2, 2), sampler=name, bogus=1)
    with pytest.raises(ValueError, match=r"steps must be >= 1, got 0"):
        sd.sample(model, shape=(2, 2), sampler=name, steps=0)
    with pytest.raises(ValueError, match=r"x_T has shape \(3, 2\), expected \(4, 2\)"):
        sd.sample(model, shape=(4, 2), x_T=torch.zeros(3, 2), sampler=name)
    with pytest.raises(ValueError, match=r"t_end must be in \(0.0, 1.0\), got 1.5"):
        sd.sample(model, shape=(2, 2), sampler=name, t_end=1.5)


def test_unknown_sampler_and_bad_inputs():
    model = model_for(sd.VPSDE())
    with pytest.raises(ValueError, match=r"unknown sampler 'dpm'; allowed: .*ddim"):
        sd.sample(model, shape=(2, 2), sampler="dpm")
    with pytest.raises(TypeError, match=r"model must be a sdediff.ScoreModel, got function"):
        sd.sample(lambda x, t: x, shape=(2, 2))
    with pytest.raises(ValueError, match=r"x_T contains 1 non-finite value"):
        sd.sample(model, x_T=torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"give either shape=\(batch, ...\) or x_T"):
        sd.sample(model)


def test_third_party_registration_and_duplicates():
    class Identity(Sampler):
        family = "test"

        def run(self, model, x, ts, noise, observe):
            for i in range(1, ts.numel()):
                observe(i, x)
            return x

    try:
        register("identity_for_test")(Identity)
        assert "identity_for_test" in sd.samplers.available()
        result = run("identity_for_test", model_for(sd.VPSDE()), denoise=False,
                     keep_trajectory=True)
        assert result.nfe == 0 and result.trajectory.shape == (STEPS + 1, 16, 2)
        with pytest.raises(ValueError, match=r"sampler named 'ddim' is already registered"):
            register("ddim")(Identity)
    finally:
        sd.samplers._REGISTRY.pop("identity_for_test", None)

"""Exactly invertible encoding (issue 18): BDIA and EDICT round trips at float precision for any
network, BDIA's latent converging to the probability-flow latent at its order, the pair latents'
plumbing, and the error estimates of encodings and likelihoods against exact answers."""

import math
import warnings

import pytest
import torch

import sdediff as sd
from sdediff.bench.problems import gmm64
from sdediff.checkpoint import load_model
from sdediff.checks import AccuracyWarning
from sdediff.data import load_digits
from sdediff.pretrained import default_checkpoint
from tests.exact import exact_pf_solve, ring_mixture, slope

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def relative_max(a, b) -> float:
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


def mixture(dim=16):
    return ring_mixture(dim, 6, 0.2, seed=7)


def random_network_model():
    """An untrained MLP: exactness E1 must hold for any network, not just a good score."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(17, 64), torch.nn.Tanh(), torch.nn.Linear(64, 16)).double()
    return sd.ScoreModel.from_fn(lambda x, t: net(torch.cat([x, t.expand(len(x))[:, None]], 1)),
                                 sd.VPSDE())


@pytest.mark.parametrize("name", ["bdia", "edict"])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_round_trip_is_exact_to_round_off(name, steps):
    gmm = mixture()
    for model in (gmm.score_model(sd.VPSDE()), random_network_model()):
        x = gmm.sample(32, generator=torch.Generator().manual_seed(0))
        z = sd.encode(model, x, sampler=name, steps=steps)
        assert z.shape == (32, 2, 16)                       # the latent pair
        assert relative_max(sd.decode(model, z, sampler=name, steps=steps), x) < 1e-10
    # float32: the same round trip to float32 rounding (BDIA's inverse is neutral, EDICT's 1/p)
    model = gmm.score_model(sd.VPSDE())
    x32 = x.float()
    z32 = sd.encode(model, x32, sampler=name, steps=steps)
    assert relative_max(sd.decode(model, z32, sampler=name, steps=steps), x32) < (
        1e-5 if name == "bdia" else 2e-3)


def test_naive_ddim_inversion_is_not_exact():
    """The baseline the exact encoders fix: DDIM run backwards does not invert DDIM."""
    model = mixture().score_model(sd.VPSDE())
    x = mixture().sample(32, generator=torch.Generator().manual_seed(0))
    back = sd.decode(model, sd.encode(model, x, sampler="ddim", steps=20), sampler="ddim", steps=20)
    assert relative_max(back, x) > 1e-2


def test_bdia_with_gamma_0_is_ddim_and_cannot_invert():
    model = mixture().score_model(sd.VPSDE())
    x_T = torch.randn(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = sd.sample(model, x_T=x_T, sampler="bdia", steps=12, gamma=0.0, schedule="logsnr")
    b = sd.sample(model, x_T=x_T, sampler="ddim", steps=12, schedule="logsnr")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"gamma=0 is DDIM, whose steps do not invert"):
        sd.encode(model, x_T, sampler="bdia", steps=12, gamma=0.0)


def test_bdia_latent_converges_to_the_probability_flow_latent_at_order_2():
    """E3 in the limit: scipy's exact PF-ODE latent of the mixture as the reference."""
    gmm, sde = ring_mixture(2, 8, 0.15), sd.VPSDE()
    model = gmm.score_model(sde)
    x = gmm.sample(64, generator=torch.Generator().manual_seed(1))
    z_exact = exact_pf_solve(gmm, sde, x, sde.t_min, sde.T)
    steps = [20, 40, 80]
    errors = [float((sd.encode(model, x, sampler="bdia", steps=n)[:, 0] - z_exact).norm(dim=1).mean())
              for n in steps]
    assert slope(steps, errors) > 1.8, errors


def test_bdia_on_the_digits_model_round_trips_within_the_targets():
    model, _ = load_model(default_checkpoint())
    x = load_digits().test[:8]
    for steps in (10, 20, 50):
        z = sd.encode(model, x, sampler="bdia", steps=steps, return_info=True)
        back = sd.decode(model, z.x, sampler="bdia", steps=steps, return_info=True)
        assert z.nfe == steps and back.nfe == steps - 1
        assert relative_max(back.x, x) < 1e-4             # float32 target
    model.net.double()
    z = sd.encode(model, x.double(), sampler="bdia", steps=50)
    assert relative_max(sd.decode(model, z, sampler="bdia", steps=50), x.double()) < 1e-5


def test_pair_latents_are_checked():
    model = mixture().score_model(sd.VPSDE())
    x = mixture().sample(4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"z has shape \(4, 16\); sampler 'bdia' decodes the latent "
                                         r"pair \(B, 2, \.\.\.\)"):
        sd.decode(model, x, sampler="bdia", steps=5)
    pair = sd.encode(model, x, sampler="bdia", steps=5)
    with pytest.raises(ValueError, match=r"sampler 'ddim' takes a single state, not a latent pair; "
                                         r"samplers with pair latents: bdia, edict"):
        sd.samplers.get("ddim").solve(model, pair, torch.tensor([1.0, 0.5]), pair=True)


def test_interpolate_defaults_to_the_exact_encoder():
    model = mixture().score_model(sd.VPSDE())
    gmm = mixture()
    a = gmm.sample(3, generator=torch.Generator().manual_seed(4))
    b = gmm.sample(3, generator=torch.Generator().manual_seed(5))
    path, latents = sd.interpolate(model, a, b, 5, steps=10, return_latents=True)
    assert path.shape == (3, 5, 16) and latents.shape == (3, 5, 2, 16)
    assert relative_max(path[:, 0], a) < 1e-12 and relative_max(path[:, -1], b) < 1e-12


def test_encode_estimate_tracks_the_latent_error_and_flags_too_few_steps():
    gmm, sde = mixture(), sd.VPSDE()
    model = gmm.score_model(sde)
    x = gmm.sample(32, generator=torch.Generator().manual_seed(2))
    z_exact = exact_pf_solve(gmm, sde, x, sde.t_min, sde.T)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        r = sd.encode(model, x, sampler="bdia", steps=40, return_info=True)
    true = (r.x[:, 0] - z_exact).flatten(1).norm(dim=1) / r.x[:, 0].flatten(1).norm(dim=1)
    estimate = r.extra["error_estimate"]
    assert r.extra["estimate_nfe"] == 20
    # of the true error's size: the median ratio within a factor 2, never 3x below (a sample near
    # a component boundary may be overestimated: the coarse solve errs more there)
    ratio = estimate / true
    assert 0.5 < float(ratio.median()) < 2 and float(ratio.min()) > 1 / 3, ratio
    with pytest.warns(AccuracyWarning, match=r"encode: the latent's estimated relative error is"):
        sd.encode(model, x, sampler="bdia", steps=3)


@pytest.mark.parametrize("name", ["gmm64", "ring16"])
def test_default_likelihood_matches_the_exact_log_density(name):
    """20 calls per sample, within 0.01 bits/dim of the exact log-density (256 draws)."""
    gmm, sde = (gmm64() if name == "gmm64" else mixture()), sd.VPSDE()
    x = gmm.sample(256, generator=torch.Generator().manual_seed(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        r = sd.log_likelihood(gmm.score_model(sde), x, divergence="exact", return_info=True)
    D = x.shape[1]
    bits = (r.nll - -gmm.log_prob(x, sde, sde.t_min)) / (D * math.log(2))
    assert r.nfe == 20 and r.estimate_nfe == 11
    assert abs(float(bits.mean())) < 0.01
    # the reported estimate is of the size of the true per-sample error (not 0, not 10x)
    estimate = r.error_estimate / (D * math.log(2))
    assert 0.2 < float(estimate.mean()) / float(bits.abs().mean()) < 5


def test_default_likelihood_on_the_digits_matches_the_adaptive_solver():
    model, _ = load_model(default_checkpoint())
    x = sd.ode.dequantize(load_digits().test[:16], 17, generator=torch.Generator().manual_seed(0))
    fast = sd.log_likelihood(model, x, generator=torch.Generator().manual_seed(1), return_info=True)
    tight = sd.log_likelihood(model, x, generator=torch.Generator().manual_seed(1), rtol=1e-5, atol=1e-5,
                              return_info=True)
    assert fast.nfe == 20 and tight.nfe > 200 and tight.error_estimate is None
    assert abs(float((fast.nll - tight.nll).mean())) / (64 * math.log(2)) < 0.01


def test_likelihood_estimate_flags_a_bad_grid():
    """10 rk4 steps on the uniform grid: -10 bits/dim on the digits (issue 18), silently before."""
    model, _ = load_model(default_checkpoint())
    x = sd.ode.dequantize(load_digits().test[:8], 17, generator=torch.Generator().manual_seed(0))
    expected = (r"log_likelihood: estimated error [0-9.e+-]+ bits/dim \(mean over the batch; > 0.02; "
                r"'rk4', 10 steps on 'uniform' against 5\); take more steps, use the default solver, "
                r"or an adaptive one")
    with pytest.warns(AccuracyWarning, match=expected):
        r = sd.log_likelihood(model, x, method="rk4", steps=10, schedule="uniform", return_info=True,
                              generator=torch.Generator().manual_seed(1))
    # far off (the solve is -10 bits/dim off; Richardson, outside its asymptotic range, sees 0.9)
    assert float(r.error_estimate.mean()) / (64 * math.log(2)) > 0.5
    # the default solver with too few steps is not told to use the default solver
    with pytest.warns(AccuracyWarning, match=r"5 steps on 'logsnr' against 3\); take more steps or an "
                      r"adaptive one \(rtol=\.\.\.\)"):
        sd.log_likelihood(model, x, steps=5, generator=torch.Generator().manual_seed(1))

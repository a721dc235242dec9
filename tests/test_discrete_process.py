"""The one score interface on a diffusers-style discrete process: every registered sampler,
``encode``, ``decode``, ``log_likelihood``, ``interpolate`` and ``fit_grid`` run unchanged on a
``DiscreteVPSDE``, and with a mixture's exact score they reach the exact answers (the exact
probability-flow endpoint in ``(y, s)``, the exact log-density), which checks the process's
``f``, ``g^2``, ``alpha``, ``sigma`` and inverse log-SNR against each other."""

import pytest
import torch

import sdediff as sd
from sdediff.bench.metrics import rms
from sdediff.bench.problems import exact_pf_endpoint, exact_pf_solve, gmm2d

pytestmark = pytest.mark.usefixtures("one_thread")

SDE = sd.DiscreteVPSDE(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
GMM = gmm2d()
MODEL = GMM.score_model(SDE)
T_END = SDE.t_min                           # index 0, where a diffusers run ends


def prior(n=64, seed=0):
    return SDE.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)


@pytest.fixture(scope="module")
def reference():
    return exact_pf_endpoint(GMM, SDE, prior(), T_END)


@pytest.mark.parametrize("name", sd.samplers.available())
def test_every_sampler_runs_on_the_discrete_process(name, reference):
    sampler = sd.samplers.get(name)
    steps = None if sampler.adaptive else 200 if name == "ddpm" else 50
    result = sd.sample(MODEL, x_T=prior(), sampler=name, steps=steps, t_end=T_END, denoise=False,
                       generator=torch.Generator().manual_seed(1), return_info=True)
    assert bool(torch.isfinite(result.x).all()) and result.nfe > 0
    if not sampler.is_stochastic():
        # deterministic: the exact probability-flow endpoint from the same x_T
        assert rms(result.x, reference) < (5e-3 if sampler.order >= 2 else 0.05), name


def test_fast_solver_converges_at_its_order_on_the_discrete_process(reference):
    errors = [rms(sd.sample(MODEL, x_T=prior(), sampler="dpm_solver++", steps=n, t_end=T_END,
                            denoise=False), reference) for n in (25, 50)]
    assert errors[0] / errors[1] > 2.5          # order 2 (4x per halving; the kinks cost a bit)


def test_encode_decode_and_the_exact_log_density():
    x0 = GMM.sample(32, generator=torch.Generator().manual_seed(2)).double()
    x = exact_pf_solve(GMM, SDE, x0, 1e-6, T_END)          # a draw near p_{t_min}, any will do
    z = sd.encode(MODEL, x, rtol=1e-8, atol=1e-8)
    # in the clock -log alpha the flow has no jumps: dopri5 meets its tolerance (in t: 1.7e-4
    # at rtol 1e-8, with 30x the calls)
    assert torch.allclose(z, exact_pf_solve(GMM, SDE, x, T_END, SDE.T), atol=1e-6)
    assert torch.allclose(sd.decode(MODEL, z, rtol=1e-8, atol=1e-8), x, atol=1e-6)
    nll = sd.log_likelihood(MODEL, x, divergence="exact", rtol=1e-7, atol=1e-7)
    # nll = -log N(z; 0, I) - integral of the divergence; swap the prior for the exact p_T
    # (alpha(T) = 0.068 for this chain: N(0, I) is off by ~0.02 nats) to test the integral alone
    exact_prior = GMM.log_prob(z, SDE, SDE.T) - SDE.prior_logp(z)
    assert torch.allclose(nll - exact_prior, -GMM.log_prob(x, SDE, T_END), atol=1e-4)


def test_interpolate_and_fit_grid_run():
    x = GMM.sample(2, generator=torch.Generator().manual_seed(3)).double()
    path = sd.interpolate(MODEL, x[:1], x[1:], 5)
    assert path.shape == (1, 5, 2) and bool(torch.isfinite(path).all())
    grid = sd.samplers.fitted.fit_grid(MODEL, "dpm_solver++", nfe=8, shape=(64, 2),
                                       generator=torch.Generator().manual_seed(4), t_end=T_END,
                                       iterations=20)
    assert grid.times[0] == SDE.T and grid.times[-1] == T_END and len(grid.times) == 9

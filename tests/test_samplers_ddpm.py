"""The "ddpm" sampler (Ho et al. Algorithm 2, respaced): distribution of its samples against the
exact mixture, the respaced grid, exact NFE, and the step rule against a literal Algorithm 2."""

import pytest
import torch

import sdediff as sd
from sdediff.bench.metrics import energy_distance, two_sample_floor
from sdediff.samplers.noise import BrownianNoise
from tests.exact import ring_mixture

PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()]
N_SAMPLES = 2000


@pytest.fixture(scope="module")
def gmm():
    return ring_mixture()


@pytest.fixture(scope="module")
def floor(gmm):
    """Mean energy distance between two exact 2000-sample sets (5 seeds)."""
    return two_sample_floor(lambda n, g: gmm.sample(n, g), N_SAMPLES, repeats=5)


def draw(gmm, sde, steps, seed=0, **options):
    return sd.sample(gmm.score_model(sde), shape=(N_SAMPLES, 2), sampler="ddpm", steps=steps,
                     generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                     return_info=True, **options)


def distance_to_data(gmm, x, seed=100):
    return energy_distance(x, gmm.sample(x.shape[0], torch.Generator().manual_seed(seed)))


def weights_found(gmm, x):
    """Share of samples nearest each component mean."""
    nearest = torch.cdist(x, gmm.means).argmin(dim=1)
    return torch.bincount(nearest, minlength=gmm.weights.numel()).double() / x.shape[0]


# 999 steps (15 s) is slow: the 100-step cases run the same algorithm in the default suite
@pytest.mark.parametrize("steps, variance", [pytest.param(999, "beta_tilde", marks=pytest.mark.slow),
                                             (100, "beta_tilde"), (100, "beta")])
def test_samples_follow_the_data(steps, variance, gmm, floor):
    # 999 steps + the final denoise = Ho et al.'s Algorithm 2 with N = 1000 (1000 NFE)
    result = draw(gmm, sd.VPSDE(), steps, variance=variance)
    distance = distance_to_data(gmm, result.x)
    found = weights_found(gmm, result.x)
    off = float((found - gmm.weights).abs().max())
    print(f"ddpm {steps} steps, {variance}: energy distance {distance:.2e} = "
          f"{distance / floor:.2f} x floor {floor:.2e}; weights off by {off:.3f}")
    assert result.nfe == steps + 1
    assert distance < 3 * floor
    assert torch.allclose(found, gmm.weights, atol=0.035)   # ~4 binomial standard deviations


def test_the_two_variances_differ(gmm):
    small, large = (draw(gmm, sd.VPSDE(), 10, variance=v, denoise=False).x for v in ("beta_tilde", "beta"))
    assert not torch.allclose(small, large)
    assert small.std() < large.std()       # fixed_large adds more noise than fixed_small


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_every_process(sde, gmm, floor):
    result = draw(gmm, sde, 100)
    distance = distance_to_data(gmm, result.x)
    print(f"ddpm 100 steps on {sde!r}: {distance / floor:.2f} x floor")
    assert result.x.shape == (N_SAMPLES, 2) and bool(torch.isfinite(result.x).all())
    assert distance < 5 * floor


@pytest.mark.parametrize("sde", PROCESSES[:2], ids=lambda s: repr(s)[:14])
@pytest.mark.parametrize("steps, t_end", [(100, 1e-3), (7, 0.0123), (988, 0.0123), (999, 1e-3)])
def test_respaced_grid(sde, steps, t_end):
    chain = sde.discretize(1000)
    ts = sd.samplers.get("ddpm").grid(sde, steps, t_end)
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == sde.T                                 # the first call at exactly T
    assert bool((ts[1:] < ts[:-1]).all())                        # strictly decreasing, no repeats
    assert float(ts[-1]) == float(chain.index_to_time(chain.time_to_index(t_end)))
    indices = chain.time_to_index(ts)
    assert torch.equal(chain.index_to_time(indices), ts)         # every time is a chain time
    gaps = (indices[:-1] - indices[1:]).tolist()
    assert max(gaps) - min(gaps) <= 1                            # evenly spaced, rounded


def test_too_many_steps_names_the_values(gmm):
    model = gmm.score_model(sd.VPSDE())
    with pytest.raises(ValueError, match=r"steps \(the N = 1000 chain has 999 steps from index 1000 at T "
                                         r"down to index 1 at t_end = 0.001\) must be <= 999, got 1000"):
        sd.sample(model, shape=(4, 2), sampler="ddpm", steps=1000)
    with pytest.raises(ValueError, match=r"N = 50 chain has 44 steps .* index 6 at t_end = 0.12\) "
                                         r"must be <= 44, got 45"):
        sd.sample(model, shape=(4, 2), sampler="ddpm", steps=45, num_train_steps=50, t_end=0.12)
    with pytest.raises(ValueError, match=r"unknown variance 'learned'; allowed: beta_tilde, beta"):
        sd.samplers.get("ddpm", variance="learned")
    with pytest.raises(ValueError, match=r"largest beta of the num_train_steps = 20 chain"):
        sd.sample(model, shape=(4, 2), sampler="ddpm", num_train_steps=20)


def test_nfe_is_exact_and_default_steps_run_the_whole_chain(gmm):
    model = gmm.score_model(sd.VPSDE())
    for steps in (1, 5, 37):
        for denoise in (False, True):
            result = sd.sample(model, shape=(8, 2), sampler="ddpm", steps=steps, denoise=denoise,
                               return_info=True, generator=torch.Generator().manual_seed(0))
            assert result.nfe == sd.samplers.get("ddpm").nfe(steps) + int(denoise) == steps + int(denoise)
    result = sd.sample(model, shape=(8, 2), sampler="ddpm", num_train_steps=50, return_info=True,
                       generator=torch.Generator().manual_seed(0))
    assert result.nfe == 50 and result.times.shape == (50,)      # x_50 .. x_1, then x0^


@pytest.mark.parametrize("variance", ["beta_tilde", "beta"])
def test_whole_chain_is_algorithm_2(variance, gmm):
    """Against a literal Ho et al. Algorithm 2 on the VP chain's betas, with the same noise:
    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(1 - beta_t) + sigma_t z, down to x_1."""
    sde, N, shape = sd.VPSDE(), 100, (16, 2)
    model = gmm.score_model(sde)
    x_1 = sd.sample(model, shape=shape, sampler="ddpm", num_train_steps=N, variance=variance,
                    t_end=1 / N, denoise=False, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x_t = sde.prior_sample(shape, generator=g, dtype=torch.float64)
    noise = BrownianNoise.from_generator(shape, sde.T, g, dtype=torch.float64)
    chain = sde.discretize(N)
    betas, abar = chain.betas, chain.alphas_cumprod
    for i in range(N, 1, -1):
        t, t_prev = chain.index_to_time(i), chain.index_to_time(i - 1)
        eps = model.eps(x_t, t)
        beta, abar_t = betas[i - 1], abar[i - 1]
        var = beta if variance == "beta" else (1 - abar[i - 2]) / (1 - abar_t) * beta
        x_t = ((x_t - beta / (1 - abar_t).sqrt() * eps) / (1 - beta).sqrt()
               + var.sqrt() * noise.normal(float(t), float(t_prev)))
    assert torch.allclose(x_1, x_t, rtol=1e-10, atol=1e-10)

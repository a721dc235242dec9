"""The adaptive reverse-SDE solver ``adaptive_sde`` (Jolicoeur-Martineau et al. 2021, "Gotta Go
Fast", Algorithm 1): the paper's algorithm written out against the sampler, its call count, its
noise (the seeded Brownian path, also across rejected attempts), the exact marginals of Gaussian
data, and the refusals."""

import math

import pytest
import torch

import sdediff as sd
from sdediff.checks import NumericalError
from sdediff.samplers.noise import BrownianNoise
from tests.exact import ring_mixture

SDE = sd.VPSDE()
T_END = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    return ring_mixture().score_model(SDE)


def prior(n=8, seed=0, dim=2, dtype=torch.float64):
    return SDE.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def counted(model):
    """The same model, recording the time of every network call."""
    times = []

    def score(x, t):
        times.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return model.score(x, t)

    return sd.ScoreModel.from_fn(score, model.sde), times


def gotta_go_fast(model, x, noise, rtol, atol, t_end=T_END, h=0.01, theta=0.9, r=0.9):
    """Algorithm 1, line by line: one EM step and one improved-Euler step with the same increment,
    the mixed tolerance with the previous EM estimate, the scaled L2 norm (RMS over the batch),
    ``h <- min(t - t_end, theta h E^-r)``. Returns the state and the accepted/rejected counts."""
    sde = model.sde

    def b(x, t):                                            # reverse drift f x - g^2 score
        return sde.reverse_drift(model, x, torch.tensor(t, dtype=torch.float64))

    def g(t):
        return float(sde.diffusion(torch.tensor(t, dtype=torch.float64)))

    t, x_prev, accepted, rejected = sde.T, x, 0, 0
    while t > t_end:
        t_next = t_end if h >= t - t_end else t - h
        h = t - t_next
        dW = noise.increment(t, t_next)                     # sqrt(h) z, from the path
        x_1 = x - h * b(x, t) + g(t) * dW                   # x'  (Euler-Maruyama)
        x_2 = x - h * b(x_1, t_next) + g(t_next) * dW       # x~
        x_3 = 0.5 * (x_1 + x_2)                             # x'' (improved Euler)
        delta = torch.clamp(rtol * torch.maximum(x_1.abs(), x_prev.abs()), min=atol)
        E = float(((x_1 - x_3) / delta).pow(2).mean().sqrt())
        if E <= 1:
            x, t, x_prev = x_3, t_next, x_1
            accepted += 1
        else:
            rejected += 1
        h = min(t - t_end, theta * h * E ** -r)
    return x, accepted, rejected


def test_the_sampler_is_algorithm_1_and_counts_its_calls(model):
    x_T = prior()
    noise = BrownianNoise.from_generator(x_T.shape, SDE.T, torch.Generator().manual_seed(1),
                                         dtype=x_T.dtype)
    expected, accepted, rejected = gotta_go_fast(model, x_T, noise, rtol=0.05, atol=0.05)
    assert rejected > 0                      # the case that needs care: retries on the same path
    wrapped, times = counted(model)
    r = sd.sample(wrapped, x_T=x_T, sampler="adaptive_sde", rtol=0.05, atol=0.05, t_end=T_END,
                  denoise=False, generator=torch.Generator().manual_seed(1), return_info=True)
    assert torch.allclose(r.x, expected, rtol=0, atol=1e-10), float((r.x - expected).abs().max())
    # 2 calls per accepted step, 1 per rejected one (b(x, t) is kept across a retry)
    assert r.nfe == len(times) == 2 * accepted + rejected
    assert times[0] == SDE.T and times[-1] == T_END       # first call at T, last step lands on t_end
    assert r.times.tolist() == [SDE.T, T_END]


def test_denoise_is_one_more_counted_call(model):
    kw = dict(x_T=prior(), sampler="adaptive_sde", rtol=0.1, atol=0.1, return_info=True)
    raw = sd.sample(model, denoise=False, generator=torch.Generator().manual_seed(2), **kw)
    done = sd.sample(model, denoise=True, generator=torch.Generator().manual_seed(2), **kw)
    assert done.nfe == raw.nfe + 1
    assert torch.allclose(done.x, model.x0(raw.x, T_END), rtol=0, atol=1e-12)


def test_seeded_and_reproducible(model):
    def run(source, n=4):
        return sd.sample(model, shape=(n, 2), sampler="adaptive_sde", rtol=0.1, atol=0.1,
                         generator=source, dtype=torch.float64)

    a, b, c = (run(torch.Generator().manual_seed(s)) for s in (4, 4, 5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    p, q, other = run(sd.SampleSeeds(7)), run(sd.SampleSeeds(7)), run(sd.SampleSeeds(8))
    assert torch.equal(p, q) and not torch.equal(p, other)


def test_same_path_as_euler_maruyama(model):
    """One seed, one Brownian path: with a tight tolerance the solution is close to
    euler_maruyama's on the same seed (pathwise), far from it on another seed."""
    x_T = prior(16)
    em = sd.sample(model, x_T=x_T, sampler="euler_maruyama", steps=200, denoise=False,
                   generator=torch.Generator().manual_seed(5))
    ours, other = (sd.sample(model, x_T=x_T, sampler="adaptive_sde", rtol=0.05, atol=0.05,
                             denoise=False, generator=torch.Generator().manual_seed(seed))
                   for seed in (5, 6))
    same, different = (ours - em).norm(dim=1), (other - em).norm(dim=1)
    assert float(same.median()) < 0.2 < float(different.median()), (same, different)


def gaussian_errors(tol, seed=0, batch=256, dim=16, mu=1.0, s=0.2):
    """Gaussian data N(mu, s^2 I): the reverse SDE started from the exact p_T has the exact
    marginal N(alpha mu, alpha^2 s^2 + sigma^2) at t_end. Returns the sample mean's and variance's
    errors in standard errors (batch * dim independent numbers) and the NFE."""
    gmm = sd.GaussianMixture(torch.full((1, dim), mu, dtype=torch.float64), s)

    def marginal(t):
        alpha, sigma = (float(v) for v in SDE.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        return alpha * mu, alpha**2 * s**2 + sigma**2

    m_T, v_T = marginal(SDE.T)
    x_T = m_T + math.sqrt(v_T) * torch.randn(batch, dim, dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(seed))
    r = sd.sample(gmm.score_model(SDE), x_T=x_T, sampler="adaptive_sde", rtol=tol, atol=tol,
                  denoise=False, generator=torch.Generator().manual_seed(seed + 1),
                  return_info=True)
    m, v = marginal(T_END)
    n = batch * dim
    return (abs(float(r.x.mean()) - m) / math.sqrt(v / n),
            abs(float(r.x.var()) / v - 1) / math.sqrt(2 / n), r.nfe)


def test_tightening_the_tolerance_reaches_the_exact_gaussian_marginal():
    loose_mean, loose_var, loose_nfe = gaussian_errors(0.5)
    tight_mean, tight_var, tight_nfe = gaussian_errors(0.05)
    assert max(loose_mean, loose_var) > 5          # visibly biased (measured: 9 and 6 s.e.)
    assert max(tight_mean, tight_var) < 3          # within the sampling error
    assert tight_nfe > 2 * loose_nfe


def test_max_over_the_batch_costs_more_than_rms(model):
    x_T = prior(32)
    kw = dict(x_T=x_T, sampler="adaptive_sde", rtol=0.1, atol=0.1, denoise=False, return_info=True)
    rms = sd.sample(model, generator=torch.Generator().manual_seed(1), **kw)
    worst = sd.sample(model, generator=torch.Generator().manual_seed(1), batch_error="max", **kw)
    assert worst.nfe > rms.nfe


def test_float32_runs_and_tiny_tolerances_are_refused(model):
    r = sd.sample(model, x_T=prior(dtype=torch.float32), sampler="adaptive_sde", rtol=0.1,
                  atol=0.1, generator=torch.Generator().manual_seed(0), return_info=True)
    assert r.x.dtype == torch.float32 and bool(torch.isfinite(r.x).all())
    with pytest.raises(ValueError, match=r"rtol = 1e-07, atol = 1e-07 are below what "
                                         r"torch.float32 resolves"):
        sd.sample(model, x_T=prior(dtype=torch.float32), sampler="adaptive_sde", rtol=1e-7,
                  atol=1e-7)


def test_steps_and_bad_options_are_refused(model):
    with pytest.raises(ValueError, match=r"steps=20 given to the adaptive sampler 'adaptive_sde', "
                                         r"which chooses its own steps; set rtol/atol instead"):
        sd.sample(model, shape=(2, 2), sampler="adaptive_sde", steps=20)
    bad = {"rtol": (-0.1, r"rtol must be in \[0.0, inf\), got -0.1"),
           "atol": (float("nan"), r"atol must be in \[0.0, inf\), got nan"),
           "h_init": (0.0, r"h_init must be in \(0.0, inf\), got 0.0"),
           "exponent": (-1, r"exponent must be in \(0.0, inf\), got -1"),
           "batch_error": ("mean", r"unknown batch_error 'mean'; allowed: rms, max")}
    for option, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            sd.samplers.get("adaptive_sde", **{option: value})
    with pytest.raises(ValueError, match=r"rtol and atol cannot both be 0"):
        sd.samplers.get("adaptive_sde", rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"rtol must be a number, got '1e-3' \(str\)"):
        sd.samplers.get("adaptive_sde", rtol="1e-3")


def test_a_non_finite_model_is_a_numerical_error():
    def score(x, t):
        return torch.full_like(x, float("nan")) if float(torch.as_tensor(t).reshape(-1)[0]) < 0.5 \
            else -x

    model = sd.ScoreModel.from_fn(score, SDE)
    with pytest.raises(NumericalError, match=r"adaptive_sde: non-finite error estimate at t = "):
        sd.sample(model, x_T=prior(), sampler="adaptive_sde",
                  generator=torch.Generator().manual_seed(0))


@pytest.mark.slow   # ~20 s: a 1000-step euler_maruyama reference on one path
def test_pathwise_convergence_to_the_fine_euler_maruyama_solution(model):
    x_T = prior(16)
    reference = sd.sample(model, x_T=x_T, sampler="euler_maruyama", steps=1000, denoise=False,
                          generator=torch.Generator().manual_seed(5))
    errors = []
    for tol in (0.1, 0.01):
        x = sd.sample(model, x_T=x_T, sampler="adaptive_sde", rtol=tol, atol=tol, denoise=False,
                      generator=torch.Generator().manual_seed(5))
        errors.append(float((x - reference).norm(dim=1).median()))
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.03, errors

"""Encoding, decoding and exact likelihood through the probability-flow ODE (sdediff/ode.py).

The exact score of a Gaussian mixture makes every number checkable: the likelihood against the
mixture's own marginal density at ``t_min``, the encoding against scipy's DOP853 in
``(y = x / alpha, s = sigma / alpha)`` (tests/exact.py), and for Gaussian data the whole map in
closed form. Everything is float64 and seeded.
"""

import math

import pytest
import torch
from scipy import stats

import sdediff as sd
from sdediff import ode
from tests.exact import exact_pf_solve, ring_mixture, rms

SDE = sd.VPSDE()
T_MIN = ode.T_MIN


def marginal_sample(gmm, n, seed, t=T_MIN):
    """Exact draws from the marginal ``p_t`` of the mixture (the ODE's data end is ``t_min``)."""
    g = torch.Generator().manual_seed(seed)
    return SDE.perturb(gmm.sample(n, generator=g), t, generator=g)[0]


def relative_error(a, b):
    """Per-sample ``||a - b|| / ||b||``."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def ring(one_thread):
    gmm = ring_mixture(2)
    return gmm, gmm.score_model(SDE), marginal_sample(gmm, 64, seed=0)


@pytest.fixture(scope="module")
def ring_latents(ring):
    """The exact latents of the ring samples (scipy DOP853 at 1e-10)."""
    gmm, _, x = ring
    return exact_pf_solve(gmm, SDE, x, T_MIN, SDE.T)


@pytest.fixture(scope="module")
def mixture16():
    gmm = ring_mixture(16)
    return gmm, gmm.score_model(SDE)


# -------------------------------------------------------------------------------- likelihood

def test_exact_divergence_likelihood_matches_mixture_density_2d(ring):
    gmm, model, x = ring
    # the adaptive solver at its former default tolerance (the fast default: tests/test_reversible.py)
    r = sd.log_likelihood(model, x, divergence="exact", rtol=1e-5, atol=1e-5, return_info=True)
    truth = -gmm.log_prob(x, SDE, T_MIN)
    error_per_dim = (r.nll - truth).abs() / 2
    assert float(error_per_dim.mean()) < 0.01          # the bound; measured 5.3e-4
    assert float(error_per_dim.mean()) < 2e-3
    assert torch.allclose(-r.nll, r.prior_logp + r.delta_logp)
    assert torch.allclose(r.prior_logp, SDE.prior_logp(r.z))
    assert r.stderr is None and r.divergence == "exact" and r.probes == 1
    assert r.nfe > 0 and r.vjps == 2 * r.nfe           # one network call, D products per call
    # The 5e-4 left is not the solver's: p_T is N(alpha_T mu_k, ...), not exactly the N(0, I)
    # prior. With that accounted for, the error is the solver's and falls with the tolerance.
    errors = []
    for tol in (1e-5, 1e-7):
        r = sd.log_likelihood(model, x, divergence="exact", rtol=tol, atol=tol, return_info=True)
        ode_truth = truth + gmm.log_prob(r.z, SDE, SDE.T) - SDE.prior_logp(r.z)
        errors.append(float((r.nll - ode_truth).abs().mean() / 2))
    assert errors[0] < 1e-4 and errors[1] < 1e-6, errors   # measured 3.7e-5, 7.6e-8


def test_hutchinson_likelihood_matches_mixture_density_16d(mixture16):
    gmm, model = mixture16
    x = marginal_sample(gmm, 512, seed=1)
    g = torch.Generator().manual_seed(2)
    r = sd.log_likelihood(model, x, divergence="hutchinson", probes=4, generator=g, rtol=1e-5,
                          atol=1e-5, return_info=True)
    truth = -gmm.log_prob(x, SDE, T_MIN)
    error_per_dim = (r.nll - truth) / 16
    mean, se = float(error_per_dim.mean()), float(error_per_dim.std() / math.sqrt(len(x)))
    assert abs(mean) < 0.01, (mean, se)                # measured -4e-4 +- 2.4e-3 (8 seeds:
    assert abs(mean) < 4 * se + 1e-3                   # |mean| <= 5e-3)
    assert r.vjps == 4 * r.nfe and r.stderr.shape == (512,)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_and_its_standard_error_is_calibrated(mixture16, noise):
    gmm, model = mixture16
    x = marginal_sample(gmm, 64, seed=3)
    exact = sd.log_likelihood(model, x, divergence="exact")
    r = sd.log_likelihood(model, x, divergence="hutchinson", probes=16, noise=noise,
                          generator=torch.Generator().manual_seed(4), return_info=True)
    diff = r.nll - exact
    # unbiased: the summed difference is within 4 standard errors of 0 (measured over 8 seeds:
    # |z| <= 3.2 for Rademacher, 1.8 for Gaussian probes)
    z = float(diff.sum() / r.stderr.pow(2).sum().sqrt())
    assert abs(z) < 4, z
    # calibrated: the reported standard error matches the actual spread (measured 0.84-1.39)
    ratio = float((diff.pow(2).mean() / r.stderr.pow(2).mean()).sqrt())
    assert 0.6 < ratio < 1.6, ratio


def test_probes_are_seeded_and_fixed_along_the_path(ring):
    _, model, x = ring

    def run(seed):
        return sd.log_likelihood(model, x[:8], generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    v = ode.draw_probes((3, 4), 1000, "rademacher", torch.Generator().manual_seed(0),
                        torch.float64)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    second_moment = torch.einsum("pbi,pbj->bij", v, v) / 1000   # E[v v^T] = I
    assert torch.allclose(second_moment, torch.eye(4).expand(3, 4, 4).double(), atol=0.15)


def gaussian_model(mean, log_std):
    """The exact score of N(mean, std^2 I) data as a network with parameters."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mean = torch.nn.Parameter(mean.clone())
            self.log_std = torch.nn.Parameter(log_std.clone())

        def forward(self, x, t):
            alpha, sigma = SDE.alpha_sigma(t)
            alpha, sigma = alpha[:, None], sigma[:, None]
            var = alpha**2 * torch.exp(2 * self.log_std) + sigma**2
            return (alpha * self.mean - x) / var

    net = Net()
    return net, sd.ScoreModel(net, SDE, prediction="score")


def gaussian_marginal(mean, log_std, t):
    alpha, sigma = SDE.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return alpha * mean, torch.sqrt(alpha**2 * torch.exp(2 * log_std) + sigma**2)


def test_encoding_of_gaussian_data_is_the_closed_form_affine_map():
    mean, log_std = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor(-1.0).double()
    _, model = gaussian_model(mean, log_std)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = sd.encode(model, x, rtol=1e-8, atol=1e-8)
    (m0, s0), (m1, s1) = (gaussian_marginal(mean, log_std, t) for t in (T_MIN, SDE.T))
    assert torch.allclose(z, m1 + s1 * (x - m0) / s0, atol=1e-6)


def test_adjoint_gradients_match_the_exact_density():
    mean, log_std = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor(-1.0).double()
    net, model = gaussian_model(mean, log_std)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_(True)
    nll = sd.log_likelihood(model, x, divergence="exact", adjoint=True, rtol=1e-7, atol=1e-7)
    nll.sum().backward()
    got = (net.mean.grad.clone(), net.log_std.grad.clone(), x.grad.clone())

    # in closed form: the affine map z = m1 + (s1 / s0)(x - m0), the N(0, I) prior at T and the
    # log-determinant D log(s1 / s0) (p_T itself is N(m1, s1^2), within alpha(T) = 0.007 of it)
    x_ref = x.detach().clone().requires_grad_(True)
    m_ref, ls_ref = mean.clone().requires_grad_(True), log_std.clone().requires_grad_(True)
    (m0, s0), (m1, s1) = (gaussian_marginal(m_ref, ls_ref, t) for t in (T_MIN, SDE.T))
    z = m1 + s1 * (x_ref - m0) / s0
    exact = -(SDE.prior_logp(z) + 2 * torch.log(s1 / s0))
    assert torch.allclose(nll.detach(), exact.detach(), atol=1e-5)
    exact.sum().backward()
    for a, b in zip(got, (m_ref.grad, ls_ref.grad, x_ref.grad), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a, b)
    # without adjoint nothing is tracked
    assert not sd.log_likelihood(model, x, divergence="exact").requires_grad
    # encode's adjoint: d z / d x of the affine map is s(T) / s(t_min)
    x2 = x.detach().clone().requires_grad_(True)
    sd.encode(model, x2, adjoint=True, rtol=1e-7, atol=1e-7).sum().backward()
    (_, s0), (_, s1) = (gaussian_marginal(mean, log_std, t) for t in (T_MIN, SDE.T))
    assert torch.allclose(x2.grad, (s1 / s0).expand_as(x2), rtol=1e-4)


# ----------------------------------------------------------------------- encoding and decoding

def test_round_trip_at_tight_tolerance_and_error_falls_with_tolerance(ring, ring_latents):
    _, model, x = ring
    encode_errors, round_trips = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        z = sd.encode(model, x, rtol=tol, atol=tol)
        back = sd.decode(model, z, rtol=tol, atol=tol)
        encode_errors.append(rms(z, ring_latents))
        round_trips.append(float(relative_error(back, x).max()))
    assert round_trips[-1] < 1e-4, round_trips
    assert round_trips[0] > round_trips[1] > round_trips[2], round_trips
    assert encode_errors[0] > encode_errors[1] > encode_errors[2], encode_errors
    assert encode_errors[-1] < 1e-6, encode_errors


def test_decode_is_sampling_without_denoise_and_reports_nfe(ring, ring_latents):
    _, model, _ = ring
    nfe_before = model.nfe
    r = sd.decode(model, ring_latents, return_info=True)
    assert r.nfe == model.nfe - nfe_before > 0 and r.seconds > 0
    s = sd.sample(model, x_T=ring_latents, sampler="ode", t_end=T_MIN, denoise=False,
                  return_info=True)
    assert torch.allclose(r.x, s.x, rtol=0, atol=1e-12) and r.nfe == s.nfe
    e = sd.encode(model, r.x, return_info=True)
    assert e.times[0] == T_MIN and e.times[-1] == SDE.T and e.nfe > 0


def test_latents_of_exact_samples_are_standard_normal(mixture16):
    gmm, model = mixture16
    x = marginal_sample(gmm, 1000, seed=7)
    z = sd.encode(model, x)
    assert stats.chi2.sf(float(len(z) * z.mean(0).pow(2).sum()), 16) > 1e-3   # mean 0
    assert float((torch.cov(z.T) - torch.eye(16)).abs().max()) < 0.2
    directions = torch.randn(5, 16, generator=torch.Generator().manual_seed(8), dtype=z.dtype)
    directions = directions / directions.norm(dim=1, keepdim=True)
    for d in directions:
        assert stats.kstest((z @ d).numpy(), "norm").pvalue > 0.01 / 5
    assert stats.kstest((x @ directions[0]).numpy() / float((x @ directions[0]).std()),
                        "norm").pvalue < 1e-3         # the data themselves are not Gaussian


def test_fixed_step_torchdiffeq_method_converges_at_its_order(ring, ring_latents):
    _, model, x = ring
    steps, errors = (25, 50, 100), []
    for n in steps:
        r = sd.encode(model, x, method="rk4", steps=n, schedule="logsnr", return_info=True)
        assert r.nfe == 4 * n
        errors.append(rms(r.x, ring_latents))
    slope = math.log(errors[0] / errors[-1]) / math.log(steps[-1] / steps[0])
    assert slope > 3, (errors, slope)


@pytest.mark.parametrize("sampler", [n for n in sd.samplers.reversible()   # pairs: test_reversible
                                     if n != "ode" and n not in sd.samplers.paired()])
def test_named_solver_encodes_in_reverse_and_its_error_falls_with_steps(ring, ring_latents,
                                                                         sampler):
    _, model, x = ring
    encode_errors, round_trips = [], []
    for steps in (20, 80, 320):
        r = sd.encode(model, x, sampler=sampler, steps=steps, return_info=True)
        assert r.nfe == sd.samplers.get(sampler).nfe(steps)
        assert r.times[0] == T_MIN and r.times[-1] == SDE.T
        back = sd.decode(model, r.x, sampler=sampler, steps=steps)
        encode_errors.append(rms(r.x, ring_latents))
        round_trips.append(rms(back, x))
    assert encode_errors[0] > encode_errors[1] > encode_errors[2], encode_errors
    assert round_trips[0] > round_trips[1] > round_trips[2], round_trips
    assert encode_errors[-1] < 0.05 and round_trips[-1] < 0.05


def test_solvers_that_cannot_encode_are_refused(ring):
    _, model, x = ring
    with pytest.raises(ValueError, match=r"sampler 'heun' cannot run forward in time \(encoding\); allowed: "
                                         r"ddim, bdia, dpm_solver\+\+, edict, ipndm, lms, ode, unipc"):
        sd.encode(model, x, sampler="heun", steps=4)
    with pytest.raises(ValueError, match=r"sampler 'ddim' is stochastic"):
        sd.decode(model, x, sampler="ddim", eta=0.5)
    with pytest.raises(ValueError, match=r"sampler 'ddpm' is stochastic"):
        sd.decode(model, x, sampler="ddpm")
    with pytest.raises(ValueError, match=r"adjoint=True needs sampler='ode'"):
        sd.encode(model, x, sampler="ddim", adjoint=True)
    with pytest.raises(ValueError, match=r"unknown sampler 'nope'; allowed: "):
        sd.encode(model, x, sampler="nope")


# --------------------------------------------------------------------------- bits per dimension

def test_bits_per_dim_offsets():
    assert sd.bits_per_dim(0.0, 3072) == 7.0                       # 8-bit in [-1, 1]: 2/256
    assert sd.bits_per_dim(0.0, 10, n_bits=8, data_range=(0, 1)) == 8.0   # [0, 1]: 1/256
    assert ode.bin_width(256) == 2 / 256
    assert ode.bin_width(17) == 2 / 17                             # the digits
    assert ode.dequantization_offset(17) == pytest.approx(math.log2(8.5))
    assert ode.dequantization_offset(17) == pytest.approx(3.0874628412503395)
    # by hand: 100 nats over 64 dims of 17-level data in [-1, 1]
    assert sd.bits_per_dim(100.0, 64, n_levels=17) == pytest.approx(
        100 / (64 * math.log(2)) + math.log2(8.5))
    nll = torch.tensor([10.0, 20.0], dtype=torch.float64)
    assert torch.allclose(sd.bits_per_dim(nll, 4), nll / (4 * math.log(2)) + 7)
    # a density uniform over the data range puts 1/L on every bin: log2 L bits per dim
    for levels, (low, high) in ((256, (-1, 1)), (17, (-1, 1)), (4, (0, 3))):
        D = 5
        assert sd.bits_per_dim(D * math.log(high - low), D, n_levels=levels,
                               data_range=(low, high)) == pytest.approx(math.log2(levels))
    with pytest.raises(ValueError, match=r"n_bits=8 and n_levels=17 disagree"):
        sd.bits_per_dim(1.0, 2, n_bits=8, n_levels=17)
    with pytest.raises(ValueError, match=r"data_range high must be in \(1.0, inf\), got 1.0"):
        sd.bits_per_dim(1.0, 2, data_range=(1, 1))
    with pytest.raises(ValueError, match=r"n_levels must be >= 2, got 1"):
        sd.bits_per_dim(1.0, 2, n_levels=1)


def test_dequantized_bits_per_dim_equals_the_discrete_entropy():
    """Independent derivation: discrete data with level probabilities p_k, dequantized into bins
    of width w, have the exact density p_k / w; its bits/dim is -log2 p_k, the discrete code
    length, exactly when the offset is -log2(w)."""
    L, D, N = 17, 3, 20000
    g = torch.Generator().manual_seed(0)
    p = torch.rand(L, generator=g, dtype=torch.float64) + 0.1
    p = p / p.sum()
    k = torch.multinomial(p, N * D, replacement=True, generator=g).reshape(N, D)
    x = -1 + k.double() * (2 / (L - 1))                            # data.py's digits grid
    xq = ode.dequantize(x, L, (-1, 1), generator=g)
    w = ode.bin_width(L, (-1, 1))
    assert float((xq - x).abs().max()) <= w / 2                   # each point in its own bin
    assert w < 2 / (L - 1)                                         # bins are disjoint
    k_back = torch.round((xq + 1) / (2 / (L - 1))).long()
    assert torch.equal(k_back, k)
    nll = -(torch.log(p[k_back]) - math.log(w)).sum(1)             # exact dequantized density
    assert torch.allclose(sd.bits_per_dim(nll, D, n_levels=L),
                          -torch.log2(p[k]).sum(1) / D)
    with pytest.raises(ValueError, match=r"x is not on the grid of 17 levels over \[-1, 1\]"):
        ode.dequantize(x + 0.01, L)


# ------------------------------------------------------------------------------- interpolation

def test_interpolation_endpoints_and_latent_norms(ring):
    _, model, x = ring
    x_a, x_b = x[:3], x[3:6]
    tight = {"rtol": 1e-8, "atol": 1e-8}
    path, latents = sd.interpolate(model, x_a, x_b, 5, return_latents=True, **tight)
    assert path.shape == (3, 5, 2) and latents.shape == (3, 5, 2)
    for end, xs in ((0, x_a), (-1, x_b)):
        assert torch.allclose(path[:, end], sd.decode(model, sd.encode(model, xs, **tight), **tight),
                              atol=1e-6)
        assert torch.allclose(path[:, end], xs, atol=1e-5)
    norms = latents.norm(dim=2)
    lo = torch.minimum(norms[:, :1], norms[:, -1:]) - 1e-9
    hi = torch.maximum(norms[:, :1], norms[:, -1:]) + 1e-9
    assert bool(((norms >= lo) & (norms <= hi)).all())


def test_slerp_geometry():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 64, generator=g, dtype=torch.float64), torch.randn(4, 64, generator=g,
                                                                              dtype=torch.float64)
    b = b * (a.norm(dim=1, keepdim=True) / b.norm(dim=1, keepdim=True))      # equal norms
    path = ode.slerp(a, b, torch.linspace(0, 1, 9, dtype=torch.float64))
    assert torch.allclose(path[:, 0], a) and torch.allclose(path[:, -1], b)
    assert torch.allclose(path.norm(dim=2), a.norm(dim=1, keepdim=True).expand(4, 9))
    cos = torch.nn.functional.cosine_similarity
    angle = torch.arccos(cos(a, b))                                # the midpoint bisects it
    assert torch.allclose(torch.arccos(cos(path[:, 4], a)), angle / 2)
    assert torch.allclose(ode.slerp(a, a, torch.tensor([0.3]))[:, 0], a)   # parallel: no NaN
    with pytest.raises(ValueError, match=r"cannot slerp a zero latent"):
        ode.slerp(a * 0, b, torch.tensor([0.5]))


# -------------------------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_errors_naming_the_value_and_the_allowed_ones(ring):
    _, model, x = ring
    cases = [
        (lambda: sd.log_likelihood(model, x, divergence="trace"), ValueError,
         r"unknown divergence 'trace'; allowed: exact, hutchinson"),
        (lambda: sd.log_likelihood(model, x, noise="uniform"), ValueError,
         r"unknown noise 'uniform'; allowed: rademacher, gaussian"),
        (lambda: sd.log_likelihood(model, x, divergence="exact", probes=4), ValueError,
         r"probes=4 given with divergence='exact'"),
        (lambda: sd.log_likelihood(model, x, probes=0), ValueError, r"probes must be >= 1, got 0"),
        (lambda: sd.log_likelihood(model, x[0]), ValueError,
         r"x0 must have shape \(batch, \.\.\.\), got \(2,\)"),
        (lambda: sd.log_likelihood(model, x[:0]), ValueError, r"x0 is empty \(shape \(0, 2\)\)"),
        (lambda: sd.encode(model, torch.full((2, 2), math.nan)), ValueError,
         r"x0 contains 4 non-finite value\(s\)"),
        (lambda: sd.decode(model, x.long()), TypeError, r"z must have a floating dtype"),
        (lambda: sd.encode(model, x, t_min=0.0), ValueError,
         r"t_min must be in \(0.0, 1.0\), got 0.0"),
        (lambda: sd.decode(model, x, t_min=1.5), ValueError, r"t_min must be in \(0.0, 1.0\), got 1.5"),
        (lambda: sd.log_likelihood(model, x, t_min=-1e-3), ValueError, r"t_min must be in"),
        (lambda: sd.encode(model, x, method="rk5"), ValueError, r"unknown method 'rk5'; allowed: "
                                                                 r"dopri5, "),
        (lambda: sd.encode(model, x, tol=1e-3), ValueError,
         r"unknown option 'tol' for sampler 'ode'; allowed: "),
        (lambda: sd.encode(model, x, steps=10), ValueError,
         r"steps=10 given to the adaptive sampler 'ode' with method 'dopri5', which chooses "
         r"its own steps"),
        (lambda: sd.encode(model, x, method="rk4", steps=0), ValueError,
         r"steps must be >= 1, got 0"),
        (lambda: sd.encode(lambda x, t: x, x), TypeError, r"model must be a sdediff.ScoreModel"),
        (lambda: sd.interpolate(model, x[:2], x[:3], 4), ValueError,
         r"x_b has shape \(3, 2\) but x_a has shape \(2, 2\)"),
        (lambda: sd.interpolate(model, x[:2], x[2:4], 1), ValueError, r"n must be >= 2, got 1"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()


def test_a_diverging_model_is_a_numerical_error():
    model = sd.ScoreModel.from_fn(lambda x, t: torch.exp(x.abs() * 1e3), SDE)
    with pytest.raises(sd.NumericalError, match=r"torchdiffeq method 'dopri5' broke down|"
                                                r"non-finite"):
        sd.encode(model, torch.ones(2, 2, dtype=torch.float64))

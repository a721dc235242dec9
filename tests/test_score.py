"""The score interface and the exact Gaussian mixture, against independent computations."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import logsumexp

import sdediff as sd
from sdediff.score import convert_prediction

PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()]


def mixture(event_shape=(3,), diagonal=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = 4
    means = 3 * torch.rand((K,) + event_shape, generator=g, dtype=torch.float64) - 1.5
    if diagonal:
        stds = 0.1 + 0.3 * torch.rand((K,) + event_shape, generator=g, dtype=torch.float64)
    else:
        stds = 0.1 + 0.3 * torch.rand(K, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    return sd.GaussianMixture(means, stds, weights)


@pytest.mark.parametrize("diagonal", [True, False])
def test_mixture_log_prob_matches_scipy(diagonal):
    gmm = mixture(diagonal=diagonal)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    comps = [
        np.log(float(w)) + stats.multivariate_normal(m.numpy(), np.diag(s.numpy() ** 2)).logpdf(
            x.numpy())
        for m, s, w in zip(gmm.means, gmm.stds, gmm.weights, strict=True)
    ]
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), logsumexp(comps, axis=0), rtol=1e-12)


def test_noised_marginal_matches_numerical_convolution():
    """p_t(x) = int p_0(x0) N(x; alpha x0, sigma^2) dx0, by quadrature in 1-D."""
    gmm = sd.GaussianMixture(torch.tensor([[-1.0], [0.7]], dtype=torch.float64),
                             torch.tensor([0.2, 0.4], dtype=torch.float64), [0.3, 0.7])
    for sde in PROCESSES:
        t = torch.tensor(0.4, dtype=torch.float64)
        alpha, sigma = (float(v) for v in sde.alpha_sigma(t))
        for x in (-1.3, 0.1, 2.0):
            def integrand(x0, x=x, alpha=alpha, sigma=sigma):
                p0 = math.exp(float(gmm.log_prob(torch.tensor([[x0]], dtype=torch.float64))))
                return p0 * stats.norm(alpha * x0, sigma).pdf(x)
            expected, _ = integrate.quad(integrand, -6, 6, epsabs=1e-13, limit=200)
            got = float(gmm.log_prob(torch.tensor([[x]], dtype=torch.float64), sde, t).exp())
            assert got == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:12])
@pytest.mark.parametrize("event_shape,diagonal", [((3,), True), ((3,), False), ((1, 2, 2), True)])
def test_mixture_score_is_gradient_of_log_prob(sde, event_shape, diagonal):
    gmm = mixture(event_shape, diagonal)
    g = torch.Generator().manual_seed(2)
    x = torch.randn((6,) + event_shape, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.3, 0.7, 0.9], dtype=torch.float64) * sde.T
    (grad,) = torch.autograd.grad(gmm.log_prob(x, sde, t).sum(), x)
    torch.testing.assert_close(gmm.score(x.detach(), t, sde), grad, rtol=1e-9, atol=1e-9)
    model = gmm.score_model(sde)
    torch.testing.assert_close(model.score(x.detach(), t), grad, rtol=1e-9, atol=1e-9)


def test_mixture_sampling_recovers_moments_and_weights():
    gmm = sd.GaussianMixture(torch.tensor([[-3.0, 0.0], [3.0, 1.0]]), torch.tensor([0.5, 1.0]),
                             [0.25, 0.75])
    x = gmm.sample(40_000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 2)
    left = x[:, 0] < 0
    assert float(left.float().mean()) == pytest.approx(0.25, abs=0.01)
    assert float(x[left].std(0)[1]) == pytest.approx(0.5, rel=0.03)
    assert float(x[~left].mean(0)[1]) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:12])
def test_prediction_conversions_round_trip(sde):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    alpha, sigma = sde.alpha_sigma(torch.tensor([0.01, 0.2, 0.5, 0.8, 0.95], dtype=torch.float64))
    value, kind = eps, "eps"
    for target in ("x0", "v", "score", "eps"):
        value = convert_prediction(value, kind, target, x, alpha, sigma)
        kind = target
    torch.testing.assert_close(value, eps, rtol=1e-9, atol=1e-9)
    # independent definitions: x = alpha x0 + sigma eps, v = alpha eps - sigma x0
    a, s = alpha[:, None, None], sigma[:, None, None]
    x0 = convert_prediction(eps, "eps", "x0", x, alpha, sigma)
    torch.testing.assert_close(a * x0 + s * eps, x)
    torch.testing.assert_close(convert_prediction(eps, "eps", "v", x, alpha, sigma),
                               a * eps - s * x0)
    torch.testing.assert_close(convert_prediction(eps, "eps", "score", x, alpha, sigma), -eps / s)


@pytest.mark.parametrize("prediction", sd.PREDICTIONS)
def test_score_model_wraps_each_prediction_type(prediction):
    """A net predicting any type gives the exact eps/x0/score of the mixture after conversion."""
    sde = sd.VPSDE()
    gmm = mixture((2,))
    exact = gmm.score_model(sde)

    def net(x, t):
        return convert_prediction(exact.score(x, t), "score", prediction, x,
                                  *sde.alpha_sigma(t))

    model = sd.ScoreModel(net, sde, prediction=prediction)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.6, 1.0], dtype=torch.float64)
    torch.testing.assert_close(model.eps(x, t), exact.eps(x, t))
    torch.testing.assert_close(model.x0(x, t), exact.x0(x, t))
    torch.testing.assert_close(model.score(x, t), exact.score(x, t))
    torch.testing.assert_close(model.v(x, t), exact.v(x, t))


def test_score_model_counts_calls_and_broadcasts_time():
    seen = []

    def net(x, t):
        seen.append(t.shape)
        return torch.zeros_like(x)

    model = sd.ScoreModel(net, sd.VPSDE())
    x = torch.randn(3, 1, 4, 4)
    model.eps(x, 0.5)
    model.score(x, torch.tensor([0.1, 0.2, 0.3]))
    assert model.nfe == 2 and seen == [(3,), (3,)]


def test_score_model_probe_names_shapes():
    model = sd.ScoreModel(lambda x, t: x[:, :1], sd.VPSDE())
    with pytest.raises(ValueError, match=r"output has shape \(2, 1\) but x has shape \(2, 3\)"):
        model.eps(torch.zeros(2, 3), 0.5)
    with pytest.raises(ValueError, match=r"unknown prediction 'noise'; allowed: eps, x0, v, score"):
        sd.ScoreModel(lambda x, t: x, sd.VPSDE(), prediction="noise")
    with pytest.raises(TypeError, match=r"sde must be a forward process"):
        sd.ScoreModel(lambda x, t: x, "vp")
    with pytest.raises(ValueError, match=r"t has shape \(2,\); expected a scalar or shape \(3,\)"):
        sd.ScoreModel(lambda x, t: x, sd.VPSDE()).eps(torch.zeros(3, 2), torch.ones(2) / 2)


def test_reverse_drift_formula():
    """Reverse SDE drift f x - g^2 score and PF-ODE drift f x - g^2 score / 2."""
    sde = sd.VPSDE()
    model = mixture((2,)).score_model(sde)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    f, g2, score = sde.f(t)[:, None], sde.g2(t)[:, None], model.score(x, t)
    torch.testing.assert_close(sde.reverse_drift(model, x, t), f * x - g2 * score)
    torch.testing.assert_close(sde.reverse_drift(model, x, t, probability_flow=True),
                               f * x - 0.5 * g2 * score)

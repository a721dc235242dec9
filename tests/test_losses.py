"""Denoising score matching against the closed-form loss of Gaussian data."""

import math

import pytest
import torch
from scipy import integrate

import sdediff as sd


def gaussian_eps_model(sde, s):
    """Exact eps for data N(0, s^2 I): E[eps | x_t] = sigma x_t / (alpha^2 s^2 + sigma^2)."""
    gmm = sd.GaussianMixture(torch.zeros(1, 1, dtype=torch.float64), s)
    return gmm.score_model(sde)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()], ids=repr)
@pytest.mark.parametrize("weighting", ["eps", "likelihood"])
def test_loss_of_exact_model_is_the_posterior_variance(sde, weighting):
    """With the exact eps, the loss is E_t[w(t) Var(eps | x_t)], Var = a^2 s^2 / (a^2 s^2 + sigma^2)."""
    s, t_min, n = 0.7, 0.05, 400_000
    model = gaussian_eps_model(sde, s)
    x0 = s * torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = float(sd.dsm_loss(model, x0, weighting=weighting,
                             generator=torch.Generator().manual_seed(1), t_min=t_min))

    def integrand(t):
        alpha, sigma = (float(v) for v in sde.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        w = 1.0 if weighting == "eps" else float(sde.g2(torch.tensor(t, dtype=torch.float64))) / sigma**2
        return w * alpha**2 * s**2 / (alpha**2 * s**2 + sigma**2)

    expected = integrate.quad(integrand, t_min, sde.T, limit=200)[0] / (sde.T - t_min)
    assert loss == pytest.approx(expected, rel=0.02)


def test_likelihood_weighting_on_ve_is_a_constant_factor():
    """For VE, g^2 / sigma^2 = 2 log(sigma_max / sigma_min) at every t."""
    sde = sd.VESDE()
    model = sd.ScoreModel(lambda x, t: 0.1 * x, sde)
    x0 = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    plain = sd.dsm_loss(model, x0, "eps", generator=torch.Generator().manual_seed(5))
    weighted = sd.dsm_loss(model, x0, "likelihood", generator=torch.Generator().manual_seed(5))
    assert float(weighted) == pytest.approx(2 * math.log(5000) * float(plain), rel=1e-5)


def test_loss_is_seeded_and_differentiable():
    net = torch.nn.Linear(2, 2)
    model = sd.ScoreModel(lambda x, t: net(x), sd.VPSDE())
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    a = sd.dsm_loss(model, x0, generator=torch.Generator().manual_seed(1))
    b = sd.dsm_loss(model, x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dim() == 0
    a.backward()
    assert net.weight.grad is not None and bool(net.weight.grad.abs().sum() > 0)


def test_bad_weighting():
    model = sd.ScoreModel(lambda x, t: x, sd.VPSDE())
    with pytest.raises(ValueError, match=r"unknown weighting 'snr'; allowed: eps, likelihood"):
        sd.dsm_loss(model, torch.zeros(2, 2), weighting="snr")

"""Forward processes against independent derivations: finite differences, simulation, closed forms."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import sdediff as sd
from sdediff.sde import sde_from_config

PROCESSES = {
    "vp-linear": lambda: sd.VPSDE(),
    "vp-cosine": lambda: sd.VPSDE("cosine"),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(),
}


@pytest.fixture(params=list(PROCESSES))
def sde(request):
    return PROCESSES[request.param]()


def grid(sde, n=41, dtype=torch.float64):
    return torch.linspace(1e-4, sde.T - 1e-4, n, dtype=dtype)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vp_preserves_variance(schedule, dtype):
    sde = sd.VPSDE(schedule)
    alpha, sigma = sde.alpha_sigma(grid(sde, dtype=dtype))
    assert alpha.dtype == dtype and sigma.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), atol=tol, rtol=0)


def test_alpha_sigma_closed_forms():
    """Spot values from the definitions (Song et al. 2021 and the reference notes)."""
    t = torch.tensor([1e-3, 1.0], dtype=torch.float64)
    alpha, sigma = sd.VPSDE().alpha_sigma(t)
    np.testing.assert_allclose(alpha[1], math.exp(-0.25 * 19.9 - 0.05), rtol=1e-12)
    np.testing.assert_allclose(sd.VPSDE().log_snr(t), [4.558, -5.025], atol=1e-3)
    _, sub_sigma = sd.SubVPSDE().alpha_sigma(t)
    np.testing.assert_allclose(sub_sigma, 1 - alpha**2, rtol=1e-12)  # no square root
    _, ve_sigma = sd.VESDE().alpha_sigma(t)
    np.testing.assert_allclose(ve_sigma, [0.01 * 5000**1e-3, 50.0], rtol=1e-12)
    cos = sd.VPSDE("cosine")
    a_cos, _ = cos.alpha_sigma(torch.tensor([0.3], dtype=torch.float64))
    s = 0.008
    expected = math.cos((0.3 + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)
    np.testing.assert_allclose(a_cos, [expected], rtol=1e-12)
    assert float(cos.alpha(cos.T)) > 0


def test_drift_and_diffusion_match_finite_differences(sde):
    """f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2, by central differences."""
    t = grid(sde, 23)
    h = 1e-6
    log_alpha = lambda u: torch.log(sde.alpha_sigma(u)[0])  # noqa: E731
    var = lambda u: sde.alpha_sigma(u)[1] ** 2  # noqa: E731
    f_fd = (log_alpha(t + h) - log_alpha(t - h)) / (2 * h)
    g2_fd = (var(t + h) - var(t - h)) / (2 * h) - 2 * f_fd * var(t)
    torch.testing.assert_close(sde.f(t), f_fd, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sde.diffusion(t) ** 2, g2_fd, rtol=1e-6, atol=1e-7)
    x = torch.randn(23, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sde.drift(x, t), f_fd[:, None] * x, rtol=1e-6, atol=1e-7)


def test_forward_sde_simulation_matches_perturb(sde):
    """Euler–Maruyama on dx = f x dt + g dw from t0 to t1 reproduces perturb's marginal at t1."""
    g = torch.Generator().manual_seed(1)
    n, x0_value = 40_000, 1.5
    t0, t1, steps = 0.02, 0.6, 600
    x0 = torch.full((n, 1), x0_value, dtype=torch.float64)
    x, _ = sde.perturb(x0, torch.tensor(t0, dtype=torch.float64), generator=g)
    ts = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:], strict=True):
        dt = b - a
        x = x + sde.drift(x, a) * dt + sde.diffusion(a) * dt.sqrt() * torch.randn(
            x.shape, generator=g, dtype=x.dtype)
    target, _ = sde.perturb(x0, torch.tensor(t1, dtype=torch.float64), generator=g)
    alpha, sigma = sde.alpha_sigma(torch.tensor(t1, dtype=torch.float64))
    # four standard errors, plus the O(dt) bias of Euler–Maruyama
    se_mean, se_var = float(sigma) / math.sqrt(n), float(sigma) ** 2 * math.sqrt(2 / n)
    for sample in (x, target):
        assert abs(float(sample.mean()) - float(alpha) * x0_value) < 4 * se_mean + 2e-3
        assert abs(float(sample.var()) - float(sigma) ** 2) < 4 * se_var + 2e-3 * float(sigma) ** 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_snr_inverse(sde, dtype):
    t = torch.cat([torch.tensor([1e-5, 1e-3], dtype=dtype), grid(sde, dtype=dtype)]).sort().values
    lam = sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "log-SNR must be strictly decreasing"
    back = sde.t_of_log_snr(lam)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-5)
    torch.testing.assert_close(back, t, **tol)


def test_sigma_is_accurate_near_zero():
    """sigma in float32 near t=0 is as accurate as float64 (expm1, no 1 - alpha^2 cancellation)."""
    for sde in (sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE()):
        t = torch.tensor([1e-7, 1e-5, 1e-3])
        s32 = sde.alpha_sigma(t)[1]
        s64 = sde.alpha_sigma(t.double())[1]
        assert bool((s32 > 0).all())
        torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=0)


def test_ddpm_discretization():
    chain = sd.VPSDE().discretize(1000)
    torch.testing.assert_close(chain.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert chain.index_to_time(torch.tensor(1)) == pytest.approx(1e-3)
    assert int(chain.time_to_index(torch.tensor(0.5))) == 500
    # the discrete alpha_bar follows the continuous alpha^2 closely (Song et al., App. B)
    alpha = sd.VPSDE().alpha(chain.times)
    torch.testing.assert_close(chain.alphas_cumprod, alpha**2, rtol=0.06, atol=1e-4)
    # cosine: beta_i = 1 - alpha(t_i)^2 / alpha(t_{i-1})^2 telescopes to alpha_bar_i = alpha(t_i)^2
    cos = sd.VPSDE("cosine")
    chain = cos.discretize(200)
    assert float(chain.betas.max()) <= 0.999
    unclipped = chain.betas < 0.999
    torch.testing.assert_close(chain.alphas_cumprod[unclipped],
                               cos.alpha(chain.times[unclipped]) ** 2, rtol=1e-10, atol=1e-14)


def test_prior(sde):
    g = torch.Generator().manual_seed(2)
    z = sde.prior_sample((4000, 3), generator=g, dtype=torch.float64)
    assert z.shape == (4000, 3)
    assert abs(float(z.std()) / sde.prior_std - 1) < 0.03
    expected = stats.norm(0, sde.prior_std).logpdf(z.numpy()).sum(axis=1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-10)
    # the prior is close to the true marginal at T for unit-scale data
    alpha, sigma = sde.alpha_sigma(torch.tensor(sde.T, dtype=torch.float64))
    assert abs(math.sqrt(float(alpha**2 + sigma**2)) / sde.prior_std - 1) < 1e-3


def test_perturb_is_seeded_and_shaped(sde):
    x0 = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.rand(5, generator=torch.Generator().manual_seed(1))
    a = sde.perturb(x0, t, generator=torch.Generator().manual_seed(3))
    b = sde.perturb(x0, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and a[0].shape == x0.shape and a[0].dtype == x0.dtype
    alpha, sigma = sde.alpha_sigma(t)
    torch.testing.assert_close(a[0], alpha.float()[:, None, None, None] * x0
                               + sigma.float()[:, None, None, None] * a[1])


def test_config_round_trip(sde):
    rebuilt = sde_from_config(sde.config())
    t = grid(sde, 5)
    torch.testing.assert_close(rebuilt.alpha_sigma(t), sde.alpha_sigma(t))


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match=r"unknown schedule 'quad'; allowed: linear, cosine"):
        sd.VPSDE("quad")
    with pytest.raises(ValueError, match=r"beta_max must be in .*got 0.05"):
        sd.VPSDE(beta_min=0.1, beta_max=0.05)
    with pytest.raises(ValueError, match=r"unknown process 'vq'; allowed: vp, subvp, ve"):
        sde_from_config({"name": "vq"})
    with pytest.raises(ValueError, match=r"unknown option 'sigma' for process 've'"):
        sde_from_config({"name": "ve", "sigma": 3})
    with pytest.raises(ValueError, match=r"N must be >= 1, got 0"):
        sd.VPSDE().discretize(0)

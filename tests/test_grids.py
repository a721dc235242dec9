"""Time grids: exact endpoints, strict decrease, and each spacing checked in its own variable."""

import math

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff.samplers.grids import CONTINUOUS_GRIDS, EDM_SIGMA_MAX, KARRAS_RHO, karras, make_grid

PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()]


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
@pytest.mark.parametrize("name", list(CONTINUOUS_GRIDS))
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_grid_endpoints_and_monotone(sde, name, steps):
    ts = make_grid(name, sde, steps, 1e-3)
    assert ts.dtype == torch.float64 and ts.shape == (steps + 1,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == 1e-3  # first call at exactly T
    assert bool((ts[1:] < ts[:-1]).all())  # no zero-size (duplicated) step


def test_grid_spacings():
    sde, n, t_end = sd.VPSDE(), 10, 1e-3
    np.testing.assert_allclose(np.diff(make_grid("uniform", sde, n, t_end).numpy()),
                               (t_end - 1) / n, rtol=1e-12)
    lam = sde.log_snr(make_grid("logsnr", sde, n, t_end))
    np.testing.assert_allclose(np.diff(lam.numpy()), float(lam[-1] - lam[0]) / n, rtol=1e-9)
    root = make_grid("quadratic", sde, n, t_end).sqrt()
    np.testing.assert_allclose(np.diff(root.numpy()), (math.sqrt(t_end) - 1) / n, rtol=1e-12)
    sigma = torch.exp(-sde.log_snr(make_grid("karras", sde, n, t_end)))  # sigma/alpha
    ramp = sigma ** (1 / KARRAS_RHO)
    np.testing.assert_allclose(np.diff(ramp.numpy()), float(ramp[-1] - ramp[0]) / n, rtol=1e-9)
    for rho in (1.0, 4.0):                   # karras(rho=...): the same spacing in sigma^(1/rho)
        ramp = torch.exp(-sde.log_snr(karras(sde, n, t_end, rho=rho))) ** (1 / rho)
        np.testing.assert_allclose(np.diff(ramp.numpy()), float(ramp[-1] - ramp[0]) / n, rtol=1e-9)


def test_edm_grid_uses_edm_range():
    vp = sd.VPSDE()
    ts = make_grid("edm", vp, 10, 1e-3)
    sigma = torch.exp(-vp.log_snr(ts))
    assert float(sigma[0]) == pytest.approx(152.2, rel=1e-3)  # pinned at T
    rho = 1 / KARRAS_RHO
    step = (float(sigma[-1]) ** rho - EDM_SIGMA_MAX**rho) / 10
    assert float(sigma[1]) ** rho == pytest.approx(EDM_SIGMA_MAX**rho + step, rel=1e-9)
    ve = sd.VESDE()  # sigma~ in [0.01, 50]: inside EDM's range, so edm == karras
    torch.testing.assert_close(make_grid("edm", ve, 10, 1e-3), make_grid("karras", ve, 10, 1e-3))


def test_explicit_grid_and_errors():
    sde = sd.VPSDE()
    ts = torch.tensor([1.0, 0.5, 0.1, 1e-3], dtype=torch.float64)
    torch.testing.assert_close(make_grid(ts, sde, 3, 1e-3), ts)
    with pytest.raises(ValueError, match=r"strictly decreasing"):
        make_grid(torch.tensor([1.0, 0.5, 0.5, 1e-3]), sde, 3, 1e-3)
    with pytest.raises(ValueError, match=r"from T = 1.0 to t_end = 0.001, got 0.9 .. 0.001"):
        make_grid(torch.tensor([0.9, 0.5, 1e-3]), sde, 2, 1e-3)
    with pytest.raises(ValueError, match=r"unknown schedule 'cosine'; allowed: uniform, logsnr"):
        make_grid("cosine", sde, 3, 1e-3)
    with pytest.raises(ValueError, match=r"steps must be >= 1, got 0"):
        make_grid("uniform", sde, 0, 1e-3)

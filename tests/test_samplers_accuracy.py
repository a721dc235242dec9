"""Deterministic samplers against the exact probability-flow endpoint (scipy DOP853 reference):
the error falls with steps at the sampler's declared order. Driven by the registry."""

import pytest
import torch

import sdediff as sd
from tests.exact import exact_pf_endpoint, ring_mixture, rms, slope

DETERMINISTIC = [name for name in sd.samplers.available()
                 if not sd.samplers.get(name).is_stochastic() and not sd.samplers.get(name).adaptive]
PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()]


@pytest.fixture(scope="module")
def problems():
    out = {}
    for sde in PROCESSES:
        gmm = ring_mixture()
        x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
        out[repr(sde)] = (sde, gmm.score_model(sde), x_T, exact_pf_endpoint(gmm, sde, x_T, 1e-3))
    return out


def errors(name, problem, steps, **options):
    sde, model, x_T, reference = problem
    return [rms(sd.sample(model, x_T=x_T, sampler=name, steps=n, denoise=False, schedule="logsnr",
                          **options), reference) for n in steps]


def fit_steps(order):
    """Step counts where the declared order shows. Order 1: [40, 80, 160]; order 2:
    [20, 40, 80]; order 3: [80, 160, 320]. A multistep predictor-corrector (``unipc``) evaluates
    the model at the predictor's lower-order point, and near ``t_end`` (where ``x0`` follows ``x``
    one to one) that error enters the next step at full weight ``1 - e^{-h}`` until the log-SNR
    step ``h`` is small: on the logsnr grid UniPC-2 measures 2.1-2.6 from 20-80 steps and 3.0 from
    80-320 (``tests/test_fast_solvers.py``). Order 4 (``lms``): [40, 80, 160], where its error has
    settled to h^4 (3.8-4.25 on the four processes); further out it still falls faster than h^4
    (4.3-4.4 from 80-320) until rounding, then stops."""
    return [20, 40, 80] if order == 2 else [80, 160, 320] if order == 3 else [40, 80, 160]


#: Samplers whose declared (asymptotic) order shows only further out, measured on the logsnr grid:
#: bdia (order 2) falls faster at first (3.4-3.6 from 20-80 steps on VP and sub-VP) and reads
#: 2.0-2.2 from 80-320 on all three; edict (order 1) reads 1.9-2.7 below 160 steps and
#: 1.0-1.07 from 320-1280.
LATE_ORDER = {"bdia": [80, 160, 320], "edict": [320, 640, 1280]}


@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_converges_at_declared_order(name, sde, problems):
    # ipndm at order 4, where its formal order 2 on a non-uniform grid shows from 40-160 steps on
    # every process (its default order 3 reads 2.33 on VE there: not yet asymptotic)
    options = {"order": 4} if name == "ipndm" else {}
    order = sd.samplers.get(name, **options).order
    steps = LATE_ORDER.get(name) or fit_steps(order)
    errs = errors(name, problems[repr(sde)], steps, **options)
    observed = slope(steps, errs)
    print(f"{name} on {sde!r}: errors {errs}, observed order {observed:.2f}")
    assert errs[-1] < errs[0]
    assert abs(observed - order) < 0.3

"""The adaptive exponential Adams-Bashforth-Moulton solver ``abm_adaptive`` against the exact
probability-flow endpoint (scipy DOP853), its one-call-per-attempt accounting, and its options."""

import math

import pytest
import scipy.integrate
import torch

import sdediff as sd
from sdediff.checks import NumericalError
from sdediff.samplers.expint import moments, noise_moments
from tests.exact import exact_pf_endpoint, ring_mixture, rms

PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.VESDE(), sd.SubVPSDE()]
T_END = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def problems(one_thread):
    """Per process: (model, x_T float64 (32, 2), exact endpoint at T_END)."""
    out = {}
    gmm = ring_mixture()
    for sde in PROCESSES:
        x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
        out[repr(sde)] = (gmm.score_model(sde), x_T, exact_pf_endpoint(gmm, sde, x_T, T_END))
    return out


def solve(model, x_T, sampler="abm_adaptive", t_end=T_END, **options):
    return sd.sample(model, x_T=x_T, sampler=sampler, t_end=t_end, denoise=False,
                     return_info=True, **options)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_error_falls_as_the_tolerance_tightens(sde, dtype, problems):
    model, x_T, reference = problems[repr(sde)]
    tols = [1e-2, 1e-3, 1e-4]
    results = [solve(model, x_T.to(dtype), rtol=tol, atol=tol) for tol in tols]
    errors = [rms(r.x, reference) for r in results]
    nfes = [r.nfe for r in results]
    print(f"{sde!r} {dtype}: errors {errors}, nfe {nfes}")
    for tol, r, error in zip(tols, results, errors, strict=True):
        assert r.x.dtype == dtype and float(r.times[-1]) == T_END
        assert error <= tol                          # global error within the tolerance
    assert errors[2] < errors[1] < errors[0] / 3     # and falling with it
    assert 0 < nfes[0] < nfes[1] < nfes[2]           # counted, and cheaper when looser


def test_half_the_calls_of_dpm_adaptive(problems):
    """NFE to an RMS error of 1e-3 (the loosest of rtol = atol = 10^(-k/4)): at most 0.6x of
    dpm_adaptive's (0.4-0.5x measured here and in benchmarks/results/adaptive.md)."""
    model, x_T, reference = problems[repr(sd.VPSDE())]

    def calls_to_target(sampler):
        for k in range(4, 24):
            result = solve(model, x_T, sampler, rtol=10 ** (-k / 4), atol=10 ** (-k / 4))
            if rms(result.x, reference) <= 1e-3:
                return result.nfe
        raise AssertionError(f"{sampler} never reached 1e-3")

    ours, theirs = calls_to_target("abm_adaptive"), calls_to_target("dpm_adaptive")
    print(f"NFE to 1e-3: abm_adaptive {ours}, dpm_adaptive {theirs}")
    assert ours <= 0.6 * theirs


def test_one_call_per_attempted_step():
    """The first call is at exactly T and the last at exactly t_end; every other call is one
    attempt: an accepted step continues beyond it, a rejected one retries a shorter step from the
    same point. NFE counts every call, and a rerun repeats them exactly."""
    sde, gmm = sd.VPSDE(), ring_mixture()
    calls = []

    def score(x, t):
        calls.append(float(t.reshape(-1)[0]))
        return gmm.score(x, t.double(), sde)

    model = sd.ScoreModel.from_fn(score, sde)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t_end = 2e-3
    result = solve(model, x_T, t_end=t_end, rtol=1e-3, atol=1e-3)
    times = list(calls)
    assert len(times) == result.nfe and times[0] == sde.T and times[-1] == t_end
    assert all(t_end <= t < sde.T for t in times[1:])
    accepted, rejected, reached = [], [], sde.T
    for t, t_next in zip(times[1:], times[2:] + [None], strict=True):
        if t_next is None or t_next < t:        # the solve went on from t: accepted
            assert t < reached
            accepted.append(t)
            reached = t
        else:                                   # retried from the same point, a shorter step
            assert reached > t_next > t
            rejected.append(t)
    assert len(accepted) + len(rejected) + 1 == result.nfe
    assert len(rejected) <= len(accepted) / 4   # the margin below the threshold keeps these rare
    reference = exact_pf_endpoint(gmm, sde, x_T, t_end)
    assert rms(result.x, reference) < 1e-3     # the state is the endpoint at t_end
    calls.clear()
    again = solve(model, x_T, t_end=t_end, rtol=1e-3, atol=1e-3)
    assert torch.equal(again.x, result.x) and calls == times


def test_both_forms_converge_and_the_switch_helps(problems):
    """switch_log_snr=None (data prediction throughout) and a switch before T (noise prediction
    throughout) are the same method in one form; both converge, and the default switch at
    lambda = 0 is more accurate than either at every tolerance, for no more calls."""
    model, x_T, reference = problems[repr(sd.VPSDE())]
    runs = {}
    for switch in (0.0, None, -100.0):
        results = [solve(model, x_T, rtol=tol, atol=tol, switch_log_snr=switch)
                   for tol in (1e-2, 1e-3)]
        runs[switch] = [(rms(r.x, reference), r.nfe) for r in results]
        assert runs[switch][1][0] < runs[switch][0][0] / 3
    print(runs)
    for i in range(2):
        error, nfe = runs[0.0][i]
        for switch in (None, -100.0):
            assert error < runs[switch][i][0] and nfe <= runs[switch][i][1]


def test_takes_any_prediction_type():
    """An eps-predicting net gives the same samples as the exact score (the solver asks for x0
    before the switch and eps after: one conversion in score.py either way)."""
    sde, gmm = sd.VPSDE("cosine"), ring_mixture()

    def eps(x, t):
        return -sde.alpha_sigma(t.double())[1].to(x)[:, None] * gmm.score(x, t.double(), sde)

    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = solve(gmm.score_model(sde), x_T, rtol=1e-3, atol=1e-3)
    b = solve(sd.ScoreModel(eps, sde, prediction="eps"), x_T, rtol=1e-3, atol=1e-3)
    assert a.nfe == b.nfe and torch.allclose(a.x, b.x, atol=1e-10)


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_no_nan_down_to_1e_5_in_float32(sde):
    model = ring_mixture().score_model(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(1))
    for tol in (0.05, 1e-4):
        result = solve(model, x_T, t_end=1e-5, rtol=tol, atol=tol)
        assert result.x.dtype == torch.float32 and bool(torch.isfinite(result.x).all())


def test_defaults_and_declared_metadata(problems):
    sampler = sd.samplers.get("abm_adaptive")
    assert sampler.options == {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.1,
                               "switch_log_snr": 0.0}
    assert sampler.adaptive and not sampler.stochastic and sampler.order == 3
    assert sampler.nfe(10) is None
    assert sd.samplers.get("abm_adaptive", order=2).order == 2
    model, x_T, reference = problems[repr(sd.VPSDE())]
    assert rms(solve(model, x_T).x, reference) < 0.05      # loose, image-scale tolerances
    # every order converges; from order 2 the error stays within the tolerance
    for order in (1, 2, 4):
        errors = [rms(solve(model, x_T, order=order, rtol=tol, atol=tol).x, reference)
                  for tol in (1e-2, 1e-3)]
        assert errors[1] < errors[0] / 2.5
        assert order == 1 or errors[1] <= 1e-3


def test_refuses_bad_options_and_reports_breakdown():
    model = ring_mixture().score_model(sd.VPSDE())
    for options, message in [({"order": 5}, r"order must be <= 4, got 5"),
                             ({"order": 0}, r"order must be >= 1, got 0"),
                             ({"rtol": -1.0}, r"rtol must be in \[0.0, inf\), got -1.0"),
                             ({"rtol": 0.0, "atol": 0.0}, r"rtol and atol cannot both be 0"),
                             ({"h_init": 0.0}, r"h_init must be in \(0.0, inf\), got 0.0"),
                             ({"switch_log_snr": math.nan},
                              r"switch_log_snr must be in \(-inf, inf\), got nan")]:
        with pytest.raises(ValueError, match=message):
            sd.sample(model, shape=(2, 2), sampler="abm_adaptive", **options)
    with pytest.raises(TypeError, match=r"switch_log_snr must be a number or None .* got 'zero'"):
        sd.samplers.get("abm_adaptive", switch_log_snr="zero")
    with pytest.raises(ValueError, match=r"unknown option 'schedule' for sampler 'abm_adaptive'"):
        sd.sample(model, shape=(2, 2), sampler="abm_adaptive", schedule="logsnr")
    with pytest.raises(ValueError, match=r"steps=10 given to the adaptive sampler 'abm_adaptive'"):
        sd.sample(model, shape=(2, 2), sampler="abm_adaptive", steps=10)
    with pytest.raises(ValueError, match=r"rtol = 1e-06, atol = 1e-06 are below what "
                                         r"torch.float32 resolves \(10 eps = 1.19e-06\)"):
        sd.sample(model, shape=(4, 2), sampler="abm_adaptive", rtol=1e-6, atol=1e-6)
    nan_model = sd.ScoreModel.from_fn(lambda x, t: torch.full_like(x, math.nan), sd.VPSDE())
    with pytest.raises(NumericalError, match=r"abm_adaptive: non-finite error estimate"):
        sd.sample(nan_model, shape=(4, 2), sampler="abm_adaptive")


def test_noise_moments_are_the_integrals():
    """noise_moments(h, p)[k] = int_0^h e^{h - tau} (tau/h)^k dtau (and moments() with e^{-(h-tau)})."""

    def integral(h, k, sign):
        return scipy.integrate.quad(lambda tau: math.exp(sign * (h - tau)) * (tau / h) ** k, 0, h)[0]

    for h in (0.05, 0.7, 2.5):
        for k, (g_noise, g_data) in enumerate(zip(noise_moments(h, 4), moments(h, 4), strict=True)):
            assert math.isclose(g_noise, integral(h, k, 1.0), rel_tol=1e-12)
            assert math.isclose(g_data, integral(h, k, -1.0), rel_tol=1e-12)

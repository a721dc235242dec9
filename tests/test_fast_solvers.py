"""The fast solvers (``heun``, ``dpm_solver++``, ``unipc``, ``ipndm``) and their coefficients
(``samplers/expint.py``): convergence at the documented order against the exact probability-flow
endpoint in float64 and float32, identities between solvers, float32 robustness down to
``t_end = 1e-5`` on every grid, option validation and exact NFE."""

import itertools
import math

import pytest
import torch
from scipy.integrate import quad

import sdediff as sd
from sdediff.samplers import expint
from tests.exact import exact_pf_endpoint, ring_mixture, rms, slope

PROCESSES = {"vp": sd.VPSDE(), "cosine": sd.VPSDE("cosine"), "ve": sd.VESDE()}
GRIDS = ["uniform", "logsnr", "quadratic", "karras", "edm"]

#: (sampler, options, step counts for the slope fit). Step counts per method where its order
#: shows: first-order methods [40, 80, 160]; multistep predictor-correctors with declared order 3
#: need log-SNR steps below ~0.1 (see tests/test_samplers_accuracy.py::fit_steps); iPNDM's
#: constant AB weights on the non-uniform karras grid reach their order 2 late.
CASES = [
    ("dpm_solver++", {"order": 1}, [40, 80, 160]),
    ("dpm_solver++", {"order": 2}, [20, 40, 80]),
    ("dpm_solver++", {"order": 3}, [20, 40, 80]),
    ("unipc", {"order": 1, "variant": "bh2"}, [40, 80, 160]),
    ("unipc", {"order": 2, "variant": "bh2"}, [80, 160, 320]),
    ("unipc", {"order": 3, "variant": "bh1", "lower_order_final": False}, [20, 40, 80]),
    ("heun", {}, [20, 40, 80]),
    ("ipndm", {}, [160, 320, 640]),
]
SLOW_CASES = [
    ("dpm_solver++", {"order": 3, "reference_3m": True}, [80, 160, 320]),
    ("unipc", {"order": 1, "variant": "bh1"}, [40, 80, 160]),
    ("unipc", {"order": 2, "variant": "bh1"}, [80, 160, 320]),
    ("unipc", {"order": 3, "variant": "bh2", "lower_order_final": False}, [20, 40, 80]),
    ("dpm_solver++", {"order": 3, "lower_order_final": False}, [20, 40, 80]),
    ("ipndm", {"order": 1}, [40, 80, 160]),
    ("ipndm", {"order": 2}, [160, 320, 640]),
    ("ipndm", {"order": 3}, [160, 320, 640]),
    ("ipndm", {"schedule": "logsnr"}, [20, 40, 80]),
    ("heun", {"schedule": "logsnr"}, [20, 40, 80]),
]
#: Allowed ``observed - declared`` (default +-0.3). UniPC order 3 (declared 4, by its corrector),
#: fitted without lower-order final steps (whose first-order last step would cap it at 2): the
#: first, warm-up step (UniP-1 + UniC-1) has local error O(h^3), which takes over beyond ~100
#: steps, and between 20 and 80 steps the O(h^4) error of the later steps hands over to it, so
#: the fit reads 4.0-4.6 there (local slopes from 3.4 to 4.9 over 20-320 steps).
TOLERANCE = {("unipc", 3): (-0.3, 0.7)}
#: float32 state: round-off stays far below these errors (> 1e-6), so the same fits hold.
DTYPES = [torch.float64, torch.float32]


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def problems():
    """Per process: the exact-score model, a float32 ``x_T`` (16 samples) and the scipy
    reference endpoint from exactly that ``x_T``."""
    out = {}
    for key, sde in PROCESSES.items():
        gmm = ring_mixture()
        x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))
        out[key] = (gmm.score_model(sde), x_T, exact_pf_endpoint(gmm, sde, x_T.double(), 1e-3))
    return out


#: The grids the documented orders are measured on (their defaults before the ``auto`` grid): on
#: ``auto`` (time-quadratic on VP) the last log-SNR step is the largest, so 20-80 steps are not
#: yet asymptotic there.
ORDER_GRIDS = {"dpm_solver++": "logsnr", "unipc": "logsnr", "ipndm": "karras"}


def check_order(problem, name, options, steps, dtype):
    model, x_T, reference = problem
    options = {"schedule": ORDER_GRIDS.get(name, "karras"), **options}
    sampler = sd.samplers.get(name, **options)
    errs = [rms(sd.sample(model, x_T=x_T.to(dtype), sampler=name, steps=n, denoise=False,
                          **options), reference) for n in steps]
    observed = slope(steps, errs)
    low, high = TOLERANCE.get((name, options.get("order")), (-0.3, 0.3))
    assert errs[0] > errs[1] > errs[2], errs
    assert low < observed - sampler.order < high, (
        f"{name} {options}: declared order {sampler.order}, observed {observed:.2f}, errors {errs}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize(("name", "options", "steps"), CASES,
                         ids=[f"{n}-{o}" for n, o, _ in CASES])
def test_converges_at_documented_order(problems, name, options, steps, process, dtype):
    check_order(problems[process], name, options, steps, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize(("name", "options", "steps"), SLOW_CASES,
                         ids=[f"{n}-{o}" for n, o, _ in SLOW_CASES])
def test_converges_at_documented_order_other_options(problems, name, options, steps, process,
                                                     dtype):
    check_order(problems[process], name, options, steps, dtype)


def test_third_order_beats_the_reference_3m_asymptotically(problems):
    """The reference code's 3M is formally second order (half the D_2 weight); ours is third."""
    model, x_T, reference = problems["vp"]
    err = {ref: [rms(sd.sample(model, x_T=x_T.double(), sampler="dpm_solver++", steps=n,
                               denoise=False, order=3, reference_3m=ref, schedule="logsnr"),
                     reference)
                 for n in (80, 160, 320)] for ref in (False, True)}
    assert slope([80, 160, 320], err[False]) > 2.8
    assert slope([80, 160, 320], err[True]) < 2.4
    assert err[False][-1] < err[True][-1] / 2


# --- identities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("process", ["vp", "cosine", "ve", "subvp"])
@pytest.mark.parametrize("grid", GRIDS)
def test_dpm_solver_pp_order_1_is_ddim(process, grid):
    sde = PROCESSES.get(process) or sd.SubVPSDE()
    model = ring_mixture().score_model(sde)
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(3),
                           dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        kw = {"x_T": x_T.to(dtype), "steps": 12, "schedule": grid, "denoise": False}
        a = sd.sample(model, sampler="dpm_solver++", order=1, **kw)
        b = sd.sample(model, sampler="ddim", eta=0.0, **kw)
        c = sd.sample(model, sampler="ipndm", order=1, **kw)
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= tol * scale
        assert float((c - b).abs().max()) <= tol * scale


def test_unipc_predictor_2_bh2_is_dpm_solver_pp_2m_and_corrector_1_is_trapezoid():
    h, r = 0.37, [0.0, -1.3]
    assert expint.unipc_weights(h, r, "bh2", corrector=False) == pytest.approx(
        expint.dpmpp_weights(h, r, expint.DPMPP_MOMENTS[2]), rel=1e-14)
    half = -math.expm1(-h) / 2
    assert expint.unipc_weights(h, [0.0, 1.0], "bh2", corrector=True) == pytest.approx(
        [half, half], rel=1e-14)
    # bh1 and bh2 differ only where rho is fixed (order-2 predictor, order-1 corrector)
    r3 = [0.0, -1.3, -2.1]
    assert expint.unipc_weights(h, r3, "bh1", corrector=False) == pytest.approx(
        expint.unipc_weights(h, r3, "bh2", corrector=False), rel=1e-12)
    assert expint.unipc_weights(h, r, "bh1", corrector=False) != pytest.approx(
        expint.unipc_weights(h, r, "bh2", corrector=False), rel=1e-6)


# --- coefficients -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("z", [-1e-9, -1e-4, -0.2, -0.999, -1.0, -1.001, -4.0, -20.0, 0.7, 3.0])
def test_phi_matches_its_integral(k, z):
    """phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1} / (k-1)! du (k >= 1), phi_0 = e^z."""
    if k == 0:
        expected = math.exp(z)
    else:
        expected = quad(lambda u: math.exp((1 - u) * z) * u ** (k - 1), 0, 1,
                        epsabs=0, epsrel=1e-13)[0] / math.factorial(k - 1)
    assert expint.phi(k, z) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("h", [1e-4, 0.05, 0.7, 3.0])
def test_multistep_weights_integrate_polynomials_exactly(h):
    """Exact moments: sum_j w_j q(r_j h) = int_0^h e^{-(h - tau)} q(tau) dtau for deg q < p; the
    reference 3M weights miss the quadratic, UniC-p integrates degree p."""
    r = [0.0, -1.0, -2.5]

    def integral(q):
        return quad(lambda tau: math.exp(-(h - tau)) * q(tau), 0, h, epsabs=0, epsrel=1e-13)[0]

    quadratic = lambda tau: 1.0 - 2.0 * tau / h + 3.0 * (tau / h) ** 2   # noqa: E731
    for weights in (expint.dpmpp_weights(h, r, expint.DPMPP_MOMENTS[3]),
                    expint.unipc_weights(h, r, "bh1", corrector=False)):
        got = sum(w * quadratic(rj * h) for w, rj in zip(weights, r, strict=True))
        assert got == pytest.approx(integral(quadratic), rel=1e-9, abs=1e-15)
    reference = expint.dpmpp_weights(h, r, expint.DPMPP_3M_REFERENCE_MOMENTS)
    got = sum(w * quadratic(rj * h) for w, rj in zip(reference, r, strict=True))
    assert got != pytest.approx(integral(quadratic), rel=1e-6)
    cubic = lambda tau: (tau / h) ** 3 - tau / h                            # noqa: E731
    nodes = r + [1.0]
    weights = expint.unipc_weights(h, nodes, "bh2", corrector=True)
    got = sum(w * cubic(rj * h) for w, rj in zip(weights, nodes, strict=True))
    assert got == pytest.approx(integral(cubic), rel=1e-8, abs=1e-15)


def test_ipndm_weights_are_adams_bashforth():
    for k, w in expint.IPNDM_AB.items():
        assert sum(w) == pytest.approx(1.0)
        # exact for polynomials of degree < k on a unit grid: int_0^1 u^m du = sum_j w_j (-j)^m
        for m in range(k):
            assert sum(wj * (-j) ** m for j, wj in enumerate(w)) == pytest.approx(1 / (m + 1))


def test_step_orders_warm_up_and_lower_order_final():
    assert expint.step_orders(10, 3, True) == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    assert expint.step_orders(10, 3, False) == [1, 2] + [3] * 8
    assert expint.step_orders(4, 2, True) == [1, 2, 2, 1]
    assert expint.step_orders(1, 3, True) == [1]


# --- float32 robustness -------------------------------------------------------------------------
ALL_CONFIGS = ([("dpm_solver++", {"order": o}) for o in (1, 2, 3)]
               + [("dpm_solver++", {"order": 3, "reference_3m": True})]
               + [("unipc", {"order": o, "variant": v}) for o in (1, 2, 3) for v in ("bh1", "bh2")]
               + [("heun", {}), ("heun", {"s_churn": 10.0})]
               + [("ipndm", {"order": o}) for o in (1, 2, 3, 4)])


@pytest.mark.parametrize("process", ["vp", "cosine", "ve", "subvp"])
@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS, ids=[f"{n}-{o}" for n, o in ALL_CONFIGS])
def test_float32_finite_on_every_grid_down_to_t_end_1e_5(name, options, process):
    """No NaN or inf in float32 for any solver, order, variant and grid, with t_end = 1e-5, and
    the float32 result agrees with float64 (UniPC order 3 bh1 included, whose reference code
    returns NaN in float32)."""
    sde = PROCESSES.get(process) or sd.SubVPSDE()
    model = ring_mixture().score_model(sde)
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(1))
    for grid, steps in itertools.product(GRIDS, (3, 10)):
        kw = {"sampler": name, "steps": steps, "schedule": grid, "t_end": 1e-5, "denoise": False,
              **options}
        x32 = sd.sample(model, x_T=x_T, generator=torch.Generator().manual_seed(0), **kw)
        assert bool(torch.isfinite(x32).all()), (grid, steps)
        if not sd.samplers.get(name, **options).is_stochastic():
            x64 = sd.sample(model, x_T=x_T.double(), **kw)
            scale = max(1.0, float(x64.abs().max()))   # 2-3 Heun steps may overshoot to ~100
            assert rms(x32, x64) < 1e-3 * scale, (grid, steps, rms(x32, x64))


# --- options and NFE ----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "options", "error", "message"), [
    ("dpm_solver++", {"order": 4}, ValueError, r"order must be <= 3, got 4"),
    ("dpm_solver++", {"order": 0}, ValueError, r"order must be >= 1, got 0"),
    ("dpm_solver++", {"order": 2.0}, TypeError, r"order must be an integer, got 2.0"),
    ("dpm_solver++", {"order": True}, TypeError, r"order must be an integer, got True"),
    ("dpm_solver++", {"lower_order_final": "yes"}, TypeError,
     r"lower_order_final must be True or False, got 'yes'"),
    ("dpm_solver++", {"reference_3m": 1}, TypeError, r"reference_3m must be True or False, got 1"),
    ("dpm_solver++", {"schedule": "cosine"}, ValueError,
     r"unknown schedule 'cosine'; allowed: uniform, logsnr"),
    ("unipc", {"order": 4}, ValueError, r"order must be <= 3, got 4"),
    ("unipc", {"variant": "bh3"}, ValueError, r"unknown variant 'bh3'; allowed: bh1, bh2"),
    ("unipc", {"lower_order_final": None}, TypeError, r"lower_order_final must be True or False"),
    ("ipndm", {"order": 5}, ValueError, r"order must be <= 4, got 5"),
    ("ipndm", {"order": 0}, ValueError, r"order must be >= 1, got 0"),
    ("heun", {"s_churn": -1.0}, ValueError, r"s_churn must be in \[0.0, inf\), got -1.0"),
    ("heun", {"s_noise": -0.5}, ValueError, r"s_noise must be in \[0.0, inf\), got -0.5"),
    ("heun", {"s_tmin": 2.0, "s_tmax": 1.0}, ValueError, r"s_tmax must be in \[2.0, inf\), got 1.0"),
    ("heun", {"s_churn": "40"}, TypeError, r"s_churn must be a number, got '40'"),
    ("heun", {"order": 2}, ValueError,
     r"unknown option 'order' for sampler 'heun'; allowed: s_churn, s_noise, s_tmax, s_tmin, "
     r"schedule"),
])
def test_options_are_validated(name, options, error, message):
    with pytest.raises(error, match=message):
        sd.samplers.get(name, **options)


def test_declared_orders():
    get = sd.samplers.get
    assert [get("dpm_solver++", order=o).order for o in (1, 2, 3)] == [1, 2, 3]
    assert get("dpm_solver++", order=3, reference_3m=True).order == 2
    assert [get("unipc", order=o).order for o in (1, 2, 3)] == [2, 3, 4]
    assert [get("ipndm", order=o).order for o in (1, 2, 3, 4)] == [1, 2, 2, 2]
    assert get("heun").order == 2 and not get("heun").is_stochastic()
    assert get("heun", s_churn=5.0).is_stochastic()


@pytest.mark.parametrize(("name", "options"), ALL_CONFIGS, ids=[f"{n}-{o}" for n, o in ALL_CONFIGS])
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_counted_nfe_is_exact(name, options, steps):
    model = ring_mixture().score_model(sd.VPSDE())
    result = sd.sample(model, shape=(4, 2), sampler=name, steps=steps, denoise=False,
                       return_info=True, generator=torch.Generator().manual_seed(0), **options)
    expected = 2 * steps - 1 if name == "heun" else steps
    assert result.nfe == sd.samplers.get(name, **options).nfe(steps) == expected
    assert result.times.numel() == steps + 1


def test_heun_churn_is_seeded_and_stays_in_range():
    model = ring_mixture().score_model(sd.VPSDE())
    seen = []

    def net(x, t):
        seen.append(float(t.max()))
        return model.net(x, t)

    traced = sd.ScoreModel(net, model.sde, prediction=model.prediction)
    kw = {"sampler": "heun", "steps": 8, "s_churn": 20.0, "return_info": True, "denoise": False}
    a, b, c = (sd.sample(traced, shape=(8, 2), generator=torch.Generator().manual_seed(s), **kw)
               for s in (5, 5, 6))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.nfe == 15 and max(seen) <= model.sde.T      # s^ capped at s(T): never t > T
    # churn restricted to s in [s_tmin, s_tmax] (none in range: the deterministic sampler)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    quiet = sd.sample(model, x_T=x_T, sampler="heun", steps=8, s_churn=20.0, s_tmin=1e6,
                      generator=torch.Generator().manual_seed(5))
    assert torch.equal(quiet, sd.sample(model, x_T=x_T, sampler="heun", steps=8))

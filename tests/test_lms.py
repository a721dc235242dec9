"""The variable-step linear multistep sampler ``lms`` (``sdediff/samplers/lms.py``): observed order
against the exact probability-flow endpoint for orders 1-4 and both interpolation variables, the
order kept on non-uniform grids (where constant-step Adams-Bashforth weights lose it), weights
that integrate polynomials exactly, identities (order 1 is DDIM; uniform nodes give the classical
AB coefficients), float32, NFE and option validation."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import sdediff as sd
from sdediff.samplers import expint, lms
from tests.exact import exact_pf_endpoint, ring_mixture, rms, slope

PROCESSES = {"vp": sd.VPSDE(), "cosine": sd.VPSDE("cosine"), "ve": sd.VESDE()}
T_END = 1e-3

#: (options, step counts of the slope fit) on the logsnr grid, float64, 16 samples.
CASES = [
    ({"order": 1}, [40, 80, 160]),
    ({"order": 2}, [40, 80, 160]),
    ({"order": 3}, [80, 160, 320]),
    ({"order": 4}, [40, 80, 160]),
    ({"order": 4, "lower_order_final": False}, [40, 80, 160]),
]
#: The polynomial in sigma (k-diffusion's) reaches its order later: eps is far from a polynomial
#: in sigma over the steps of the high-noise end.
SLOW_CASES = [
    ({"order": 2, "variable": "sigma"}, [80, 160, 320]),
    ({"order": 3, "variable": "sigma"}, [160, 320, 640]),
    ({"order": 4, "variable": "sigma"}, [160, 320, 640]),
]
#: Allowed ``observed - declared`` by declared order (default +-0.3). Order 4: on these
#: problems the error falls faster than h^4 before it settles (local slopes on the VP 3.95, 4.50,
#: 4.40, 4.17 from 20 to 640 steps, the same on the cosine VP and VE), so the 40-160 fit reads
#: 4.15-4.35.
TOLERANCE = {4: (-0.3, 0.5)}

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def problems():
    """Per process: the exact-score model of the ring mixture, 16 prior draws in float64 and the
    scipy reference endpoint from exactly those draws."""
    out = {}
    for key, sde in PROCESSES.items():
        gmm = ring_mixture()
        x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
        out[key] = (gmm.score_model(sde), x_T, exact_pf_endpoint(gmm, sde, x_T, T_END))
    return out


def errors(problem, steps, schedule="logsnr", **options):
    model, x_T, reference = problem
    return [rms(sd.sample(model, x_T=x_T, sampler="lms", steps=n, schedule=schedule,
                          denoise=False, **options), reference) for n in steps]


def check_order(problem, options, steps, schedule="logsnr"):
    declared = sd.samplers.get("lms", **options).order
    errs = errors(problem, steps, schedule, **options)
    observed = slope(steps, errs)
    low, high = TOLERANCE.get(declared, (-0.3, 0.3))
    assert errs[0] > errs[1] > errs[2], errs
    assert low < observed - declared < high, (
        f"lms {options} on {schedule}: declared order {declared}, observed {observed:.2f}, {errs}")


# --- observed order ---------------------------------------------------------------------------
@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize(("options", "steps"), CASES, ids=[str(o) for o, _ in CASES])
def test_converges_at_declared_order(problems, options, steps, process):
    check_order(problems[process], options, steps)


@pytest.mark.slow
@pytest.mark.parametrize("process", PROCESSES)
@pytest.mark.parametrize(("options", "steps"), SLOW_CASES, ids=[str(o) for o, _ in SLOW_CASES])
def test_converges_at_declared_order_polynomial_in_sigma(problems, options, steps, process):
    check_order(problems[process], options, steps)


def alternating_grid(sde, steps: int) -> torch.Tensor:
    """Times whose log-SNR steps alternate between h and 2h: a grid on which step ratios never
    settle, so only weights computed from the actual steps keep the order."""
    lam_T, lam_end = sde.log_snr(torch.tensor([sde.T, T_END], dtype=torch.float64)).tolist()
    widths = torch.tensor([1.0 if i % 2 == 0 else 2.0 for i in range(steps)], dtype=torch.float64)
    lam = lam_T + (lam_end - lam_T) * torch.cat([torch.zeros(1, dtype=torch.float64),
                                                 widths.cumsum(0) / widths.sum()])
    ts = sde.t_of_log_snr(lam)
    ts[0], ts[-1] = sde.T, T_END
    return ts


def test_variable_step_weights_keep_the_order_on_an_alternating_grid(problems):
    """Steps alternating h, 2h in log-SNR: ``lms`` keeps its order (3 within 0.3; 4 above 3.7),
    while the constant-step AB weights of ``ipndm`` (order 4) drop to first order."""
    model, x_T, reference = problems["vp"]
    steps = [40, 80, 160]
    errs = {}
    for key, name, options in (("lms3", "lms", {"order": 3, "lower_order_final": False}),
                               ("lms4", "lms", {"order": 4, "lower_order_final": False}),
                               ("ipndm", "ipndm", {"order": 4})):
        errs[key] = []
        for n in steps:
            sampler = sd.samplers.get(name, schedule=alternating_grid(model.sde, n), **options)
            errs[key].append(rms(sampler.solve(model, x_T, sampler.grid(model.sde, None, T_END)).x,
                                 reference))
    assert abs(slope(steps, errs["lms3"]) - 3) < 0.3, errs["lms3"]
    assert slope(steps, errs["lms4"]) > 3.7, errs["lms4"]
    assert slope(steps, errs["ipndm"]) < 1.5, errs["ipndm"]
    assert errs["lms4"][-1] < errs["ipndm"][-1] / 100


# --- weights ----------------------------------------------------------------------------------
NODES = [[0.0], [0.0, -1.0], [0.0, -0.7, -2.3], [0.0, -1.3, -2.1, -4.6]]


@pytest.mark.parametrize("r", NODES, ids=len)
@pytest.mark.parametrize("h", [1e-5, 0.05, 0.7, 3.0, -0.4, -2.0])
def test_logsnr_weights_integrate_polynomials_exactly(h, r):
    """sum_j w_j q(r_j h) = int_0^h e^{-tau} q(tau) dtau for deg q < p (either sign of h: the
    update runs in both directions of time), and not for deg q = p."""
    w = lms.lms_weights(h, r, "logsnr")
    p = len(r)
    coefficients = np.random.default_rng(p).uniform(-2, 2, size=p + 1)

    def poly(tau, degree):
        return sum(c * (tau / h) ** k for k, c in enumerate(coefficients[:degree + 1]))

    for degree in range(p + 1):
        exact = quad(lambda tau, d=degree: math.exp(-tau) * poly(tau, d), 0, h,
                     epsabs=0, epsrel=1e-13)[0]
        got = sum(w_j * poly(r_j * h, degree) for w_j, r_j in zip(w, r, strict=True))
        if degree < p:
            assert got == pytest.approx(exact, rel=1e-10, abs=1e-14 * abs(h))
        elif abs(h) > 1e-3:
            assert got != pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("r", NODES, ids=len)
def test_sigma_weights_integrate_the_lagrange_basis(r):
    """k-diffusion's ``linear_multistep_coeff``: w_j = int_0^1 l_j(v) dv for the Lagrange basis
    l_j through the nodes r (here by scipy quad, as k-diffusion does)."""
    w = lms.lms_weights(-0.37, r, "sigma")       # the weights in units of the step: h drops out
    for j, r_j in enumerate(r):
        def basis(v, j=j, r_j=r_j):
            return math.prod((v - r_k) / (r_j - r_k) for k, r_k in enumerate(r) if k != j)

        assert w[j] == pytest.approx(quad(basis, 0, 1, epsabs=0, epsrel=1e-13)[0], rel=1e-10)


def test_uniform_nodes_give_the_classical_adams_bashforth_weights():
    for p, classical in expint.IPNDM_AB.items():
        assert lms.lms_weights(0.5, [-float(j) for j in range(p)], "sigma") == pytest.approx(
            classical, rel=1e-12)
        # in log-SNR they tend to the classical ones as the exponential weight flattens (h -> 0)
        h = 1e-6
        assert [w / (1 - math.exp(-h)) for w in lms.lms_weights(h, [-float(j) for j in range(p)],
                                                                 "logsnr")] == pytest.approx(
            classical, rel=1e-5)


def test_noise_moments():
    for h in (1e-6, 0.3, 2.0, 15.0, -0.5, -4.0):
        assert lms.noise_moments(h, 1)[0] == pytest.approx(-math.expm1(-h), rel=1e-13)
        for k, g in enumerate(lms.noise_moments(h, 4)):
            exact = quad(lambda tau, k=k, h=h: math.exp(-tau) * (tau / h) ** k, 0, h,
                         epsabs=0, epsrel=1e-13)[0]
            assert g == pytest.approx(exact, rel=1e-11)


def test_step_orders():
    assert lms.step_orders(8, 4, True) == [1, 2, 3, 4, 4, 3, 3, 3]
    assert lms.step_orders(8, 4, False) == [1, 2, 3, 4, 4, 4, 4, 4]
    assert lms.step_orders(8, 3, True) == [1, 2, 3, 3, 3, 3, 2, 2]
    assert lms.step_orders(3, 4, True) == [1, 2, 3]
    assert lms.step_orders(5, 2, True) == [1, 2, 2, 2, 1]
    assert lms.step_orders(1, 4, True) == [1]
    assert lms.step_orders(4, 1, True) == [1, 1, 1, 1]


# --- identities -------------------------------------------------------------------------------
@pytest.mark.parametrize("variable", lms.VARIABLES)
@pytest.mark.parametrize("process", ["vp", "ve", "subvp"])
@pytest.mark.parametrize("grid", ["uniform", "logsnr", "karras", "quadratic"])
def test_order_1_is_ddim(variable, process, grid):
    sde = PROCESSES.get(process) or sd.SubVPSDE()
    model = ring_mixture().score_model(sde)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kw = {"x_T": x_T, "steps": 9, "schedule": grid, "denoise": False}
    a = sd.sample(model, sampler="lms", order=1, variable=variable, **kw)
    b = sd.sample(model, sampler="ddim", eta=0.0, **kw)
    assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())


def test_encodes_and_decodes_back(problems):
    """Reversible: the same update forward in time; the round trip error falls with steps."""
    model, _, reference = problems["vp"]
    x = reference[:8]
    trips = []
    for steps in (20, 40, 80):
        z = sd.encode(model, x, sampler="lms", steps=steps, lower_order_final=False)
        trips.append(rms(sd.decode(model, z, sampler="lms", steps=steps, lower_order_final=False), x))
    assert trips[0] > trips[1] > trips[2] and trips[-1] < 1e-3, trips


@pytest.mark.parametrize("variable", lms.VARIABLES)
@pytest.mark.parametrize("process", ["vp", "cosine", "ve", "subvp"])
def test_float32_is_finite_and_agrees_with_float64_down_to_t_end_1e_5(variable, process):
    sde = PROCESSES.get(process) or sd.SubVPSDE()
    model = ring_mixture().score_model(sde)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(1))
    for grid in ("uniform", "logsnr", "quadratic", "karras", "edm"):
        for steps in (3, 10):
            kw = {"sampler": "lms", "steps": steps, "schedule": grid, "t_end": 1e-5,
                  "denoise": False, "variable": variable}
            x32 = sd.sample(model, x_T=x_T, **kw)
            x64 = sd.sample(model, x_T=x_T.double(), **kw)
            assert bool(torch.isfinite(x32).all()), (grid, steps)
            assert rms(x32, x64) < 1e-3 * max(1.0, float(x64.abs().max())), (grid, steps)


# --- NFE, declared metadata, options -----------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_counted_nfe_equals_steps(order, steps):
    model = ring_mixture().score_model(sd.VPSDE())
    result = sd.sample(model, shape=(4, 2), sampler="lms", steps=steps, order=order, denoise=False,
                       return_info=True, generator=torch.Generator().manual_seed(0))
    assert result.nfe == sd.samplers.get("lms", order=order).nfe(steps) == steps
    assert result.times.numel() == steps + 1
    with_denoise = sd.sample(model, shape=(4, 2), sampler="lms", steps=steps, order=order,
                             return_info=True, generator=torch.Generator().manual_seed(0))
    assert with_denoise.nfe == steps + 1


def test_declared_metadata():
    get = sd.samplers.get
    assert "lms" in sd.samplers.available() and "lms" in sd.samplers.reversible()
    assert [get("lms", order=o).order for o in (1, 2, 3, 4)] == [1, 2, 3, 4]
    sampler = get("lms")
    assert sampler.order == 3 and sampler.family == "lms" and not sampler.is_stochastic()
    assert sampler.options == {"schedule": "auto", "order": 3, "variable": "logsnr",
                               "lower_order_final": True}
    assert sampler.steps_within(50, sd.VPSDE(), T_END) == (50, 50)


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"order": 5}, ValueError, r"order must be <= 4, got 5"),
    ({"order": 0}, ValueError, r"order must be >= 1, got 0"),
    ({"order": 2.0}, TypeError, r"order must be an integer, got 2.0"),
    ({"order": True}, TypeError, r"order must be an integer, got True"),
    ({"variable": "x0"}, ValueError, r"unknown variable 'x0'; allowed: logsnr, sigma"),
    ({"variable": None}, ValueError, r"unknown variable None; allowed: logsnr, sigma"),
    ({"lower_order_final": "yes"}, TypeError, r"lower_order_final must be True or False, got 'yes'"),
    ({"schedule": "cosine"}, ValueError, r"unknown schedule 'cosine'; allowed: uniform, logsnr"),
    ({"eta": 0.0}, ValueError,
     r"unknown option 'eta' for sampler 'lms'; allowed: lower_order_final, order, schedule, "
     r"variable"),
])
def test_options_are_validated(options, error, message):
    with pytest.raises(error, match=message):
        sd.samplers.get("lms", **options)


def test_weights_refuse_an_unknown_variable():
    with pytest.raises(ValueError, match=r"unknown variable 'lambda'; allowed: logsnr, sigma"):
        lms.lms_weights(0.5, [0.0, -1.0], "lambda")


# --- accuracy against the other fast solvers ---------------------------------------------------
@pytest.mark.slow
def test_order_4_beats_the_other_fast_solvers_on_gmm64_at_50_nfe():
    """The issue's benchmark (256 prior draws, seed 0, float64, t_end = 1e-3): at 50 calls
    ``lms`` order 4 (the docs' advice from 50 NFE) is below every default of ``unipc``, ``ipndm``
    and ``dpm_solver++`` and below k-diffusion's LMS configuration (``variable='sigma'``, no
    lowering, karras grid)."""
    from sdediff.bench.problems import gmm64

    sde, gmm = sd.VPSDE(), gmm64()
    model = gmm.score_model(sde)
    x_T = sde.prior_sample((256, gmm.dim), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    reference = exact_pf_endpoint(gmm, sde, x_T, T_END)

    def error(name, **options):
        return rms(sd.sample(model, x_T=x_T, sampler=name, steps=50, denoise=False, **options),
                   reference)

    ours = error("lms", order=4)
    others = {name: error(name) for name in ("unipc", "ipndm", "dpm_solver++")}
    others["k-diffusion lms"] = error("lms", variable="sigma", lower_order_final=False,
                                      schedule="karras")
    assert all(ours < other / 2 for other in others.values()), (ours, others)

"""The "ode" sampler (probability-flow ODE through torchdiffeq) against the exact endpoint (scipy
DOP853 in tests/exact.py): adaptive accuracy on every process, fixed-step orders, exact NFE."""

import pytest
import torch
from torchdiffeq._impl.odeint import SOLVERS

import sdediff as sd
from sdediff.samplers.ode import METHODS
from tests.exact import exact_pf_endpoint, ring_mixture, rms, slope

PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()]
T_END = 1e-3


@pytest.fixture(scope="module")
def problems():
    """Per process: (sde, exact mixture model, x_T of 64 2-D float64 prior draws, exact x_{t_end})."""
    out = {}
    for sde in PROCESSES:
        gmm = ring_mixture()
        x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
        out[repr(sde)] = (sde, gmm.score_model(sde), x_T, exact_pf_endpoint(gmm, sde, x_T, T_END))
    return out


def solve(problem, steps=None, **options):
    _, model, x_T, _ = problem
    return sd.sample(model, x_T=x_T, sampler="ode", steps=steps, t_end=T_END, denoise=False,
                     return_info=True, **options)


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_dopri5_matches_the_exact_endpoint(sde, problems):
    problem = problems[repr(sde)]
    result = solve(problem, rtol=1e-7, atol=1e-7)
    error = rms(result.x, problem[3])
    print(f"dopri5 on {sde!r}: rms error {error:.2e}, {result.nfe} NFE")
    assert error < 1e-4
    assert result.nfe > 0 and sd.samplers.get("ode").nfe(10) is None   # measured, not declared
    assert result.times.tolist() == [sde.T, T_END]


@pytest.mark.parametrize("method, steps", [("euler", [80, 160, 320]), ("midpoint", [80, 160, 320]),
                                           ("rk4", [40, 80, 160])])
@pytest.mark.parametrize("sde", PROCESSES[:2], ids=lambda s: repr(s)[:14])
def test_fixed_step_methods_converge_at_their_order(method, steps, sde, problems):
    # uniform steps are in the asymptotic range here (observed 1.00, 1.90-1.94, 3.92-4.03; logsnr needs
    # more steps for midpoint and rk4 to settle)
    problem = problems[repr(sde)]
    sampler = sd.samplers.get("ode", method=method, schedule="uniform")
    errors = [rms(solve(problem, n, method=method, schedule="uniform").x, problem[3]) for n in steps]
    observed = slope(steps, errors)
    print(f"{method} on {sde!r}: errors {errors}, observed order {observed:.2f}")
    assert not sampler.adaptive and sampler.order == METHODS[method].order
    assert abs(observed - sampler.order) < 0.3


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.calls is not None])
def test_counted_nfe_is_declared(method, problems):
    problem = problems[repr(PROCESSES[0])]
    sampler = sd.samplers.get("ode", method=method)
    for steps in (1, 2, 7):
        for denoise in (False, True):
            result = sd.sample(problem[1], x_T=problem[2], sampler="ode", method=method,
                               steps=steps, denoise=denoise, return_info=True, keep_trajectory=True)
            assert result.nfe == sampler.nfe(steps) + int(denoise)
            assert result.times.shape == (steps + 1,) and result.trajectory.shape == (steps + 1, 64, 2)
    assert [sampler.nfe(1), sampler.nfe(4)] == {"euler": [1, 4], "midpoint": [2, 8], "heun2": [2, 8],
                                                "heun3": [3, 12], "rk4": [4, 16],
                                                "explicit_adams": [4, 10]}[method]


def test_methods_metadata_agree_with_torchdiffeq():
    for name, spec in METHODS.items():
        assert name in SOLVERS
        assert spec.order >= SOLVERS[name].order      # torchdiffeq's Adams claims 4 for both
        sampler = sd.samplers.get("ode", method=name)
        assert sampler.adaptive == spec.adaptive and sampler.order == spec.order
        assert (sampler.nfe(10) is None) == (spec.calls is None)
    assert sd.samplers.get("ode", method="explicit_adams", schedule="logsnr").order == 2
    assert sd.samplers.get("ode").order == type(sd.samplers.get("ode")).order == 5


def test_adaptive_methods_measure_nfe_and_observe_once(problems):
    problem = problems[repr(PROCESSES[0])]
    for method in ("dopri5", "bosh3"):
        result = solve(problem, method=method, rtol=1e-5, atol=1e-5, keep_trajectory=True)
        assert result.nfe > 10 and result.trajectory.shape == (2, 64, 2)
        assert torch.equal(result.trajectory[-1], result.x)
    # an adaptive method chooses its own steps: a step count is refused, not ignored
    with pytest.raises(ValueError, match=r"steps=3 given to the adaptive sampler 'ode' with method "
                                         r"'dopri5', which chooses its own steps"):
        solve(problem, 3)


def test_float32_state(problems):
    sde, model, x_T, reference = problems[repr(PROCESSES[0])]
    result = solve((sde, model, x_T.float(), reference))
    assert result.x.dtype == torch.float32 and rms(result.x, reference) < 1e-3


def test_errors_name_the_bad_value_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown method 'rk45'; allowed: dopri5, dopri8, .*rk4"):
        sd.samplers.get("ode", method="rk45")
    with pytest.raises(ValueError, match=r"unknown option 'schedule' for sampler 'ode' with method "
                                         r"'dopri5'; allowed: adjoint, atol, method, rtol"):
        sd.samplers.get("ode", schedule="logsnr")
    with pytest.raises(ValueError, match=r"unknown option 'rtol' for sampler 'ode' with method "
                                         r"'euler'; allowed: adjoint, method, schedule"):
        sd.samplers.get("ode", method="euler", rtol=1e-3)
    with pytest.raises(ValueError, match=r"rtol must be in \(0.0, inf\), got -1.0"):
        sd.samplers.get("ode", rtol=-1.0)


def test_breakdown_raises_numerical_error_with_advice():
    sde = sd.VPSDE()
    model = sd.ScoreModel.from_fn(lambda x, t: torch.where(t[:, None] < 0.5, torch.nan, 0.0) + x, sde)
    with pytest.raises(sd.checks.NumericalError, match=r"torchdiffeq method 'dopri5' broke down"):
        sd.sample(model, shape=(4, 2), sampler="ode")

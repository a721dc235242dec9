"""The adaptive exponential integrator ``dpm_adaptive`` and the fitted time grids of
``sdediff.samplers.fitted``, against the exact probability-flow endpoint (scipy DOP853)."""

import json
import math

import pytest
import torch

import sdediff as sd
from sdediff.samplers.fitted import FittedGrid, fit_grid
from tests.exact import exact_pf_endpoint, ring_mixture, rms

PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.VESDE()]
ALL_PROCESSES = PROCESSES + [sd.SubVPSDE()]
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


def adaptive(model, x_T, t_end=T_END, **options):
    return sd.sample(model, x_T=x_T, sampler="dpm_adaptive", t_end=t_end, denoise=False,
                     return_info=True, **options)


# --- dpm_adaptive -------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_adaptive_converges_as_the_tolerance_tightens(sde, dtype, order, problems):
    model, x_T, reference = problems[repr(sde)]
    tols = [1e-3, 1e-4]
    results = [adaptive(model, x_T.to(dtype), order=order, rtol=tol, atol=tol) for tol in tols]
    errors = [rms(r.x, reference) for r in results]
    print(f"{sde!r} {dtype} order {order}: errors {errors}, nfe {[r.nfe for r in results]}")
    for tol, r, error in zip(tols, results, errors, strict=True):
        assert r.x.dtype == dtype and float(r.times[-1]) == T_END
        assert error <= tol                          # global error within the tolerance
    assert errors[1] < errors[0] / 3                 # and falling with it
    assert 0 < results[0].nfe < results[1].nfe       # counted, and cheaper when looser


def test_adaptive_nfe_grows_as_the_tolerance_tightens(problems):
    model, x_T, _ = problems[repr(sd.VPSDE())]
    nfes = [adaptive(model, x_T, rtol=tol, atol=tol).nfe for tol in (1e-1, 1e-2, 1e-3, 1e-4)]
    assert nfes[0] > 0 and nfes == sorted(nfes) and nfes[0] < nfes[-1]
    assert sd.samplers.get("dpm_adaptive").nfe(10) is None


def test_adaptive_defaults_are_the_papers(problems):
    sampler = sd.samplers.get("dpm_adaptive")
    assert sampler.options == {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05}
    assert sampler.adaptive and sampler.order == 3
    assert sd.samplers.get("dpm_adaptive", order=2).order == 2
    model, x_T, reference = problems[repr(sd.VPSDE())]
    assert rms(adaptive(model, x_T).x, reference) < 0.05   # loose, image-scale tolerances


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("sde", ALL_PROCESSES, ids=lambda s: repr(s)[:14])
def test_adaptive_no_nan_down_to_1e_5_in_float32(sde, order):
    model = ring_mixture().score_model(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(1))
    for tol in (0.05, 1e-4):
        result = adaptive(model, x_T, t_end=1e-5, order=order, rtol=tol, atol=tol)
        assert result.x.dtype == torch.float32 and bool(torch.isfinite(result.x).all())
        assert result.nfe > 0


def test_adaptive_calls_stay_within_T_and_t_end():
    """The first call is at exactly T, no call is below t_end (the last step lands on it)."""
    sde, gmm = sd.VPSDE(), ring_mixture()
    calls = []

    def score(x, t):
        calls.append(t.double())
        return gmm.score(x, t.double(), sde)

    model = sd.ScoreModel.from_fn(score, sde)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t_end = 2e-3
    result = adaptive(model, x_T, t_end=t_end, rtol=1e-3, atol=1e-3)
    times = torch.cat(calls)
    assert float(times[0]) == sde.T and float(times.min()) >= t_end
    assert len(calls) == result.nfe
    # and the state is the endpoint at t_end, not at a neighbouring time
    reference = exact_pf_endpoint(gmm, sde, x_T, t_end)
    assert rms(result.x, reference) < 1e-3


def test_adaptive_refuses_bad_options_and_reports_breakdown():
    model = ring_mixture().score_model(sd.VPSDE())
    for options, message in [({"order": 4}, r"order must be <= 3, got 4"),
                             ({"order": 1}, r"order must be >= 2, got 1"),
                             ({"rtol": -1.0}, r"rtol must be in \[0.0, inf\), got -1.0"),
                             ({"rtol": 0.0, "atol": 0.0}, r"rtol and atol cannot both be 0"),
                             ({"h_init": 0.0}, r"h_init must be in \(0.0, inf\)")]:
        with pytest.raises(ValueError, match=message):
            sd.sample(model, shape=(2, 2), sampler="dpm_adaptive", **options)
    with pytest.raises(ValueError, match=r"unknown option 'schedule' for sampler 'dpm_adaptive'"):
        sd.sample(model, shape=(2, 2), sampler="dpm_adaptive", schedule="logsnr")
    with pytest.raises(ValueError, match=r"rtol = 1e-06, atol = 1e-06 are below what "
                                         r"torch.float32 resolves \(10 eps = 1.19e-06\)"):
        sd.sample(model, shape=(4, 2), sampler="dpm_adaptive", rtol=1e-6, atol=1e-6)
    x = sd.sample(model, x_T=torch.ones(4, 2, dtype=torch.float64), sampler="dpm_adaptive",
                  rtol=1e-6, atol=1e-6)                  # float64 resolves it
    assert bool(torch.isfinite(x).all())


def test_adaptive_takes_any_prediction_type():
    """The solver asks the model for x0 only: an eps-predicting net gives the same samples."""
    sde, gmm = sd.VPSDE("cosine"), ring_mixture()

    def eps(x, t):
        return -sde.alpha_sigma(t.double())[1].to(x)[:, None] * gmm.score(x, t.double(), sde)

    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = adaptive(gmm.score_model(sde), x_T, rtol=1e-3, atol=1e-3)
    b = adaptive(sd.ScoreModel(eps, sde, prediction="eps"), x_T, rtol=1e-3, atol=1e-3)
    assert a.nfe == b.nfe and torch.allclose(a.x, b.x, atol=1e-10)


# --- fitted grids -------------------------------------------------------------------------------
FAST_SOLVER = "dpm_solver++" if "dpm_solver++" in sd.samplers.available() else "ddim"


@pytest.fixture(scope="module")
def fitted(one_thread):
    """A grid for the fast solver at 10 calls, fitted on a pilot batch with its own seed."""
    model = ring_mixture().score_model(sd.VPSDE())
    before = model.nfe
    grid = fit_grid(model, FAST_SOLVER, nfe=10, shape=(128, 2),
                    generator=torch.Generator().manual_seed(1234), iterations=300, init="logsnr")
    return model, grid, model.nfe - before


def test_fitted_grid_is_a_valid_grid(fitted):
    model, grid, _ = fitted
    sde = model.sde
    assert grid.times.dtype == torch.float64 and grid.times.shape == (grid.steps + 1,)
    assert float(grid.times[0]) == sde.T and float(grid.times[-1]) == grid.t_end == T_END
    assert bool((grid.times[1:] < grid.times[:-1]).all())
    assert grid.sampler == FAST_SOLVER and grid.nfe == 10 and grid.steps == 10
    assert grid.pilot_size == 128 and grid.process == sde.config()
    assert grid.pilot_error["fitted"] <= grid.pilot_error["init"]


def test_pilot_cost_is_counted_and_kept_out_of_the_samples_nfe(fitted):
    model, grid, spent = fitted
    assert grid.pilot_nfe == spent > grid.evaluations * grid.nfe   # trial runs + the reference
    x_T = model.sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0))
    result = sd.sample(model, x_T=x_T, denoise=False, return_info=True, **grid.sample_options())
    assert result.nfe == grid.nfe == 10                             # per-sample NFE: no pilot
    plain = sd.sample(model, x_T=x_T, sampler=FAST_SOLVER, steps=grid.steps,
                      schedule=grid.times, denoise=False)
    assert torch.equal(plain, result.x)                             # schedule= the times


def test_fitted_grid_save_load_round_trip(fitted, tmp_path):
    _, grid, _ = fitted
    path = grid.save(tmp_path / "grid.json")
    record = json.loads(path.read_text())
    assert record["format"] == 1 and record["pilot_nfe"] == grid.pilot_nfe
    loaded = FittedGrid.load(path)
    assert torch.equal(loaded.times, grid.times)
    assert {k: v for k, v in vars(loaded).items() if k != "times"} == \
        {k: v for k, v in vars(grid).items() if k != "times"}
    record["format"] = 99
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"fitted-grid format 99, expected 1"):
        FittedGrid.load(path)


def test_fitted_grid_beats_logsnr_on_an_independent_batch(fitted):
    """Fitted on the pilot (seed 1234), judged on another batch (seed 0) with the exact
    reference, at the same NFE."""
    model, grid, _ = fitted
    sde, gmm = model.sde, ring_mixture()
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    reference = exact_pf_endpoint(gmm, sde, x_T, T_END)
    logsnr = rms(sd.sample(model, x_T=x_T, sampler=FAST_SOLVER, steps=10, schedule="logsnr",
                           denoise=False), reference)
    ours = rms(sd.sample(model, x_T=x_T, denoise=False, **grid.sample_options()), reference)
    print(f"{FAST_SOLVER} at 10 calls: logsnr {logsnr:.3e}, fitted {ours:.3e}")
    assert ours < 0.6 * logsnr


def test_fit_grid_checks_its_arguments():
    model = ring_mixture().score_model(sd.VPSDE())
    pilot = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"no step count costing exactly nfe = 10"):
        fit_grid(model, "heun", nfe=10, pilot=pilot)
    assert sd.samplers.get("heun").steps_within(9, sd.VPSDE(), 1e-3) == (5, 9)   # Heun: 2N - 1
    with pytest.raises(ValueError, match=r"needs a deterministic fixed-step sampler; 'ode' is adaptive"):
        fit_grid(model, "ode", nfe=10, pilot=pilot)
    with pytest.raises(ValueError, match=r"'ddim' is stochastic"):
        fit_grid(model, "ddim", nfe=10, pilot=pilot, eta=1.0)
    with pytest.raises(ValueError, match=r"do not pass schedule="):
        fit_grid(model, "ddim", nfe=10, pilot=pilot, schedule="logsnr")
    with pytest.raises(ValueError, match=r"give the pilot batch"):
        fit_grid(model, "ddim", nfe=10)
    with pytest.raises(ValueError, match=r"unknown init 'cosine'; allowed: best, uniform"):
        fit_grid(model, "ddim", nfe=10, pilot=pilot, init="cosine")


def test_fit_grid_with_one_step_and_a_zero_budget():
    model = ring_mixture().score_model(sd.VPSDE())
    pilot = torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    one = fit_grid(model, "ddim", nfe=1, pilot=pilot)
    assert one.times.tolist() == [1.0, T_END]
    none = fit_grid(model, "ddim", nfe=4, pilot=pilot, iterations=0, init="karras")
    assert torch.allclose(none.times, sd.samplers.make_grid("karras", model.sde, 4, T_END))
    assert math.isclose(none.pilot_error["fitted"], none.pilot_error["init"])


def test_trimmed_objective():
    """trim is validated and recorded, and the trimmed fit still lowers the full pilot error."""
    model = ring_mixture().score_model(sd.VPSDE())
    pilot = model.sde.prior_sample((40, 2), generator=torch.Generator().manual_seed(7),
                                   dtype=torch.float64)
    options = {"nfe": 6, "pilot": pilot, "iterations": 60, "init": "logsnr"}
    trimmed = fit_grid(model, "ddim", trim=0.05, **options)
    assert trimmed.trim == 0.05 and trimmed.evaluations > 60
    assert trimmed.pilot_error["fitted"] < trimmed.pilot_error["init"]
    with pytest.raises(ValueError, match=r"trim must be in \[0.0, 0.5\), got 0.5"):
        fit_grid(model, "ddim", trim=0.5, **options)


@pytest.mark.slow
def test_fitted_grid_beats_every_named_grid_in_64d():
    """64-D, 10 components: the fitted grid at 20 calls beats every named grid of the same
    solver on an independent batch."""
    sde = sd.VPSDE()
    gmm = ring_mixture(dim=64, components=10, seed=1)
    model = gmm.score_model(sde)
    grid = fit_grid(model, FAST_SOLVER, nfe=20, shape=(256, 64),
                    generator=torch.Generator().manual_seed(1234), iterations=400)
    x_T = sde.prior_sample((256, 64), generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    reference = exact_pf_endpoint(gmm, sde, x_T, T_END)
    ours = rms(sd.sample(model, x_T=x_T, denoise=False, **grid.sample_options()), reference)
    for name in sd.samplers.CONTINUOUS_GRIDS:
        named = rms(sd.sample(model, x_T=x_T, sampler=FAST_SOLVER, steps=20, schedule=name,
                              denoise=False), reference)
        assert ours < named, name


def test_fit_grid_on_a_float32_network_draws_its_pilot_in_the_networks_dtype():
    """A pilot drawn from ``shape`` is in the network's dtype (a float64 draw made the digits U-Net
    fail with 'Input type (double) and bias type (float) should be the same')."""
    sde = sd.VPSDE()
    gmm = ring_mixture()
    net = torch.nn.Linear(2, 2)          # float32 weights; the score comes from the mixture

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t):
            assert x.dtype == torch.float32, x.dtype
            return -gmm.score(x.double(), t.double(), sde).float() * sde.sigma(t.double()).float()[
                :, None] * self.scale

    model = sd.ScoreModel(Exact(), sde, prediction="eps")
    assert model.dtype == torch.float32 and sd.ScoreModel(net, sde).dtype == torch.float32
    assert gmm.score_model(sde).dtype is None
    grid = fit_grid(model, "ipndm", nfe=6, shape=(16, 2), generator=torch.Generator().manual_seed(0),
                    iterations=30, init="logsnr")
    assert grid.times.dtype == torch.float64 and grid.pilot_error["fitted"] < grid.pilot_error["init"]

"""The one door for solving (`Sampler.solve`), the one rule for `steps`, declared capabilities,
and a literal transcription of DPM-Solver++(2M) against the sampler."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchdiffeq

import sdediff as sd
from sdediff.samplers.ode import METHODS
from tests.exact import ring_mixture

NAMES = sd.samplers.available()
SDE = sd.VPSDE()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return ring_mixture().score_model(SDE)


def x_T(n=8, seed=0):
    return SDE.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)


def steps_for(sampler):
    """``steps`` to pass: none for adaptive samplers (they refuse it)."""
    return None if sampler.adaptive else 5


# ------------------------------------------------------------------------------ the one door

@pytest.mark.parametrize("name", NAMES)
def test_every_sampler_observes_exactly_once_per_step(model, name, one_thread):
    sampler = sd.samplers.get(name)
    r = sd.sample(model, x_T=x_T(), sampler=name, steps=steps_for(sampler), denoise=False,
                  keep_trajectory=True, return_info=True, generator=torch.Generator().manual_seed(1))
    # observe(i, x) appends x after step i: one entry per grid time, the last the result
    assert r.trajectory.shape[0] == r.times.numel()
    assert torch.equal(r.trajectory[-1], r.x)
    if not sampler.adaptive:
        assert r.times.numel() == 6


@pytest.mark.parametrize("name", NAMES)
def test_sample_is_solve_on_the_samplers_grid(model, name, one_thread):
    sampler = sd.samplers.get(name)
    steps = steps_for(sampler)
    ts = sampler.grid(SDE, steps, 1e-3)
    a = sampler.solve(model, x_T(), ts, generator=torch.Generator().manual_seed(3), denoise=True)
    b = sd.sample(model, x_T=x_T(), sampler=name, steps=steps,
                  generator=torch.Generator().manual_seed(3), return_info=True)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe and torch.equal(a.times, b.times)


def test_encode_and_decode_are_solves_on_the_flipped_grid(model, one_thread):
    x0 = ring_mixture().sample(8, generator=torch.Generator().manual_seed(0))
    ddim = sd.samplers.get("ddim")
    ts = ddim.grid(SDE, 30, 1e-5)
    z = sd.encode(model, x0, sampler="ddim", steps=30)
    assert torch.equal(z, ddim.solve(model, x0, ts.flip(0)).x)
    assert torch.equal(sd.decode(model, z, sampler="ddim", steps=30),
                       sd.sample(model, x_T=z, sampler="ddim", steps=30, t_end=1e-5,
                                 denoise=False))


def test_solve_checks_its_grid_and_direction(model):
    heun = sd.samplers.get("heun")
    with pytest.raises(ValueError, match=r"ts must be strictly monotone"):
        heun.solve(model, x_T(), torch.tensor([1.0, 0.5, 0.7], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"ts must lie in \(0, T = 1.0\], got 0 .. 1"):
        heun.solve(model, x_T(), torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"ts needs at least 2 times, got 1"):
        heun.solve(model, x_T(), torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(TypeError, match=r"ts must be a 1-D tensor of times, got list"):
        heun.solve(model, x_T(), [1.0, 0.5])
    with pytest.raises(ValueError, match=r"sampler 'heun' cannot run forward in time \(encoding\); allowed: "
                                         r"ddim, bdia, dpm_solver\+\+, edict, ipndm, lms, ode, unipc"):
        heun.solve(model, x_T(), torch.tensor([0.01, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"sampler 'euler_maruyama' is stochastic"):
        sd.samplers.get("euler_maruyama").solve(model, x_T(), torch.tensor([0.01, 1.0]))
    with pytest.raises(TypeError, match=r"model must be a sdediff.ScoreModel, got function"):
        heun.solve(lambda x, t: x, x_T(), torch.tensor([1.0, 0.5]))


def test_a_non_finite_result_is_a_numerical_error():
    model = sd.ScoreModel.from_fn(lambda x, t: x * torch.where(t[:, None] < 0.5, torch.inf, 1.0),
                                  SDE)
    with pytest.raises(sd.NumericalError, match=r"sampler 'ddim': the result has non-finite values"):
        sd.sample(model, x_T=x_T(), sampler="ddim", steps=4)


def test_reversible_is_declared_and_read_from_the_registry():
    assert sd.samplers.reversible() == [n for n in NAMES if sd.samplers.get(n).reversible]
    assert {"ode", "ddim", "dpm_solver++", "unipc", "ipndm"} <= set(sd.samplers.reversible())
    assert not {"heun", "ddpm", "euler_maruyama", "pc"} & set(sd.samplers.reversible())


# --------------------------------------------------------------------------- one rule for steps

@pytest.mark.parametrize("call", [
    lambda m: sd.sample(m, shape=(2, 2), sampler="ode", steps=7),
    lambda m: sd.sample(m, shape=(2, 2), sampler="dpm_adaptive", steps=7),
    lambda m: sd.encode(m, x_T(2), steps=7),
    lambda m: sd.decode(m, x_T(2), steps=7),
    lambda m: sd.log_likelihood(m, x_T(2), rtol=1e-5, steps=7),   # tolerances: dopri5
], ids=["sample-ode", "sample-dpm_adaptive", "encode", "decode", "likelihood"])
def test_adaptive_samplers_refuse_steps_everywhere(model, call):
    with pytest.raises(ValueError, match=r"steps=7 given to the adaptive sampler '(ode|dpm_adaptive)'"
                                         r".*which chooses its own steps; set rtol/atol instead"):
        call(model)


def test_an_explicit_grid_sets_the_steps(model, one_thread):
    grid = torch.tensor([1.0, 0.3, 1e-3], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"steps=50 disagrees with the explicit grid of 3 times "
                                         r"\(2 steps\); pass steps=2 or leave steps out"):
        sd.sample(model, shape=(2, 2), sampler="ddim", steps=50, schedule=grid)
    for steps in (None, 2):
        r = sd.sample(model, x_T=x_T(), sampler="ddim", steps=steps, schedule=grid,
                      denoise=False, return_info=True)
        assert r.nfe == 2 and torch.equal(r.times, grid)
    with pytest.raises(ValueError, match=r"steps=3 disagrees with the explicit grid"):
        sd.encode(model, x_T(), sampler="ddim", steps=3,
                  schedule=torch.tensor([1.0, 0.3, 1e-5], dtype=torch.float64))


def test_fixed_step_samplers_take_exactly_their_steps(model, one_thread):
    for name in NAMES:
        sampler = sd.samplers.get(name)
        if sampler.adaptive:
            continue
        r = sd.sample(model, x_T=x_T(), sampler=name, steps=7, denoise=False, return_info=True,
                      generator=torch.Generator().manual_seed(0))
        assert r.times.numel() == 8 and r.nfe == sampler.nfe(7), name


# ------------------------------------------------------------- DPM-Solver++(2M), written out

def test_dpm_solver_pp_2m_is_lu_et_al_algorithm_2(model, one_thread):
    """Lu et al. 2022b, "DPM-Solver++", Algorithm 2, line by line (data prediction x_theta)."""
    ts = sd.samplers.get("dpm_solver++", schedule="logsnr").grid(SDE, 12, 1e-3)
    alpha, sigma = SDE.alpha_sigma(ts)
    lam = SDE.log_snr(ts)
    M = ts.numel() - 1
    h = [None] + [float(lam[i] - lam[i - 1]) for i in range(1, M + 1)]     # h_i = l_i - l_{i-1}
    x = x_T()                                                               # x~_{t_0} = x_T
    previous = model.x0(x, ts[0])                                           # Q <- x_theta(x~_0, t_0)
    x = sigma[1] / sigma[0] * x - alpha[1] * math.expm1(-h[1]) * previous  # first-order step
    for i in range(2, M + 1):
        current = model.x0(x, ts[i - 1])                                    # x_theta(x~_{i-1}, t_{i-1})
        r = h[i - 1] / h[i]
        D = (1 + 1 / (2 * r)) * current - 1 / (2 * r) * previous
        x = sigma[i] / sigma[i - 1] * x - alpha[i] * math.expm1(-h[i]) * D
        previous = current
    ours = sd.sample(model, x_T=x_T(), sampler="dpm_solver++", steps=12, order=2,
                     lower_order_final=False, denoise=False, schedule="logsnr")
    assert torch.allclose(ours, x, rtol=0, atol=1e-12), float((ours - x).abs().max())


# ------------------------------------------------------------------------------- torchdiffeq

def test_the_method_list_matches_torchdiffeqs_public_behaviour():
    """Each listed method runs through the public ``odeint`` at its declared calls per step and
    order; a name torchdiffeq does not know is refused by it (so the list cannot drift)."""
    y0 = torch.ones(1, dtype=torch.float64)
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return -y

    for name, method in METHODS.items():
        options = {"max_order": 5} if name.endswith("adams") else {}
        if method.adaptive:                            # error control: one solve over [0, 1]
            y = torchdiffeq.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                                   method=name, rtol=1e-6, atol=1e-6, options=options)
            assert float((y[-1] - math.exp(-1)).abs()) < 1e-4, name
            continue
        errors = []
        for n in (32, 64):
            calls[0] = 0
            ts = torch.linspace(0, 1, n + 1, dtype=torch.float64)
            y = torchdiffeq.odeint(f, y0, ts, method=name, options=options)
            errors.append(float((y[-1] - math.exp(-1)).abs()))
            if method.calls is not None and name != "explicit_adams":   # RK4 warm-up: 4 calls
                assert calls[0] == method.calls * n, (name, calls[0])
        if method.calls is None:                       # implicit_adams: corrector iterations
            assert errors[-1] < 1e-8, (name, errors)
            continue
        observed = math.log2(errors[0] / errors[1])
        assert abs(observed - method.order) < 0.5, (name, observed)
    with pytest.raises(ValueError, match=r"Invalid method"):
        torchdiffeq.odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), method="rk45")


def test_one_caller_of_torchdiffeq():
    """Only samplers/ode.py imports torchdiffeq (its one helper calls odeint or odeint_adjoint);
    nothing imports torchdiffeq's private modules."""
    importers = []
    for path in (ROOT / "sdediff").rglob("*.py"):
        text = path.read_text()
        assert "torchdiffeq._impl" not in text, path
        if re.search(r"^\s*(from|import) torchdiffeq\b", text, re.MULTILINE):
            importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["sdediff/samplers/ode.py"]


# --------------------------------------------------------------------------- no side effects

def test_importing_the_library_keeps_the_users_matplotlib_backend():
    code = ("import matplotlib; matplotlib.use('pdf'); import sys; "
            "import sdediff, sdediff.plotting, sdediff.train, sdediff.ode, sdediff.bench; "
            "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend(); "
            "assert 'matplotlib.pyplot' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_public_api():
    assert sd.load_model is sd.checkpoint.load_model
    assert "load_model" in sd.__all__
    assert "SDES" not in sd.__all__ and "sde_from_config" not in sd.__all__
    from sdediff.pretrained import default_checkpoint

    model, config = sd.load_model(default_checkpoint())
    assert isinstance(model, sd.ScoreModel) and config["data"]["name"] == "digits"


def test_an_adaptive_solve_fills_its_progress_bar():
    """Issue 19 item 15: the bar stopped at 999/1000 when the last reported time fell short."""
    from sdediff.samplers.base import Observer

    ts = torch.tensor([1.0, 1e-3], dtype=torch.float64)
    observer = Observer(ts, True, True, "test", False, torch.zeros(1))
    observer.at(1.5e-3)                          # the solver's last report, short of the end
    assert observer.bar.n < observer.bar.total
    observer.complete()
    assert observer.bar.n == observer.bar.total == Observer.RESOLUTION
    observer.close()

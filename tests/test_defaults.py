"""The registered defaults are the ones the committed evidence chose
(``benchmarks/bench_defaults.py`` -> ``benchmarks/results/defaults.json``), the ``auto`` grid is
what its docstring says per process, and the defaults do what the evidence says on an exact
mixture."""

import json
from pathlib import Path

import pytest
import torch

import sdediff as sd
from sdediff.samplers.grids import make_grid
from tests.exact import exact_pf_endpoint, ring_mixture, rms

EVIDENCE = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "defaults.json"
T_END = 1e-3

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def evidence():
    return json.loads(EVIDENCE.read_text())


def test_registered_defaults_are_the_chosen_ones(evidence):
    """Rerun ``python benchmarks/bench_defaults.py`` (or ``--rescore``) when a default changes."""
    assert set(evidence["chosen"]) == {"ddim", "heun", "dpm_solver++", "unipc", "ipndm", "lms"}
    for name, chosen in evidence["chosen"].items():
        registered = dict(sd.samplers.get(name).options)
        grid = registered.pop("schedule")
        assert {"auto": "quadratic"}.get(grid, grid) == chosen["grid"], (name, grid, chosen)
        assert {**registered, **chosen["options"]} == registered, (name, registered, chosen)
    assert sd.samplers.DEFAULT_SAMPLER == evidence["default_sampler"] == "unipc"


def test_every_candidate_ran_at_every_budget_on_the_three_problems(evidence):
    cells = {(r["problem"], r["budget"]) for r in evidence["rows"]}
    assert cells == {(p, b) for p in ("gmm2d", "gmm64", "digits") for b in (5, 10, 20)}
    assert not evidence["meta"]["quick"]


@pytest.mark.parametrize(("sde", "same_as"), [
    (sd.VPSDE(), "quadratic"), (sd.VPSDE("cosine"), "quadratic"), (sd.SubVPSDE(), "quadratic"),
    (sd.VESDE(), "logsnr")], ids=["vp", "cosine", "subvp", "ve"])
def test_auto_grid_per_process(sde, same_as):
    assert torch.equal(make_grid("auto", sde, 7, T_END), make_grid(same_as, sde, 7, T_END))


def test_sample_without_a_sampler_is_unipc_at_its_default_steps():
    model = ring_mixture().score_model(sd.VPSDE())
    x_T = model.sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0))
    plain = sd.sample(model, x_T=x_T, return_info=True)
    named = sd.sample(model, x_T=x_T, sampler="unipc", steps=20, return_info=True)
    assert plain.nfe == named.nfe == 21                     # 20 steps and the final denoise
    assert torch.equal(plain.x, named.x)


def test_fast_solver_defaults_beat_ddim_at_10_calls_on_a_mixture():
    """The evidence on a mixture it never saw (5 components, std 0.1): at 10 network calls every
    fast solver's default is at least 2x closer to the exact flow than ``ddim``'s."""
    sde = sd.VPSDE()
    gmm = ring_mixture(components=5, std=0.1)
    model = gmm.score_model(sde)
    x_T = sde.prior_sample((128, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reference = exact_pf_endpoint(gmm, sde, x_T, T_END)
    errors = {name: rms(sd.sample(model, x_T=x_T, sampler=name, steps=10, denoise=False), reference)
              for name in ("ddim", "unipc", "ipndm", "lms", "dpm_solver++")}
    assert all(errors[n] < errors["ddim"] / 2 for n in errors if n != "ddim"), errors

"""Inpainting (``sd.inpaint``) against exact Gaussian-mixture posteriors, RePaint's NFE formula, the
error messages, and ``sdediff inpaint``.

The oracle is :meth:`GaussianMixture.posterior`: with diagonal components the law of the hidden
block given the observed one is again a mixture, whose weights are the prior's reweighted by each
component's likelihood of the observation. The mixtures below overlap on the observed coordinates
and separate on the hidden ones, and the observation favours a component the prior neglects, so
the posterior's weights differ from the prior's: that is where replacement is biased (it keeps
too much of the prior's weights) and SMC (MCGdiff) is not, given enough particles.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sdediff as sd
from sdediff.bench.metrics import energy_distance, two_sample_floor
from sdediff.cli import main
from sdediff.data import load_dataset
from sdediff.inpaint import repaint_schedule
from tests.test_cli import fails_with

SDE = sd.VPSDE()
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def narrow_rare_mixture():
    """2-D, 3 components; coordinate 0 observed at 0.5, where the weight-0.1 component (std 0.1
    there) beats the weight-0.7 one (std 1): posterior weights 0.38 / 0.62 / 0."""
    means = torch.tensor([[0.0, -2.0], [0.5, 2.0], [-2.0, 0.0]], dtype=F64)
    stds = torch.tensor([[1.0, 0.5], [0.1, 0.5], [0.5, 0.5]], dtype=F64)
    gmm = sd.GaussianMixture(means, stds, torch.tensor([0.7, 0.1, 0.2], dtype=F64), labels=[0, 1, 2])
    return gmm, torch.tensor([0.5, 0.0], dtype=F64), torch.tensor([1, 0])


def four_d_mixture():
    """4-D, 5 components, means closer on the observed coordinates 0-1 than on 2-3; observed at
    the weight-0.05 component's mean: posterior weights 0.57 / 0 / 0.02 / 0.02 / 0.40."""
    g = torch.Generator().manual_seed(1)
    means = torch.randn(5, 4, generator=g, dtype=F64) * torch.tensor([0.6, 0.6, 2.0, 2.0], dtype=F64)
    stds = 0.3 + 0.3 * torch.rand(5, 4, generator=g, dtype=F64)
    gmm = sd.GaussianMixture(means, stds, torch.tensor([0.35, 0.3, 0.2, 0.1, 0.05], dtype=F64),
                             labels=list(range(5)))
    return gmm, means[4].clone(), torch.tensor([1, 1, 0, 0])


PROBLEMS = {"2d": narrow_rare_mixture, "4d": four_d_mixture}


def occupancy_error(gmm, x_known, mask, samples) -> float:
    """Total variation between the component occupancy of the samples and that of 20000 exact
    posterior draws, each sample given to the posterior component of highest responsibility for
    its hidden block (overlapping components make the assignment imperfect, alike for both)."""
    posterior = gmm.posterior(x_known, mask)
    hidden = mask.reshape(-1) == 0

    def occupancy(x):
        best = posterior.class_log_probs(x.reshape(len(x), -1)[:, hidden]).argmax(1)
        return torch.bincount(best, minlength=gmm.num_classes).double() / len(x)

    exact = gmm.sample_posterior(x_known, mask, 20000, torch.Generator().manual_seed(12))
    return float((occupancy(samples) - occupancy(exact)).abs().sum() / 2)


def small_problem(batch: int = 6):
    """A 2-D mixture, observations with NaN where hidden, and one mask per example."""
    gmm, x, _ = narrow_rare_mixture()
    x_known = x.expand(batch, 2).clone()
    mask = torch.zeros(batch, 2, dtype=torch.long)
    mask[::2, 0] = 1
    mask[1::2, 1] = 1
    x_known[mask == 0] = float("nan")
    x_known[1::2, 1] = 1.5
    return gmm.score_model(SDE), x_known, mask


# --- the known block is x_known, exactly ------------------------------------------------------

@pytest.mark.parametrize("method, kwargs", [("replacement", {"steps": 5}),
                                            ("repaint", {"steps": 6, "jump_length": 2,
                                                         "resamplings": 2}),
                                            ("smc", {"steps": 5, "particles": 4})])
@pytest.mark.parametrize("denoise", [True, False])
def test_known_block_is_exact(method, kwargs, denoise):
    model, x_known, mask = small_problem()
    r = sd.inpaint(model, x_known, mask, method=method, generator=torch.Generator().manual_seed(0),
                   return_info=True, denoise=denoise, **kwargs)
    observed = mask == 1
    assert r.x.shape == x_known.shape and r.x.dtype == F64
    assert torch.equal(r.x[observed], x_known[observed])
    assert bool(torch.isfinite(r.x).all())
    assert r.nfe > 0 and r.evaluations >= r.nfe and r.seconds > 0
    # a bool mask shared by every example works too
    shared = sd.inpaint(model, x_known[::2], torch.tensor([True, False]), method=method,
                        generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(shared[:, 0], x_known[::2, 0])


@pytest.mark.parametrize("method", ["replacement", "repaint", "smc"])
def test_seeded_runs_repeat(method):
    model, x_known, mask = small_problem(4)
    kwargs = {"steps": 4} if method != "repaint" else {"steps": 4, "jump_length": 2}
    a, b = (sd.inpaint(model, x_known, mask, method=method, generator=torch.Generator().manual_seed(5),
                       **kwargs) for _ in range(2))
    assert torch.equal(a, b)


# --- SMC (MCGdiff) is consistent -----------------------------------------------------------------

def smc_against_exact(problem, particles_list, n=400, **kwargs):
    """``{K: (energy distance, occupancy error)}`` of SMC samples, and the two-sample floor."""
    gmm, x, mask = PROBLEMS[problem]()
    model = gmm.score_model(SDE)
    exact = gmm.sample_posterior(x, mask, n, torch.Generator().manual_seed(11))
    floor = two_sample_floor(lambda m, g: gmm.sample_posterior(x, mask, m, g), n)
    results = {}
    for particles in particles_list:
        samples = sd.inpaint(model, x.expand(n, -1), mask, method="smc", particles=particles,
                             generator=torch.Generator().manual_seed(1), **kwargs)
        results[particles] = (energy_distance(samples, exact), occupancy_error(gmm, x, mask, samples))
    return results, floor


def test_smc_matches_the_exact_posterior_2d():
    # SMC is consistent for the posterior of the model's own 50-step DDIM (eta = 1) chain; on this
    # mixture that chain is close to the exact one, and 256 particles reach it
    results, floor = smc_against_exact("2d", [256])
    distance, occupancy = results[256]
    assert distance <= 3 * floor, (distance, floor)
    assert occupancy < 0.06, results


@pytest.mark.slow
def test_smc_matches_the_exact_posterior_4d():
    # SMC converges to the posterior of the model's own chain: with 50 uniform steps that chain's
    # posterior is off the exact one here (256 particles: occupancy off by 0.1, about 4x the
    # floor), with 100 steps it is close enough (2x). 15-40 s.
    results, floor = smc_against_exact("4d", [256], steps=100)
    assert results[256][0] <= 3 * floor, (results, floor)


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_smc_error_falls_with_particles(problem):
    results, floor = smc_against_exact(problem, [1, 16, 64])
    (d1, o1), d16, (d64, o64) = results[1], results[16][0], results[64]
    # one particle is the unconditional chain pulled towards y, unweighted: far off
    assert d1 > 3 * d64 and o1 > o64 + 0.1, results
    assert d16 > d64 or d64 <= 3 * floor, results
    assert o64 < 0.1, results


def test_smc_reports_particles_and_effective_sample_size():
    model, x_known, mask = small_problem(2)
    r = sd.inpaint(model, x_known, mask, method="smc", particles=8, steps=7,
                   generator=torch.Generator().manual_seed(0), return_info=True)
    assert r.nfe == 7 + 1                                     # one call of B K per step, denoise
    assert r.evaluations == 7 * 8 + 1
    assert r.extra["particles"] == 8 and len(r.extra["ess"]) == 7
    assert all(0 < e <= 1 + 1e-12 for e in r.extra["ess"])


# --- replacement: every sampler, and its bias ---------------------------------------------------

@pytest.mark.parametrize("sampler", sd.samplers.available())
def test_replacement_runs_with_every_sampler(sampler):
    model, x_known, mask = small_problem(8)
    cls = sd.samplers.get(sampler)
    steps = None if cls.adaptive else 4
    options = {"rtol": 1e-3, "atol": 1e-3} if cls.adaptive else {}
    r = sd.inpaint(model, x_known, mask, sampler=sampler, steps=steps,
                   generator=torch.Generator().manual_seed(0), return_info=True, **options)
    observed = mask == 1
    assert torch.equal(r.x[observed], x_known[observed]) and bool(torch.isfinite(r.x).all())
    if not cls.adaptive:
        assert r.nfe == cls.calls(r.times.numel() - 1) + 1          # the sampler's own, + denoise


def test_replacement_is_biased_where_smc_is_not():
    gmm, x, mask = narrow_rare_mixture()
    n = 400
    model = gmm.score_model(SDE)
    errors = {}
    for label, kwargs in {"replacement ddim": {"sampler": "ddim", "steps": 50},
                          "replacement euler_maruyama": {"sampler": "euler_maruyama", "steps": 100},
                          "smc": {"method": "smc", "particles": 64}}.items():
        samples = sd.inpaint(model, x.expand(n, -1), mask, generator=torch.Generator().manual_seed(2),
                             **kwargs)
        errors[label] = occupancy_error(gmm, x, mask, samples)
    # the posterior puts 0.62 on the weight-0.1 component; replacement stays near the prior's
    # share of the components that fit y
    assert errors["replacement ddim"] > 0.2 and errors["replacement euler_maruyama"] > 0.2, errors
    assert errors["replacement ddim"] > 3 * errors["smc"], errors


# --- RePaint: the jump schedule and its NFE ---------------------------------------------------------

def test_repaint_schedule_of_the_paper():
    walk = repaint_schedule(250, 10, 10)
    steps = np.diff(walk)
    assert walk[0] == 0 and walk[-1] == 250 and set(steps.tolist()) == {-1, 1}
    assert len(walk) == 4571 and (steps > 0).sum() == 2410 and (steps < 0).sum() == 2160
    assert min(walk) >= 0 and max(walk) <= 250


@pytest.mark.parametrize("steps, j, r", [(12, 3, 3), (10, 4, 2), (7, 2, 4), (5, 10, 10), (6, 1, 1)])
def test_repaint_nfe_is_the_formula(steps, j, r):
    model, x_known, mask = small_problem(3)
    result = sd.inpaint(model, x_known, mask, method="repaint", steps=steps, jump_length=j,
                        resamplings=r, generator=torch.Generator().manual_seed(0), denoise=False,
                        return_info=True)
    formula = steps + (r - 1) * j * math.ceil((steps - j) / j)
    assert result.nfe == formula == result.extra["down_steps"]
    assert result.extra["up_steps"] == formula - steps
    denoised = sd.inpaint(model, x_known, mask, method="repaint", steps=steps, jump_length=j,
                          resamplings=r, generator=torch.Generator().manual_seed(0), return_info=True)
    assert denoised.nfe == formula + 1


# --- bad inputs ------------------------------------------------------------------------------------

BAD = [
    ({"mask": torch.tensor([1, 0, 0])}, ValueError, r"mask has shape \(3,\), expected \(2,\)"),
    ({"mask": torch.tensor([1.0, 0.5])}, ValueError, r"only 0 and 1 .*got 0\.5"),
    ({"mask": torch.tensor([0, 0])}, ValueError, r"observes no coordinate \(all 0\)"),
    ({"mask": torch.tensor([1, 1])}, ValueError, r"observes every coordinate \(all 1\)"),
    ({"mask": torch.tensor([[1, 0], [1, 1], [0, 1]])}, ValueError, r"mask of example 1 observes every"),
    ({"mask": [1, 0]}, TypeError, r"mask must be a torch.Tensor of 0/1"),
    ({"x_known": torch.tensor([[float("nan"), 0.0]] * 3, dtype=F64)}, ValueError,
     r"x_known has 3 non-finite observed value"),
    ({"x_known": torch.zeros(2, dtype=F64)}, ValueError, r"x_known must have shape \(batch, \.\.\.\)"),
    ({"method": "dps"}, ValueError, r"unknown inpainting method 'dps'; allowed: replacement, repaint, smc"),
    ({"method": "smc", "particles": 0}, ValueError, r"particles must be >= 1, got 0"),
    ({"method": "repaint", "jump_length": 0}, ValueError, r"jump_length must be >= 1, got 0"),
    ({"method": "repaint", "resamplings": 0}, ValueError, r"resamplings must be >= 1, got 0"),
    ({"particles": 8}, ValueError, r"particles=8 is an argument of method 'smc', not of 'replacement'"),
    ({"method": "repaint", "kappa": 0.1}, ValueError, r"kappa=0.1 is an argument of method 'smc'"),
    ({"method": "smc", "jump_length": 3}, ValueError, r"jump_length=3 is an argument of method 'repaint'"),
    ({"method": "smc", "sampler": "heun"}, ValueError,
     r"sampler 'heun' given to method 'smc'.*allowed: ddim"),
    ({"method": "smc", "eta": 0.0}, ValueError, r"eta=0 given to method 'smc'.*\(0, 1\]"),
    ({"method": "smc", "kappa": -1.0}, ValueError, r"kappa must be in \(0.0, inf\)"),
    ({"method": "repaint", "sampler": "ode"}, ValueError, r"sampler 'ode' is adaptive.*allowed: .*ddim"),
    ({"sampler": "ddim", "bogus": 1}, ValueError, r"unknown option 'bogus' for sampler 'ddim'"),
    ({"generator": 3}, TypeError, r"generator must be a torch.Generator or None, got int"),
]


@pytest.mark.parametrize("change, error, pattern", BAD)
def test_bad_inputs_name_the_value_and_what_is_allowed(change, error, pattern):
    gmm, x, _ = narrow_rare_mixture()
    args = {"x_known": x.expand(3, 2), "mask": torch.tensor([1, 0]), **change}
    x_known, mask = args.pop("x_known"), args.pop("mask")
    with pytest.raises(error, match=pattern):
        sd.inpaint(gmm.score_model(SDE), x_known, mask, steps=2, **args)


# --- the command -----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, pattern", [
    ("middle", r"unknown --mask 'middle'; allowed: left, right, top, bottom, random:P"),
    ("random:1.5", r"P must be a number in \(0, 1\)"),
    ("random:x", r"P must be a number in \(0, 1\)"),
    ("missing.npy", r"--mask file 'missing.npy' does not exist"),
])
def test_cli_bad_mask_is_one_line(capsys, spec, pattern):
    fails_with(capsys, ["inpaint", "--input", "digits", "--mask", spec, "--num", "1", "--steps", "1"],
               pattern)


def test_cli_wrong_method_argument_is_one_line(capsys, tmp_path):
    fails_with(capsys, ["inpaint", "--input", "digits", "--mask", "left", "--num", "1", "--steps",
                        "1", "--particles", "2", "--out", str(tmp_path / "x.npy")],
               r"particles=2 is an argument of method 'smc'")


@pytest.mark.parametrize("method, extra", [("smc", ["--particles", "2"]),
                                           ("repaint", ["--jump-length", "1", "--resamplings", "2"])])
def test_cli_inpaints_digits(capsys, tmp_path, method, extra):
    out = tmp_path / "inpainted.npy"
    assert main(["inpaint", "--input", "digits", "--mask", "left", "--method", method, "--steps", "3",
                 "--num", "2", "--out", str(out), "--no-progress", *extra]) == 0
    assert "NFE" in capsys.readouterr().out
    x = np.load(out)
    original = load_dataset("digits").test[:2].numpy()
    assert x.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(x[..., 4:], original[..., 4:])      # the right half is kept
    assert out.with_suffix(".png").stat().st_size > 0


def test_cli_random_mask_from_a_file_input(capsys, tmp_path):
    images = tmp_path / "digits.npy"
    np.save(images, load_dataset("digits").test[:2].numpy())
    out = tmp_path / "out.npy"
    assert main(["inpaint", "--input", str(images), "--mask", "random:0.5", "--steps", "2",
                 "--out", str(out), "--no-progress", "--seed", "3"]) == 0
    assert np.load(out).shape == (2, 1, 8, 8) and out.with_suffix(".png").exists()

"""Stochastic samplers (euler_maruyama, sde, reverse_diffusion, pc, ddim with eta=1) against the
exact Gaussian-mixture data: the distribution they sample (energy distance against the two-sample
floor, mixture weights), every process, exact NFE, seeding and the shared Brownian path."""

import pytest
import torch

import sdediff as sd
from sdediff.bench.metrics import two_sample_floor
from sdediff.samplers.noise import BrownianNoise
from tests.exact import energy_distance, ring_mixture, rms

PROCESSES = [sd.VPSDE(), sd.VPSDE("cosine"), sd.SubVPSDE(), sd.VESDE()]
#: (sampler, options): every stochastic sampler of this family, ddim's ancestral limit for comparison.
CONFIGS = [("euler_maruyama", {}), ("sde", {}), ("sde", {"method": "srk"}),
           ("reverse_diffusion", {}), ("pc", {}), ("ddim", {"eta": 1.0})]
IDS = [name + "".join(f"-{v}" for v in opts.values()) for name, opts in CONFIGS]
N_BIG, N_SMALL = 2000, 500


def generator(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def gmm():
    return ring_mixture()


@pytest.fixture(scope="module")
def reference(gmm):
    """Exact samples, and the two-sample floor (mean energy distance of two exact sets) per size."""
    draw = lambda n, g: gmm.sample(n, generator=g)  # noqa: E731
    return {n: (gmm.sample(n, generator=generator(123)), two_sample_floor(draw, n, repeats=5, seed=0))
            for n in (N_BIG, N_SMALL)}


def draw(model, name, n, steps, seed=1, **options):
    return sd.sample(model, shape=(n, 2), sampler=name, steps=steps, generator=generator(seed),
                     denoise=False, return_info=True, **options)


def weight_error(gmm, x):
    """Largest gap between the mixture weights and the fractions of samples nearest each mean."""
    nearest = torch.cdist(x.double(), gmm.means).argmin(dim=1)
    fractions = torch.bincount(nearest, minlength=gmm.weights.numel()).double() / x.shape[0]
    return float((fractions - gmm.weights).abs().max())


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_samples_the_mixture(name, options, gmm, reference):
    x_ref, floor = reference[N_BIG]
    x = draw(gmm.score_model(sd.VPSDE()), name, N_BIG, steps=200, **options).x
    distance = energy_distance(x, x_ref)
    print(f"{name} {options}: energy distance {distance:.2e} = {distance / floor:.2f} x floor {floor:.2e}")
    assert distance < 3 * floor
    assert weight_error(gmm, x) < 0.03  # binomial std of a fraction is <= 0.009 here


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: repr(s)[:14])
def test_every_process(name, options, sde, gmm, reference):
    x_ref, floor = reference[N_SMALL]
    result = draw(gmm.score_model(sde), name, N_SMALL, steps=100, **options)
    assert result.x.shape == (N_SMALL, 2) and bool(torch.isfinite(result.x).all())
    assert energy_distance(result.x, x_ref) < 5 * floor
    assert weight_error(gmm, result.x) < 0.06


def test_pc_on_sub_vp(gmm, reference):
    """score_sde's Langevin corrector crashes on sub-VP (no alphas table); here alpha_i is defined
    for every process."""
    x_ref, floor = reference[N_SMALL]
    result = draw(gmm.score_model(sd.SubVPSDE()), "pc", N_SMALL, steps=100, corrector_steps=2)
    assert result.nfe == 300
    assert bool(torch.isfinite(result.x).all())
    assert energy_distance(result.x, x_ref) < 5 * floor


@pytest.mark.parametrize(("name", "options", "per_step"), [
    ("euler_maruyama", {}, 1), ("reverse_diffusion", {}, 1), ("ddim", {"eta": 1.0}, 1),
    ("sde", {"method": "euler"}, 1), ("sde", {"method": "milstein"}, 1), ("sde", {"method": "srk"}, 3),
    ("pc", {"corrector_steps": 0}, 1), ("pc", {}, 2), ("pc", {"corrector_steps": 3}, 4)])
def test_nfe_is_exact(name, options, per_step, gmm):
    sampler = sd.samplers.get(name, **options)
    assert sampler.nfe(7) == 7 * per_step
    model = gmm.score_model(sd.VPSDE())
    for denoise in (True, False):
        result = sd.sample(model, shape=(8, 2), sampler=name, steps=7, generator=generator(0),
                           denoise=denoise, return_info=True, **options)
        assert result.nfe == sampler.nfe(7) + int(denoise)


def test_pc_without_corrector_is_reverse_diffusion(gmm):
    model = gmm.score_model(sd.VPSDE())
    pc = draw(model, "pc", 64, steps=20, corrector_steps=0)
    rd = draw(model, "reverse_diffusion", 64, steps=20)
    assert pc.nfe == rd.nfe == 20
    assert torch.equal(pc.x, rd.x)


def test_sde_euler_is_euler_maruyama_but_for_the_last_noise(gmm):
    """torchsde in s = T - t sees the sampler's Brownian path; milstein's correction vanishes for
    noise that does not depend on x."""
    model = gmm.score_model(sd.VPSDE())
    kw = dict(shape=(64, 2), steps=20, denoise=False, return_info=True, keep_trajectory=True)
    em = sd.sample(model, sampler="euler_maruyama", generator=generator(5), **kw)
    euler = sd.sample(model, sampler="sde", generator=generator(5), **kw)
    milstein = sd.sample(model, sampler="sde", method="milstein", generator=generator(5), **kw)
    torch.testing.assert_close(euler.trajectory[:-1], em.trajectory[:-1], rtol=1e-4, atol=1e-4)
    assert rms(euler.x, em.x) > 1e-2  # torchsde adds noise on the last step too
    torch.testing.assert_close(milstein.x, euler.x)


@pytest.mark.parametrize(("name", "options"), CONFIGS, ids=IDS)
def test_seeded(name, options, gmm):
    model = gmm.score_model(sd.VPSDE())
    a, b, c = (draw(model, name, 32, steps=10, seed=s, **options).x for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion", "sde"])
def test_one_brownian_path_at_any_step_count(name, gmm):
    """With one seed, 100 and 200 steps integrate the same Brownian path: their samples differ by
    the discretisation error only, far less than samples of two seeds."""
    model = gmm.score_model(sd.VPSDE())
    coarse, fine, other = (draw(model, name, 200, steps=n, seed=s).x
                           for n, s in ((100, 3), (200, 3), (200, 4)))
    print(f"{name}: same seed {rms(coarse, fine):.3f}, two seeds {rms(fine, other):.3f}")
    assert rms(coarse, fine) < 0.2 * rms(fine, other)  # a grid-dependent path gives ~1


def test_corrector_normals_are_seeded_and_independent():
    noise, same = (BrownianNoise((4000,), 1.0, seed=11) for _ in range(2))
    z = noise.corrector_normal(3, 0)
    assert torch.equal(z, same.corrector_normal(3, 0))
    others = [noise.corrector_normal(3, 1), noise.corrector_normal(4, 0),
              BrownianNoise((4000,), 1.0, seed=12).corrector_normal(3, 0), noise.normal(1.0, 0.5)]
    for other in others:
        assert abs(float(torch.corrcoef(torch.stack([z, other]))[0, 1])) < 0.06
    assert abs(float(z.mean())) < 0.06 and abs(float(z.std()) - 1) < 0.05


def test_option_errors_name_the_allowed_values(gmm):
    model = gmm.score_model(sd.VPSDE())
    with pytest.raises(ValueError, match=r"unknown method 'heun'; allowed: euler, milstein, srk"):
        sd.sample(model, shape=(2, 2), sampler="sde", method="heun")
    with pytest.raises(ValueError, match=r"snr must be in \(0.0, inf\), got -0.1"):
        sd.samplers.get("pc", snr=-0.1)
    with pytest.raises(ValueError, match=r"corrector_steps must be >= 0, got -1"):
        sd.samplers.get("pc", corrector_steps=-1)
    with pytest.raises(TypeError, match=r"corrector_steps must be an integer, got 1.5"):
        sd.samplers.get("pc", corrector_steps=1.5)


def test_declared_metadata():
    for name in ("euler_maruyama", "sde", "reverse_diffusion", "pc"):
        sampler = sd.samplers.get(name)
        assert sampler.is_stochastic() and sampler.order == 1 and sampler.default_steps == 500
    assert sd.samplers.get("sde", method="srk").order == 1.5

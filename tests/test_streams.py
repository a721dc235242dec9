"""Per-sample random streams: sample i depends only on (seed, i).

- The hash is SplitMix64's finaliser: checked bit for bit against numpy's uint64 arithmetic
  (an independent implementation of the same formula).
- Draws are the same whatever the batch (1, 7 or 64) and the start index; they are standard
  normal / uniform / Rademacher by Kolmogorov-Smirnov and moment checks, and independent across
  samples and streams by correlation.
- :class:`SampleBrownian` is Brownian motion: ``Var W(t) = t``, ``Cov(W(s), W(t)) = min(s, t)``,
  unit-variance normalised increments, independent increments; one path at any step count.
- Every stochastic sampler gives sample i the same result in batches of 1, 7 and 64, on the
  exact score of a mixture; the deterministic ones too (only x_T is random).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

import sdediff as sd
from sdediff import samplers
from sdediff.ode import dequantize, draw_probes
from sdediff.samplers.noise import SampleBrownian
from sdediff.streams import SampleSeeds, mix64

pytestmark = pytest.mark.usefixtures("one_thread")


def mix64_numpy(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def test_hash_is_splitmix64_bit_for_bit():
    words = torch.randint(-2**63, 2**63 - 1, (50_000,), dtype=torch.int64,
                          generator=torch.Generator().manual_seed(0))
    words[:4] = torch.tensor([0, -1, 2**63 - 1, -2**63])
    ours = mix64(words).numpy().view(np.uint64)
    assert np.array_equal(ours, mix64_numpy(words.numpy().view(np.uint64)))
    # SplitMix64's first output from state 0 (Steele et al.'s reference generator)
    assert int(mix64(torch.tensor([0x9E3779B97F4A7C15 - 2**64]))[0]) & (2**64 - 1) == \
        0xE220A8397B1DCDAF


@pytest.mark.parametrize("kind", ["normal", "uniform", "rademacher"])
def test_draws_do_not_depend_on_the_batch(kind):
    seeds = SampleSeeds(11)
    whole = getattr(seeds, kind)((64, 3, 5))
    for size in (1, 7):
        parts = [getattr(seeds.shifted(a), kind)((min(size, 64 - a), 3, 5)) for a in range(0, 64, size)]
        assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(getattr(SampleSeeds(11, start=5), kind)((2, 3, 5)), whole[5:7])
    assert not torch.equal(getattr(SampleSeeds(12), kind)((64, 3, 5)), whole)


def test_draws_have_the_right_distributions():
    seeds = SampleSeeds(3)
    z = seeds.normal((4000, 16), dtype=torch.float64)
    assert scipy.stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    assert abs(float(z.mean())) < 4 / 256 and abs(float(z.var()) - 1) < 4 * (2 / 64000) ** 0.5
    u = seeds.uniform((4000, 16), dtype=torch.float64)
    assert scipy.stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    assert 0 < float(u.min()) and float(u.max()) < 1
    r = seeds.rademacher((4000, 16))
    assert set(r.unique().tolist()) == {-1.0, 1.0} and abs(float(r.mean())) < 4 / 256
    # independent across samples (rows), coordinates, and streams
    corr = np.corrcoef(z.T.numpy())
    assert np.abs(corr - np.eye(16)).max() < 5 / 4000**0.5
    other = seeds.normal((4000, 16), stream=7, dtype=torch.float64)
    assert abs(float((z * other).mean())) < 5 / 256
    rows = np.corrcoef(z[:16].numpy())
    assert np.abs(rows - np.eye(16)).max() < 0.8   # 16 draws per row: loose, but not identical


def test_a_broken_stream_fails_the_distribution_checks():
    """The checks above can fail: the same draw for every sample is caught by the row test, a
    shifted normal by the moment test."""
    z = SampleSeeds(3).normal((1, 16), dtype=torch.float64).expand(4000, 16)
    assert np.abs(np.corrcoef(z[:16].numpy()) - np.eye(16)).max() > 0.99
    shifted = SampleSeeds(3).normal((4000, 16), dtype=torch.float64) + 0.05
    assert abs(float(shifted.mean())) > 4 / 256


def test_sample_brownian_is_brownian_motion():
    n = 40_000
    W = SampleBrownian(SampleSeeds(1), (n, 1), 1.0, dtype=torch.float64)
    times = [0.1, 0.3, 0.5, 0.77, 1.0]
    paths = {t: W._path(W._cell(t)).flatten() for t in times}
    for s in times:
        assert float(paths[s].var()) == pytest.approx(s, rel=0.04)
        for t in times:
            assert float((paths[s] * paths[t]).mean()) == pytest.approx(min(s, t), abs=0.02)
    # independent increments over disjoint intervals, unit variance once normalised
    a, b = W.normal(0.5, 0.3), W.normal(0.3, 0.1)
    assert float(a.var()) == pytest.approx(1, rel=0.04) and abs(float((a * b).mean())) < 0.02
    # one path at any step count: increments add up exactly
    assert torch.allclose(W.increment(0.77, 0.1),
                          W.increment(0.77, 0.5) + W.increment(0.5, 0.3) + W.increment(0.3, 0.1),
                          atol=1e-12)


def test_sample_brownian_path_of_sample_i_is_its_own():
    shape = (7, 2, 3)
    whole = SampleBrownian(SampleSeeds(4), shape, 1.0)
    alone = SampleBrownian(SampleSeeds(4, start=5), (1, 2, 3), 1.0)
    # to float32 rounding: the weighted sum over tree nodes is a matrix product whose summation
    # order BLAS may choose by batch size (another sample's path differs by O(1))
    torch.testing.assert_close(whole.normal(0.9, 0.4)[5:6], alone.normal(0.9, 0.4), rtol=1e-6, atol=1e-6)
    assert torch.equal(whole.corrector_normal(3, 1)[5:6], alone.corrector_normal(3, 1))
    assert not torch.equal(whole.corrector_normal(3, 1), whole.corrector_normal(3, 2))


def test_steps_below_the_brownian_resolution_are_refused():
    W = SampleBrownian(SampleSeeds(0), (2, 2), 1.0)
    with pytest.raises(ValueError, match="below the Brownian resolution"):
        W.normal(0.5, 0.5 - 1e-12)


def mixture_model() -> sd.ScoreModel:
    gmm = sd.GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=torch.float64),
                             torch.tensor([0.3, 0.5], dtype=torch.float64),
                             torch.tensor([0.4, 0.6], dtype=torch.float64))
    return gmm.score_model(sd.VPSDE())


@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion", "pc", "ddpm", "sde",
                                  "ddim", "heun", "unipc"])
def test_sample_i_is_the_same_in_batches_of_1_7_and_64(name):
    model = mixture_model()
    options = {"ddim": {"eta": 1.0}, "heun": {"s_churn": 10.0}, "pc": {"step_norm": "sample"}}.get(name, {})
    sampler = samplers.get(name, **options)
    steps = 12

    def run(start, size):
        return sampler(model, shape=(size, 2), steps=steps, generator=SampleSeeds(9, start),
                       dtype=torch.float64).x

    whole = run(0, 64)
    for size in (1, 7):
        parts = torch.cat([run(a, min(size, 64 - a)) for a in range(0, 64, size)])
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)
    assert float((run(0, 64) - sampler(model, shape=(64, 2), steps=steps,
                                       generator=SampleSeeds(10), dtype=torch.float64).x
                  ).abs().max()) > 1e-2


def test_srk_refuses_per_sample_seeds():
    with pytest.raises(ValueError, match="method='srk' needs the space-time Levy area"):
        samplers.get("sde", method="srk")(mixture_model(), shape=(2, 2), steps=3,
                                          generator=SampleSeeds(0))


def test_likelihood_probes_and_dequantization_are_per_sample():
    seeds = SampleSeeds(2)
    probes = draw_probes((6, 3), 2, "rademacher", seeds, torch.float32)
    assert probes.shape == (2, 6, 3)
    assert torch.equal(probes[:, 4:], draw_probes((2, 3), 2, "rademacher", seeds.shifted(4),
                                                   torch.float32))
    x = torch.zeros(6, 3)
    deq = dequantize(x, 17, generator=seeds)
    assert torch.equal(deq[3:], dequantize(x[3:], 17, generator=seeds.shifted(3)))
    assert float(deq.abs().max()) <= 1 / 16


def test_a_bad_source_is_named():
    with pytest.raises(TypeError, match="generator must be a torch.Generator, sdediff.SampleSeeds"):
        samplers.get("ddim")(mixture_model(), shape=(2, 2), steps=3, generator=3)
    with pytest.raises(ValueError, match="start must be >= 0"):
        SampleSeeds(1, start=-1)

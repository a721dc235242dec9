"""The metrics that see samples stranded between modes (issue 19 item 1): the off-mode fraction
and the exact mean log-density, each checked against an independent derivation and against a
deliberately broken sample that the energy distance barely notices."""

from __future__ import annotations

import math

import pytest
import torch

from sdediff.bench.metrics import energy_distance, mean_log_density, off_mode_fraction
from sdediff.data import load_dataset, ring_means, toy_distribution, toy_sample

STD, N = 0.1, 4000


@pytest.fixture(scope="module")
def ring():
    return toy_distribution("8gaussians"), load_dataset("8gaussians", n=10 * N, seed=3).test[:N]


def test_the_toy_distribution_is_the_generator_s():
    g = torch.Generator().manual_seed(0)
    for name in ("8gaussians", "gmm"):
        mixture = toy_distribution(name)
        generated, exact = toy_sample(name, 20000, generator=g), mixture.sample(20000, generator=g)
        assert torch.allclose(generated.double().mean(0), mixture.mean, atol=0.03)
        assert torch.allclose(generated.double().T.cov(), mixture.covariance, atol=0.03)
        assert abs(mean_log_density(generated, mixture) - mean_log_density(exact, mixture)) < 0.03
    assert toy_distribution("swissroll") is None


def test_held_out_data_scores_the_chi_tail_and_the_entropy(ring):
    mixture, x = ring
    # P(chi_2 > 3) = exp(-9/2): 1.11%, binomial standard error 0.17% at 4000 samples
    assert abs(off_mode_fraction(x, mixture) - math.exp(-4.5)) < 0.006
    # 8 well-separated equal 2-D Gaussians: entropy log 8 + 1 + log(2 pi s^2)
    entropy = math.log(8) + 1 + math.log(2 * math.pi * STD**2)
    assert mean_log_density(x, mixture) == pytest.approx(-entropy, abs=0.05)


def test_points_between_the_modes_are_seen(ring):
    """15% of held-out points moved to the midpoints between neighbouring modes: the energy
    distance moves by a few 1e-4, the off-mode fraction by 0.15 and the mean log-density by nats."""
    mixture, x = ring
    means = ring_means(8, math.sqrt(2 * (1 - STD**2)))
    midpoints = (means + means.roll(1, 0)) / 2
    broken = x.clone()
    k = int(0.15 * len(x))
    noise = torch.randn(k, 2, generator=torch.Generator().manual_seed(1))
    broken[:k] = midpoints[torch.arange(k) % 8] + STD * noise
    assert off_mode_fraction(broken, mixture) - off_mode_fraction(x, mixture) > 0.12
    assert mean_log_density(x, mixture) - mean_log_density(broken, mixture) > 1.0
    reference = load_dataset("8gaussians", n=10 * N, seed=4).test[:N]
    assert energy_distance(broken, reference) - energy_distance(x, reference) < 2e-3


def test_bad_arguments_are_named(ring):
    mixture, x = ring
    with pytest.raises(ValueError, match="radius must be > 0, got -1"):
        off_mode_fraction(x, mixture, radius=-1)
    with pytest.raises(ValueError, match="samples of dimension 3, mixture of dimension 2"):
        off_mode_fraction(torch.zeros(5, 3), mixture)
    with pytest.raises(ValueError, match="samples of dimension 3, mixture of dimension 2"):
        mean_log_density(torch.zeros(5, 3), mixture)

"""The digit classifier behind the digits' Fréchet distance and class coverage."""

import pytest
import torch

from sdediff.bench.digit_features import (
    WEIGHTS,
    class_histogram,
    digit_features,
    digits_frechet,
    held_out_accuracy,
    load_digit_classifier,
)
from sdediff.data import load_digits


def test_the_shipped_classifier_is_in_the_package_and_accurate_on_held_out_digits():
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size < 500_000
    assert held_out_accuracy(load_digit_classifier()) >= 0.95


def test_features_are_64_dimensional_and_deterministic():
    x = load_digits().test[:20]
    f = digit_features(x)
    assert f.shape == (20, 64)
    assert torch.equal(f, digit_features(x))


def test_class_histogram_of_held_out_digits_matches_their_labels():
    data = load_digits()
    predicted = torch.tensor(class_histogram(data.test))
    true = torch.bincount(data.test_labels, minlength=10).double() / len(data.test_labels)
    assert abs(float(predicted.sum()) - 1) < 1e-12
    assert float((predicted.double() - true).abs().max()) < 0.03


def test_real_digits_score_near_the_floor_and_noise_far_above_it():
    data = load_digits()
    real = digits_frechet(data.train[-300:], seed=1)
    assert 0.5 < real.ratio < 2.0                       # real against real: the floor's own scale
    noise = digits_frechet(torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
                           * 2 - 1)
    assert noise.ratio > 10
    blank = digits_frechet(torch.full((300, 1, 8, 8), -1.0))
    assert blank.ratio > 10 and max(blank.classes) == 1.0   # one class: no coverage


def test_images_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 8, 8\).*got \(4, 1, 16, 16\)"):
        digit_features(torch.zeros(4, 1, 16, 16))

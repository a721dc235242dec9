"""The bundled class-conditional digits model against issue 16's targets (slow: minutes).

The benchmark (``benchmarks/bench_guidance.py``, 100 samples per class) is the measurement of
record; these re-check the targets at half its sample size, with the Fréchet floor of that size.
"""

import pytest
import torch

from sdediff.bench import digits_by_budget
from sdediff.bench.guidance import digits_by_guidance
from sdediff.checkpoint import load_model
from sdediff.pretrained import default_checkpoint

pytestmark = pytest.mark.slow


def test_some_guidance_weight_is_accurate_at_near_floor_frechet():
    model, _ = load_model(default_checkpoint())
    runs = list(digits_by_guidance(model, (0.0, 1.0, 2.0, 4.0), per_class=50, budget=20))
    accuracy = [r.accuracy for r in runs]
    assert accuracy[-1] > accuracy[0]                 # guidance sharpens the classes
    assert any(r.accuracy >= 0.95 and r.quality.ratio <= 1.5 for r in runs), \
        [(r.guidance, r.accuracy, r.quality.ratio) for r in runs]


def test_the_null_class_samples_digits_at_the_floor():
    model, _ = load_model(default_checkpoint())
    # benchmarks/bench_guidance.py's protocol (1000 samples: 1.18x). At 500 samples (and a floor of
    # 500) the same model measures 1.24x: the target holds at this count with little to spare.
    x_T = model.sde.prior_sample((1000, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    (run,) = digits_by_budget(model, x_T, ["dpm_solver++"], [50])
    assert run.quality.ratio <= 1.2, run.quality
    assert min(run.quality.classes) > 0.04 and max(run.quality.classes) < 0.16

"""Independent reference answers for the sampler tests (scipy, not sdediff's solvers).

The mixtures and the scipy probability-flow reference live in :mod:`sdediff.problems` (shared
with the benchmarks) and are re-exported here under their test names."""

from __future__ import annotations

import numpy as np
import torch

from sdediff.metrics import energy_distance  # noqa: F401  (re-exported for the tests)
from sdediff.problems import (  # noqa: F401  (re-exported: one home, the package)
    exact_pf_endpoint,
    exact_pf_solve,
    ring_mixture,
)


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square distance per sample: sqrt(mean_b ||a_b - b_b||^2)."""
    diff = (a.double() - b.double()).reshape(a.shape[0], -1)
    return float(diff.pow(2).sum(1).mean().sqrt())


def slope(steps, errors) -> float:
    """Least-squares slope of log(error) against log(1/steps): the observed order."""
    return float(np.polyfit(np.log(1 / np.asarray(steps, float)), np.log(errors), 1)[0])


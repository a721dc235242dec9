"""Independent reference answers for the sampler tests (scipy, not sdediff's solvers).

The mixtures and the scipy probability-flow reference live in :mod:`sdediff.bench.problems`, the
RMS error and energy distance in :mod:`sdediff.bench.metrics` (shared with the benchmarks); they
are re-exported here under their test names."""

from __future__ import annotations

import numpy as np

from sdediff.bench.metrics import energy_distance, rms  # noqa: F401  (re-exported for the tests)
from sdediff.bench.problems import (  # noqa: F401  (re-exported: one home, the package)
    exact_pf_endpoint,
    exact_pf_solve,
    ring_mixture,
)


def slope(steps, errors) -> float:
    """Least-squares slope of log(error) against log(1/steps): the observed order."""
    return float(np.polyfit(np.log(1 / np.asarray(steps, float)), np.log(errors), 1)[0])


"""Sample-quality metrics that need no download.

- :func:`energy_distance`: the squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|``
  (Szekely & Rizzo), zero iff the distributions agree; any dimension.
- :func:`two_sample_floor`: the energy distance between two independent sets drawn from the same
  distribution, the value a perfect sampler scores at that sample size (printed beside results).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().reshape(x.shape[0], -1)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance between the samples ``x`` ``(n, ...)`` and ``y`` ``(m, ...)``
    (V-statistic)."""
    x, y = _flat(x), _flat(y)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def two_sample_floor(draw: Callable[[int, torch.Generator], torch.Tensor], n: int,
                     repeats: int = 5, seed: int = 0) -> float:
    """Mean energy distance between two independent ``n``-sample sets from ``draw(n, generator)``."""
    g = torch.Generator().manual_seed(seed)
    return sum(energy_distance(draw(n, g), draw(n, g)) for _ in range(repeats)) / repeats

"""Seeded Brownian noise for the stochastic samplers.

The noise of a reverse step from ``t_cur`` down to ``t_next`` is the Brownian increment
``W(t_cur) - W(t_next)`` of one path, queried from a :class:`torchsde.BrownianInterval` keyed by a
seed. The path does not depend on the grid: a sampler run at 50 or at 500 steps with the same
seed sees the same Brownian motion, so an NFE sweep compares like with like (the k-diffusion
``BrownianTreeNoiseSampler`` idea). That needs the interval's dyadic ``halfway_tree`` (as
``torchsde.BrownianTree``): by default a ``BrownianInterval`` splits at the query points, so its
path depends on where it was queried, and 200- and 400-step runs would see unrelated paths. Times
are resolved to :data:`BROWNIAN_TOL`. The path is one tensor of the batch's shape, so sample ``i``
depends on the batch size.

With :class:`~sdediff.streams.SampleSeeds` instead of a generator, :class:`SampleBrownian` gives
every sample its own path, keyed by ``(seed, i)``: the same for any batch size, split across
processes, or order of batches. It is the Levy-Ciesielski construction on the same dyadic tree:
``W(t) = W(T) t / T + sum over levels of sqrt(len) / 2 * hat(t) * z_node``, where the node at each
level is the dyadic interval (of length ``len``) that holds ``t``, ``hat`` its tent (1 at the
midpoint, 0 at the ends) and ``z_node`` a standard normal of the node's own stream; ``t`` is
snapped to the finest level's grid, ``T / 2**L <= BROWNIAN_TOL``. This is exact Brownian motion at
the grid points, and one query costs one hash of ``L x batch x D`` numbers, on the device, for the
whole batch (a torchsde interval per sample costs ~6 ms per query each: 81 s for 64 samples and
200 steps on this machine).

Predictor-corrector samplers also need fresh normals at a fixed time (Langevin moves), which no
Brownian increment provides: :meth:`BrownianNoise.corrector_normal` draws them from generators
keyed by ``(seed, step, k)``, independent of the path and of each other, reproducible from the seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchsde

from ..checks import InputValueError
from ..streams import BROWNIAN, CORRECTOR, SampleSeeds

#: Seeds are drawn as integers below this bound from the user's generator.
_SEED_BOUND = 2**62
#: Time resolution of the dyadic Brownian tree: steps down to ~1e-6 keep their variance within 1%;
#: each query costs ~log2(step / tol) normal draws.
BROWNIAN_TOL = 1e-8


class BrownianNoise:
    """A Brownian path ``W`` of shape ``shape`` on ``[0, T]``.

    ``increment(t_cur, t_next)`` is ``W(t_cur) - W(t_next)`` (variance ``t_cur - t_next`` per
    entry) and ``normal(t_cur, t_next)`` the same divided by its standard deviation, a standard
    normal draw for the discrete samplers. ``levy_area_approximation="space-time"`` adds the
    space-time Levy area that torchsde's ``srk`` needs (a different path for the same seed).
    """

    def __init__(self, shape, T: float, seed: int, dtype=torch.float32, device=None,
                 levy_area_approximation: str = "none"):
        self.shape = tuple(shape)
        self.T = float(T)
        self.seed = int(seed)
        self.dtype, self.device = dtype, device
        self._interval = torchsde.BrownianInterval(
            t0=0.0, t1=self.T, size=self.shape, dtype=dtype, device=device, entropy=self.seed,
            levy_area_approximation=levy_area_approximation, halfway_tree=True, tol=BROWNIAN_TOL)

    @classmethod
    def from_generator(cls, shape, T: float, generator: torch.Generator | None,
                       dtype=torch.float32, device=None) -> BrownianNoise:
        # drawn where the generator lives (a CUDA generator cannot draw on the CPU)
        seed = int(torch.randint(_SEED_BOUND, (1,), generator=generator,
                                 device=None if generator is None else generator.device))
        return cls(shape, T, seed, dtype=dtype, device=device)

    def increment(self, t_cur: float, t_next: float) -> torch.Tensor:
        return self._interval(float(t_next), float(t_cur))

    def normal(self, t_cur: float, t_next: float) -> torch.Tensor:
        return self.increment(t_cur, t_next) / (float(t_cur) - float(t_next)) ** 0.5

    def corrector_normal(self, step: int, k: int) -> torch.Tensor:
        """A standard normal of ``shape`` for the ``k``-th corrector move of step ``step``
        (0-based), independent of the path and of every other ``(step, k)``."""
        generator = torch.Generator(device=self.device or "cpu")
        generator.manual_seed(int(np.random.SeedSequence([self.seed, step, k]).generate_state(1)[0]))
        return torch.randn(self.shape, generator=generator, dtype=self.dtype, device=self.device)

    @property
    def interval(self) -> torchsde.BrownianInterval:
        """The underlying path, for ``torchsde.sdeint(bm=...)`` in reversed time ``s = T - t``."""
        return self._interval


#: Numbers per hashing chunk of :class:`SampleBrownian` (bounds the memory of one query).
_CHUNK = 1 << 22


class SampleBrownian:
    """Per-sample Brownian paths of shape ``shape`` ``(B, ...)`` on ``[0, T]``: sample ``i``'s
    path depends only on ``(seed, start + i)`` of ``seeds``. Same interface as
    :class:`BrownianNoise` (``increment``, ``normal``, ``corrector_normal``)."""

    def __init__(self, seeds: SampleSeeds, shape, T: float, dtype=torch.float32, device=None):
        self.seeds, self.shape, self.T = seeds, tuple(shape), float(T)
        self.dtype, self.device = dtype, device
        self.levels = max(1, math.ceil(math.log2(self.T / BROWNIAN_TOL)))
        self.cells = 1 << self.levels               # the finest grid: T / cells <= BROWNIAN_TOL
        self._cache: dict[int, torch.Tensor] = {}

    def _cell(self, t: float) -> int:
        return min(self.cells, max(0, round(float(t) / self.T * self.cells)))

    def _nodes(self, k: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The tree nodes whose tents cover grid point ``k`` and their weights, on the device:
        ``W(k h) = sum weight * z_node``. Node 0 is the root, ``W(T) / sqrt(T)``, with weight
        ``k / cells * sqrt(T)``; the node of level ``l >= 1`` is ``2**(l-1) + m``, the ``m``-th
        interval of length ``span h`` (``span = cells / 2**(l-1)`` grid cells) holding ``k``, with
        weight ``sqrt(span h) / 2 * tent``. Levels end where ``k`` is an interval's end (no finer
        tent covers it). Computed with device ops from host integers: no host-to-device copy."""
        depth = 0 if k in (0, self.cells) else self.levels - ((k & -k).bit_length() - 1)
        level = torch.arange(1, depth + 1, dtype=torch.int64, device=self.device)
        span = torch.full_like(level, self.cells) >> (level - 1)
        m = torch.div(torch.full_like(level, k), span, rounding_mode="floor")
        r, half = k - m * span, span // 2
        tent = 1 - (r - half).abs().to(dtype) / half.to(dtype)
        weight = (span.to(dtype) * (self.T / self.cells)).sqrt() / 2 * tent
        root = torch.full((1,), k / self.cells * math.sqrt(self.T), dtype=dtype, device=self.device)
        nodes = torch.cat([torch.zeros(1, dtype=torch.int64, device=self.device),
                           (torch.ones_like(level) << (level - 1)) + m])
        return nodes, torch.cat([root, weight])

    def _path(self, k: int) -> torch.Tensor:
        if k not in self._cache:
            if len(self._cache) > 4:                # a step reads two points; keep a few
                self._cache.clear()
            wide = torch.float64 if self.dtype == torch.float64 else torch.float32
            nodes, weights = self._nodes(k, wide)
            B, D = self.shape[0], math.prod(self.shape[1:])
            out = torch.zeros((B, D), dtype=wide, device=self.device)
            per = max(1, _CHUNK // (B * D))
            for a in range(0, len(nodes), per):
                z = self.seeds.normal((B, D), dtype=wide, device=self.device,
                                      streams=BROWNIAN + nodes[a:a + per])
                out += torch.tensordot(weights[a:a + per], z, dims=1)
            self._cache[k] = out.to(self.dtype).reshape(self.shape)
        return self._cache[k]

    def increment(self, t_cur: float, t_next: float) -> torch.Tensor:
        return self._path(self._cell(t_cur)) - self._path(self._cell(t_next))

    def normal(self, t_cur: float, t_next: float) -> torch.Tensor:
        k_cur, k_next = self._cell(t_cur), self._cell(t_next)
        if k_cur == k_next:
            raise InputValueError(f"a step from t={t_cur:g} to {t_next:g} is below the Brownian "
                                  f"resolution {self.T / self.cells:.3g}; take fewer steps")
        length = abs(k_cur - k_next) * self.T / self.cells
        return (self._path(k_cur) - self._path(k_next)) / length**0.5

    def corrector_normal(self, step: int, k: int) -> torch.Tensor:
        """As :meth:`BrownianNoise.corrector_normal`, from sample ``i``'s own streams."""
        return self.seeds.normal(self.shape, CORRECTOR + step * 256 + k, self.dtype, self.device)


def brownian(source, shape, T: float, dtype=torch.float32, device=None):
    """The noise of a stochastic solve: per-sample paths for :class:`SampleSeeds`, else one
    path for the batch seeded from the generator (``None``: torch's default generator)."""
    if isinstance(source, SampleSeeds):
        return SampleBrownian(source, shape, T, dtype=dtype, device=device)
    return BrownianNoise.from_generator(shape, T, source, dtype=dtype, device=device)

"""Seeded Brownian noise for the stochastic samplers.

The noise of a reverse step from ``t_cur`` down to ``t_next`` is the Brownian increment
``W(t_cur) - W(t_next)`` of one path, queried from a :class:`torchsde.BrownianInterval` keyed by a
seed. The path does not depend on the grid: a sampler run at 50 or at 500 steps with the same
seed sees the same Brownian motion, so an NFE sweep compares like with like (the k-diffusion
``BrownianTreeNoiseSampler`` idea). That needs the interval's dyadic ``halfway_tree`` (as
``torchsde.BrownianTree``): by default a ``BrownianInterval`` splits at the query points, so its
path depends on where it was queried, and 200- and 400-step runs would see unrelated paths. Times
are resolved to :data:`BROWNIAN_TOL`. The path is shared by the batch, so a sample depends on the
batch size; fix the batch to compare runs.

Predictor-corrector samplers also need fresh normals at a fixed time (Langevin moves), which no
Brownian increment provides: :meth:`BrownianNoise.corrector_normal` draws them from generators
keyed by ``(seed, step, k)``, independent of the path and of each other, reproducible from the seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torchsde

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

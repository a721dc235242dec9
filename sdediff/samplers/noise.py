"""Seeded Brownian noise for the stochastic samplers.

The noise of a reverse step from ``t_cur`` down to ``t_next`` is the Brownian increment
``W(t_cur) - W(t_next)`` of one path, queried from a :class:`torchsde.BrownianInterval` keyed by a
seed. The path does not depend on the grid: a sampler run at 50 or at 500 steps with the same
seed sees the same Brownian motion, so an NFE sweep compares like with like (the k-diffusion
``BrownianTreeNoiseSampler`` idea). The path is shared by the batch, so a sample depends on the
batch size; fix the batch to compare runs.
"""

from __future__ import annotations

import torch
import torchsde

#: Seeds are drawn as integers below this bound from the user's generator.
_SEED_BOUND = 2**62


class BrownianNoise:
    """A Brownian path ``W`` of shape ``shape`` on ``[0, T]``.

    ``increment(t_cur, t_next)`` is ``W(t_cur) - W(t_next)`` (variance ``t_cur - t_next`` per
    entry) and ``normal(t_cur, t_next)`` the same divided by its standard deviation, a standard
    normal draw for the discrete samplers.
    """

    def __init__(self, shape, T: float, seed: int, dtype=torch.float32, device=None):
        self.shape = tuple(shape)
        self._interval = torchsde.BrownianInterval(
            t0=0.0, t1=float(T), size=self.shape, dtype=dtype, device=device, entropy=int(seed),
            levy_area_approximation="none")

    @classmethod
    def from_generator(cls, shape, T: float, generator: torch.Generator | None,
                       dtype=torch.float32, device=None) -> BrownianNoise:
        seed = int(torch.randint(_SEED_BOUND, (1,), generator=generator))
        return cls(shape, T, seed, dtype=dtype, device=device)

    def increment(self, t_cur: float, t_next: float) -> torch.Tensor:
        return self._interval(float(t_next), float(t_cur))

    def normal(self, t_cur: float, t_next: float) -> torch.Tensor:
        return self.increment(t_cur, t_next) / (float(t_cur) - float(t_next)) ** 0.5

    @property
    def interval(self) -> torchsde.BrownianInterval:
        """The underlying path, for ``torchsde.sdeint(bm=...)`` in reversed time ``s = T - t``."""
        return self._interval

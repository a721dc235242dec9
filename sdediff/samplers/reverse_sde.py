"""The reverse SDE through ``torchsde.sdeint`` (Li et al. 2020, torchsde; Song et al. 2021, eq. 6).

torchsde integrates forward in time, so the reverse SDE ``dx = [f x - g^2 score] dt + g dw``, run
from ``T`` down to ``t_end``, is written in ``s = T - t`` on ``[0, T - t_end]``:

    dy = -[f(T - s) y - g(T - s)^2 score(y, T - s)] ds + g(T - s) dB(s),   B(s) = W(T) - W(T - s),

an Ito SDE with diagonal noise (``g(t)`` broadcast) on the state flattened to ``(batch, D)``. ``B``
is a Brownian motion in ``s`` built from the sampler's seeded path ``W``, so ``method="euler"`` sees
the noise of ``euler_maruyama`` step for step. The drift is
:meth:`~sdediff.sde.ForwardProcess.reverse_drift`.

Steps: one ``sdeint`` call per grid interval ``[s_i, s_{i+1}]``, with ``dt`` no smaller than it,
so torchsde takes exactly the grid's steps (one call with a fixed ``dt`` would step off a
non-uniform grid, and on a uniform one rounding can add a near-zero extra step).

=========  ==========  ============  ========  ============================================
method     weak order  strong order  NFE/step  Brownian path
=========  ==========  ============  ========  ============================================
euler      1           1             1         the sampler's (as ``euler_maruyama``)
milstein   1           1             1         the sampler's; ``g`` does not depend on ``x``,
                                               so its correction vanishes: equals ``euler``
srk        1.5         1.5           3         with space-time Levy area: for the same seed a
                                               path of its own (Rossler's SRID2 tableau)
=========  ==========  ============  ========  ============================================

Orders are torchsde's declared ones (strong order 1 for Euler–Maruyama: the noise is additive).
NFE is exact: ``sdeint`` probes the drift at the start of every call for its shape check, and
torchsde's SRK re-evaluates earlier stages' drifts inside its stage loop (its fourth drift repeats
the first, with weight 0); the drift is cached within a step by (time, state value), so each
distinct evaluation costs one network call.

Unlike ``euler_maruyama``, torchsde adds noise on every step, the last one included; with
``denoise=True`` the final Tweedie step removes it.
"""

from __future__ import annotations

import torch
import torchsde

from ..checks import InputValueError, check_choice, coefficient_dtype
from . import register
from .base import Sampler
from .noise import BrownianNoise, SampleBrownian

#: torchsde methods valid for diagonal-noise Ito SDEs: (weak order, network calls per step).
METHODS = {"euler": (1.0, 1), "milstein": (1.0, 1), "srk": (1.5, 3)}
#: torchsde's srk needs the space-time Levy area of the Brownian motion.
_LEVY_AREA = {"srk": "space-time"}


class _ReversedBrownian(torchsde.BaseBrownian):
    """``B(s) = W(T) - W(T - s)``, flattened to ``(batch, D)``: its increment over ``[s_a, s_b]``
    is ``W``'s over ``[T - s_b, T - s_a]``, and its space-time integral mirrors,
    ``U_B = h dW - U_W`` (``U = int (W(u) - W(u_a)) du`` over the interval of length ``h``)."""

    def __init__(self, noise: BrownianNoise | SampleBrownian, batch: int):
        super().__init__()
        self._noise, self._T = noise, noise.T
        self._shape = (batch, torch.Size(noise.shape[1:]).numel())

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_A:
            raise NotImplementedError("the reversed Brownian motion answers interval queries "
                                      "with at most the space-time Levy area")
        t_a, t_b = self._T - float(tb), self._T - float(ta)
        if not return_U:
            return self._noise.increment(t_b, t_a).reshape(self._shape)
        dW, U = self._noise.interval(t_a, t_b, return_U=True)
        return dW.reshape(self._shape), ((t_b - t_a) * dW - U).reshape(self._shape)

    def __repr__(self):
        return f"{type(self).__name__}(T={self._T}, shape={self._shape})"

    @property
    def dtype(self):
        return self._noise.dtype

    @property
    def device(self):
        return self._noise.device

    @property
    def shape(self):
        return self._shape

    @property
    def levy_area_approximation(self):
        if isinstance(self._noise, SampleBrownian):
            return "none"
        return self._noise.interval.levy_area_approximation


class _ReverseTimeSDE:
    """The reverse SDE in ``s = T - t`` in torchsde's interface (``f``, ``g`` on ``(batch, D)``)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, model, shape, T: float, device=None):
        self.model, self.shape, self.T = model, tuple(shape), T
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.dtype = coefficient_dtype(self.device)
        self._drifts = []  # (s, y, drift) evaluated in the current step

    def new_step(self):
        self._drifts.clear()

    def _time(self, s) -> torch.Tensor:
        # s is a host time (the span is on the CPU); the model's time is filled on its device,
        # with no host-to-device copy
        return torch.full((), self.T - float(s), dtype=self.dtype, device=self.device)

    def f(self, s, y):
        for s_seen, y_seen, drift in self._drifts:
            if s_seen == float(s) and (y_seen is y or torch.equal(y_seen, y)):
                return drift
        drift = -self.model.sde.reverse_drift(self.model, y.reshape(self.shape), self._time(s))
        drift = drift.reshape(y.shape)
        self._drifts.append((float(s), y, drift))
        return drift

    def g(self, s, y):
        return self.model.sde.diffusion(self._time(s)).to(y.dtype).expand_as(y)   # on y's device


@register("sde")
class ReverseSDE(Sampler):
    family = "sde"
    order = 1
    stochastic = True
    default_steps = 500
    defaults = {"schedule": "uniform", "method": "euler"}

    def check_options(self):
        method = check_choice("method", self.options["method"], METHODS)
        self.order = METHODS[method][0]  # the configured method's weak order

    def nfe(self, steps):
        return steps * METHODS[self.options["method"]][1]

    def run(self, model, x, ts, noise, observe):
        method = self.options["method"]
        T = float(ts[0])
        if method in _LEVY_AREA:
            if isinstance(noise, SampleBrownian):
                raise InputValueError(f"method={method!r} needs the space-time Levy area, which "
                                      "per-sample seeds (SampleSeeds) do not provide; allowed: "
                                      "method='euler' or 'milstein', or a torch.Generator")
            noise = BrownianNoise(noise.shape, noise.T, noise.seed, dtype=noise.dtype,
                                  device=noise.device, levy_area_approximation=_LEVY_AREA[method])
        bm = _ReversedBrownian(noise, x.shape[0])
        sde = _ReverseTimeSDE(model, x.shape, T, device=x.device)
        s = (T - ts).tolist()                                     # 0 = s_0 < ... < s_N = T - t_end
        y = x.reshape(x.shape[0], -1)
        for i, (s_cur, s_next) in enumerate(zip(s[:-1], s[1:], strict=True)):
            sde.new_step()
            # on the host: torchsde's step loop compares its times in Python (no device sync)
            span = torch.tensor([s_cur, s_next], dtype=torch.float64)
            y = torchsde.sdeint(sde, y, span, bm=bm, method=method, dt=2 * (s_next - s_cur),
                                adaptive=False)[-1]               # one step of `method`
            observe(i + 1, y.reshape(x.shape))
        return y.reshape(x.shape)

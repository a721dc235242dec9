"""Adaptive reverse-SDE solver of Jolicoeur-Martineau et al. 2021, "Gotta Go Fast When Generating
Data with Score-Based Models" (arXiv:2105.14080), Algorithm 1: an Euler–Maruyama step with an
embedded stochastic improved-Euler (Heun) estimate, both driven by the same Brownian increment.

The reverse SDE ``dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw`` runs from ``T`` down to
``t_end`` (drift: :meth:`~sdediff.sde.ForwardProcess.reverse_drift`, ``b(x, t) = f x - g^2 score``).
One **attempt** of a step of size ``h > 0`` from ``(x, t)`` to ``t - h``, with the increment
``dW = W(t) - W(t - h)`` of the sampler's Brownian path (variance ``h`` per element):

    K_1  = -h b(x, t)        + g(t)     dW
    x'   = x + K_1                                  (Euler–Maruyama, the lower estimate)
    K_2  = -h b(x', t - h)   + g(t - h) dW
    x''  = x + (K_1 + K_2) / 2                      (stochastic improved Euler, kept)

**Error control** (Algorithm 1, with the paper's choices: extrapolation, the previous sample in
the scale, the scaled L2 norm): per element ``delta = max(atol, rtol * max(|x'|, |x'_prev|))``,
``x'_prev`` the Euler–Maruyama estimate of the last accepted step (initially ``x_T``); per sample
``E_b = ||(x'' - x') / delta||_2 / sqrt(D)`` (``D`` elements per sample); over the batch, one
error ``E`` (option ``batch_error``, below). The attempt is accepted if ``E <= 1`` (then
``x <- x''``, ``t <- t - h``, ``x'_prev <- x'``); either way the next step is

    h <- min(t - t_end, theta * h * E^{-r}),

so the last step lands on ``t_end`` exactly (a step that would leave less than :data:`H_MIN`
before ``t_end`` is stretched to it instead).

**One step size for the batch.** The paper's code keeps one ``h`` per sample. Here the batch
shares ``t`` and ``h``, as ``dpm_adaptive`` does: the Brownian path of a batch (one
``torchsde.BrownianInterval``, or :class:`~sdediff.samplers.noise.SampleBrownian`) answers one
interval per query, and per-sample times would need a query per sample and step. The per-sample
errors are reduced by ``batch_error``: ``"rms"`` (default: the root mean square over the batch,
i.e. the RMS over all its elements, as torchdiffeq and k-diffusion; the average sample meets the
tolerance and the calls do not grow with the batch) or ``"max"`` (every sample meets it, as
DPM-Solver; for an SDE the worst of ``B`` samples sits in the tail of the noise, so the calls grow
with ``B``).

**Noise and rejections.** ``dW`` is the increment of the seeded Brownian path that every SDE
sampler of sdediff uses (:mod:`sdediff.samplers.noise`), not a fresh draw per attempt (the paper's
code draws ``z ~ N(0, I)`` afresh). A rejected attempt is retried from the same ``t`` with a
smaller ``h`` on the same path: the path's value at ``t - h_new`` is drawn from the Brownian bridge
between the times already queried (the tree/interval does this), so the retry is consistent with
the increment it replaces. Nothing is discarded, so rejection cannot select the noise (with fresh
draws, an attempt with a large ``|z|`` is likelier to be rejected, and the accepted increments are a
sample biased toward small values); the solution converges pathwise to the SDE's solution on that
path as the tolerance tightens; and one seed gives the same path as ``euler_maruyama`` and ``sde``,
so the samplers can be compared on it (``tests/test_adaptive_sde.py``).

**End and denoise.** Every step adds its noise, the last one included (as the paper and the
``sde`` sampler; ``euler_maruyama`` drops the noise of its last step, which on a fine fixed grid is
tiny, but an adaptive last step can be long, and dropping its ``g sqrt(h) z`` would shrink the
spread of the samples). With ``denoise=False`` the result is the state at ``t_end``; with
``denoise=True`` the base class applies the usual Tweedie step at ``t_end`` (one more call).

**Cost.** An attempt costs 2 network calls, ``b(x, t)`` and ``b(x', t - h)``; ``b(x, t)`` is kept
across rejected attempts (the state and time are unchanged), so a retry costs 1. Calls =
``2 accepted + rejected`` (+1 for the final denoise). Steps are internal: the sampler refuses
``steps``, ``nfe(steps)`` is ``None`` (the count is measured) and ``result.times`` is ``[T, t_end]``.

Declared order 1 (the weak and strong order of Euler–Maruyama with additive noise; the kept Heun
estimate is no worse). Constants (module-level, with sources): ``theta = 0.9`` (:data:`SAFETY`),
``r = 0.9`` (:data:`EXPONENT`, the paper's tuned value rather than a theoretical ``1/k``),
``h_init = 0.01`` (:data:`H_INIT`), ``rtol = 0.05`` (:data:`RTOL`, the paper's recommended
``eps_rel``), ``atol = 0.0078`` (:data:`ATOL`, the paper's ``eps_abs`` for data in ``[-1, 1]``,
one 8-bit level; ``0.0039`` for ``[0, 1]``).

Shapes: ``x`` is ``(B, ...)``, any event shape; times and coefficients are float64 Python numbers
on the host, the state keeps its dtype. Tolerances below ``base.TOLERANCE_EPS`` (10) machine epsilons of
the sample dtype raise ``ValueError``; a step size that collapses below :data:`H_MIN` raises
:class:`~sdediff.checks.NumericalError`.
"""

from __future__ import annotations

import math

import torch

from ..checks import NumericalError, check_choice, check_float, coefficient_dtype
from . import register
from .base import Sampler, check_resolvable, check_tolerances
from .noise import BROWNIAN_TOL

#: Step-size safety factor theta (Jolicoeur-Martineau et al. 2021, Algorithm 1; code ``safety=0.9``).
SAFETY = 0.9
#: Exponent r of the controller ``h <- theta h E^{-r}`` (the paper's tuned default ``exp=0.9``).
EXPONENT = 0.9
#: Initial step in t (the paper's ``h_init = 0.01``).
H_INIT = 0.01
#: Default tolerances: the paper's ``eps_rel = 0.05`` and ``eps_abs = 0.0078`` (data in [-1, 1]).
RTOL, ATOL = 0.05, 0.0078
#: How the per-sample errors become the batch's one error ``E``.
BATCH_ERRORS = ("rms", "max")
#: The smallest step: below 100 Brownian resolutions (1e-6) an increment's variance is off by
#: more than 1% (:mod:`sdediff.samplers.noise`), and the solve is breaking down, not stepping.
H_MIN = 100 * BROWNIAN_TOL
#: Floor of the error ratio E, so that an exact step (E = 0) still gives a finite next step.
E_FLOOR = 1e-12


@register("adaptive_sde")
class AdaptiveSDE(Sampler):
    family = "sde"
    order = 1
    stochastic = True
    adaptive = True
    default_steps = 1             # unused: the steps are chosen by the error control
    defaults = {"rtol": RTOL, "atol": ATOL, "h_init": H_INIT, "exponent": EXPONENT,
                "batch_error": "rms"}

    def check_options(self):
        check_tolerances(self.options)
        check_float("h_init", self.options["h_init"], 0.0, None, low_open=True)
        check_float("exponent", self.options["exponent"], 0.0, None, low_open=True)
        check_choice("batch_error", self.options["batch_error"], BATCH_ERRORS)

    def nfe(self, steps):
        return None

    def run(self, model, x, ts, noise, observe):
        sde = model.sde
        rtol, atol = self.options["rtol"], self.options["atol"]
        r, worst = self.options["exponent"], self.options["batch_error"] == "max"
        check_resolvable("adaptive_sde", rtol, atol, x.dtype)
        t_end = float(ts[-1])
        time_dtype = coefficient_dtype(x.device)

        def drift(x, t):                                   # b(x, t) = f x - g^2 score: one call
            return sde.reverse_drift(model, x, torch.full((), t, dtype=time_dtype, device=x.device))

        def g(t):
            return float(sde.diffusion(torch.tensor(t, dtype=torch.float64)))

        t = float(ts[0])
        h = min(self.options["h_init"], t - t_end)
        x_prev = x                                         # x'_prev <- x_T
        b_1 = None                                         # b(x, t), kept across rejections
        while True:
            last = h >= (t - t_end) - H_MIN                # stretch a step that would leave < H_MIN
            t_next = t_end if last else t - h
            h = t - t_next
            dW = noise.increment(t, t_next)                # W(t) - W(t - h), the path's own
            if b_1 is None:
                b_1 = drift(x, t)
            K_1 = -h * b_1 + g(t) * dW
            x_em = x + K_1                                 # x': Euler-Maruyama
            K_2 = -h * drift(x_em, t_next) + g(t_next) * dW
            x_heun = x + 0.5 * (K_1 + K_2)                 # x'': stochastic improved Euler
            # Algorithm 1: mixed tolerance per element, scaled L2 norm per sample, one E per batch
            delta = torch.clamp(rtol * torch.maximum(x_em.abs(), x_prev.abs()), min=atol)
            E_b = ((x_heun - x_em) / delta).flatten(1).pow(2).mean(1)
            E = float(E_b.max().sqrt() if worst else E_b.mean().sqrt())
            if not math.isfinite(E):
                raise NumericalError(
                    f"adaptive_sde: non-finite error estimate at t = {t:.6g} (the model returned "
                    "NaN or inf, or the state overflowed); check the model's output")
            if E <= 1:                                     # accept: continue from x''
                x, x_prev, t, b_1 = x_heun, x_em, t_next, None
                observe.at(t)
                if last:
                    break
            h = min(t - t_end, SAFETY * h * max(E, E_FLOOR) ** (-r))
            if h < H_MIN:
                raise NumericalError(
                    f"adaptive_sde: the step fell to {h:.3g} at t = {t:.6g}, below the Brownian "
                    f"resolution's limit {H_MIN:g}; rtol = {rtol:g}, atol = {atol:g} ask for more "
                    f"than {x.dtype} or the model's score resolve there. Loosen them, end at a "
                    "larger t_end, or sample in float64")
        observe(1, x)
        return x

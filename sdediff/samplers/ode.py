"""Probability-flow ODE through ``torchdiffeq.odeint`` (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", eq. 13; Chen et al. 2018 for torchdiffeq).

The sample path solves, from ``x_T`` at ``T`` down to ``t_end``,

    dx/dt = f(t) x - g(t)^2 score(x, t) / 2

(:meth:`~sdediff.sde.ForwardProcess.reverse_drift` with ``probability_flow=True``; torchdiffeq
integrates in decreasing time itself). The whole batch ``(B, ...)`` is one state of one
``odeint`` call; the drift's coefficients ``f``, ``g^2`` are computed in float64.

A process whose coefficients jump in ``t`` (a diffusers chain, :class:`~sdediff.sde.DiscreteVPSDE`:
``f`` is constant between its ``M`` nodes) is integrated in its clock ``c(t) = -log alpha(t)``,
``dx/dc = (dx/dt) / c'(t)``, where the jumps cancel (:meth:`ProbabilityFlowODE.integrate_in_clock`);
for the continuous processes the clock is ``t`` itself and nothing changes.

``method`` picks a torchdiffeq solver from :data:`METHODS` (order and network calls per step as
data, kept here and tested against torchdiffeq's public ``odeint``: each runs, reaches its order
and makes the declared calls):

- **adaptive** (``dopri5`` default, ``dopri8``, ``bosh3``, ``fehlberg2``, ``adaptive_heun``):
  embedded Runge-Kutta pairs with error control by ``rtol``/``atol`` over ``[T, t_end]``; the
  sampler refuses ``steps`` and ``nfe(steps)`` is ``None``: the count is measured, never
  estimated. The step sizes are shared by the batch (one error norm over all samples), so the NFE
  of a sample depends on the batch it was drawn with.
- **fixed-step** (``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``, ``explicit_adams``,
  ``implicit_adams``): torchdiffeq steps exactly on the sampler grid (``schedule``, ``steps``
  steps from ``T`` to ``t_end``), so the NFE is exact: ``stages * steps`` for the Runge-Kutta
  methods (torchdiffeq's ``rk4`` is the 3/8-rule variant, 4 calls).

The Adams methods run with ``max_order=ADAMS_MAX_ORDER`` (Adams-Bashforth 4, Adams-Moulton 5):
torchdiffeq's default history of 12 diverges on the probability-flow ODE (measured, all four
processes). ``explicit_adams`` takes ``ADAMS_WARMUP`` RK4 steps (4 calls each) before it has the
history, then one call per step. ``implicit_adams`` iterates its corrector until ``rtol``/``atol``
are met, so its NFE is measured. torchdiffeq's Adams weights assume equal steps: on the
``uniform`` grid they reach their order, on any other grid the step-ratio error leaves order 2
(``docs/samplers.md``), and the instance declares that.

``scipy_solver`` (numpy, its own ``solver=`` option) and the alias ``fixed_adams`` are left out.

This module is the only caller of torchdiffeq: :meth:`ProbabilityFlowODE.integrate` is the one
helper, used by the sampler's ``run`` and by :func:`sdediff.ode.log_likelihood` for its augmented
``(state, delta log p)`` system (:meth:`ProbabilityFlowODE.solve_augmented`). With
``adjoint=True`` it goes through ``torchdiffeq.odeint_adjoint``: the solve keeps gradients with
respect to the input and the network's parameters at memory constant in the number of steps.
The sampler is reversible (torchdiffeq integrates in either direction), so it also encodes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torchdiffeq import odeint, odeint_adjoint

from ..checks import (
    NumericalError,
    check_bool,
    check_choice,
    check_float,
    check_options,
    coefficient_dtype,
)
from . import register
from .base import Sampler


class Method(NamedTuple):
    """A torchdiffeq solver: global ``order``, ``adaptive`` step control, network ``calls`` per
    step (``None``: data-dependent, measured)."""

    order: int
    adaptive: bool
    calls: int | None


#: torchdiffeq methods offered (torchdiffeq ``_impl/*.py`` tableaux and ``fixed_grid.py``).
METHODS = {
    "dopri5": Method(order=5, adaptive=True, calls=None),     # Dormand-Prince 5(4)
    "dopri8": Method(order=8, adaptive=True, calls=None),     # Dormand-Prince 8(7)
    "bosh3": Method(order=3, adaptive=True, calls=None),      # Bogacki-Shampine 3(2)
    "fehlberg2": Method(order=2, adaptive=True, calls=None),  # Runge-Kutta-Fehlberg 2(1)
    "adaptive_heun": Method(order=2, adaptive=True, calls=None),
    "euler": Method(order=1, adaptive=False, calls=1),
    "midpoint": Method(order=2, adaptive=False, calls=2),
    "heun2": Method(order=2, adaptive=False, calls=2),
    "heun3": Method(order=3, adaptive=False, calls=3),
    "rk4": Method(order=4, adaptive=False, calls=4),          # the 3/8 rule
    "explicit_adams": Method(order=4, adaptive=False, calls=1),  # Adams-Bashforth 4
    "implicit_adams": Method(order=5, adaptive=False, calls=None),  # + Adams-Moulton 5
}

#: torchdiffeq's Adams ``max_order`` (history length + 1): Adams-Bashforth 4 / Adams-Moulton 5.
ADAMS_MAX_ORDER = 5
#: RK4 steps ``explicit_adams`` takes before its history is long enough (torchdiffeq
#: ``fixed_adams.py``: Adams-Bashforth from the third step on).
ADAMS_WARMUP = 2
#: Order of constant-weight Adams methods on a grid of unequal steps.
ADAMS_UNEQUAL_STEPS_ORDER = 2
ADAMS = ("explicit_adams", "implicit_adams")


def adjoint_params(model) -> tuple:
    """The network's trainable parameters: what ``odeint_adjoint`` differentiates besides the
    input (none for a plain function)."""
    net = model.net
    return tuple(p for p in net.parameters() if p.requires_grad) \
        if isinstance(net, torch.nn.Module) else ()


@register("ode")
class ProbabilityFlowODE(Sampler):
    family = "ode"
    order = METHODS["dopri5"].order       # of the default method; instances declare their own
    adaptive = True
    reversible = True
    default_steps = 100
    defaults = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "schedule": "uniform",
                "adjoint": False}

    def __init__(self, **options):
        super().__init__(**options)
        name = self.options["method"]
        method = METHODS[name]
        self.adaptive = method.adaptive
        equal_steps = isinstance(self.options["schedule"], str) and self.options["schedule"] == "uniform"
        self.order = (ADAMS_UNEQUAL_STEPS_ORDER if name in ADAMS and not equal_steps
                      else method.order)
        # an option this method would ignore is refused: schedule sets the fixed grid, rtol/atol
        # the adaptive steps (and implicit_adams' corrector)
        if self.adaptive:
            used = ("method", "rtol", "atol", "adjoint")
        else:
            used = ("method", "schedule", "adjoint") + (
                ("rtol", "atol") if name == "implicit_adams" else ())
        check_options(f"sampler 'ode' with method {name!r}", options, used)

    def check_options(self):
        check_choice("method", self.options["method"], METHODS)
        check_float("rtol", self.options["rtol"], 0.0, None, low_open=True)
        check_float("atol", self.options["atol"], 0.0, None, low_open=True)
        check_bool("adjoint", self.options["adjoint"])

    @property
    def differentiable(self) -> bool:
        return self.options["adjoint"]

    def nfe(self, steps):
        name = self.options["method"]
        calls = METHODS[name].calls
        if calls is None:
            return None
        if name == "explicit_adams":
            warmup = min(steps, ADAMS_WARMUP)
            return METHODS["rk4"].calls * warmup + calls * (steps - warmup)
        return calls * steps

    def integrate(self, func, y0, ts: torch.Tensor, params: tuple = ()):
        """torchdiffeq on ``dy/dt = func(t, y)`` (``y`` a tensor or a tuple of tensors) from
        ``ts[0]`` through every time of ``ts`` (either direction), with this sampler's method,
        tolerances and per-method options; returns the solution at every time of ``ts``. With
        ``adjoint=True``, ``odeint_adjoint`` differentiating ``params`` as well. A breakdown (step
        underflow, non-finite state: torchdiffeq's ``AssertionError``) becomes
        :class:`~sdediff.checks.NumericalError`."""
        name = self.options["method"]
        first = y0[0] if isinstance(y0, tuple) else y0
        # the times on the state's device (torchdiffeq would copy them there itself, warning)
        ts = ts.to(device=first.device, dtype=coefficient_dtype(first.device))
        if self.adaptive:   # end each solve exactly on its last time: an overshoot past T (or
            options = {"step_t": ts[-1:]}   # below t_end) would call the model outside [0, T]
            backward = {"step_t": ts[:1]}   # the adjoint pass runs ts backwards (a step_t at
        else:                               # its start would clip its first step to zero)
            options = backward = {"max_order": ADAMS_MAX_ORDER} if name in ADAMS else {}
        solver, extra = ((odeint_adjoint, {"adjoint_params": params, "adjoint_options": backward})
                         if self.options["adjoint"] else (odeint, {}))
        try:
            return solver(func, y0, ts, method=name, rtol=self.options["rtol"],
                          atol=self.options["atol"], options=options, **extra)
        except AssertionError as error:
            raise NumericalError(
                f"torchdiffeq method {name!r} broke down ({error}); check that the model's output "
                "is finite, loosen rtol/atol, or use a fixed-step method (method='rk4', steps=...)"
            ) from error

    def integrate_in_clock(self, sde, func, y0, ts: torch.Tensor, params: tuple = (),
                           observe=None):
        """:meth:`integrate` of ``dy/dt = func(t, y)`` in the process's clock ``c(t)``
        (:meth:`~sdediff.sde.ForwardProcess.clock`): ``dy/dc = func(t(c), y) / c'(t(c))`` from
        ``c(ts[0])`` through ``c(ts)``. For a process without one (the continuous processes) this
        is :meth:`integrate` in ``t`` itself. ``observe.at`` gets the time ``t``."""
        if not sde.has_clock:
            def timed(t, y):
                if observe is not None:
                    observe.at(t)
                return func(t, y)

            return self.integrate(timed, y0, ts, params)

        first = y0[0] if isinstance(y0, tuple) else y0
        dtype = coefficient_dtype(first.device)

        def clocked(c, y):
            t = sde.time_of_clock(c.to(dtype))
            if observe is not None:
                observe.at(t)
            rate = sde.clock_rate(t)
            rate = float(rate) if rate.is_cpu else rate.to(first.dtype)   # no device sync
            out = func(t, y)
            return tuple(v / rate for v in out) if isinstance(out, tuple) else out / rate

        return self.integrate(clocked, y0, sde.clock(ts), params)

    def run(self, model, x, ts, noise, observe):
        sde = model.sde

        dtype = coefficient_dtype(x.device)

        def drift(t, x):                                   # dx/dt = f x - g^2 score / 2
            return sde.reverse_drift(model, x, t.to(dtype), probability_flow=True)

        xs = self.integrate_in_clock(sde, drift, x, ts, adjoint_params(model), observe)
        for i in range(1, xs.shape[0]):
            observe(i, xs[i])
        return xs[-1]

    def solve_augmented(self, model, func, state: tuple, ts: torch.Tensor, *,
                        progress: bool = False, desc: str = "likelihood"):
        """Integrate an augmented system ``d state/dt = func(t, state)`` whose first entry is
        the probability-flow state (the likelihood's ``(x, delta log p)``) along ``ts``, with
        the bookkeeping of :meth:`~sdediff.samplers.base.Sampler.solve`. Returns the state at
        ``ts[-1]`` and the :class:`~sdediff.samplers.base.Observer` (``nfe``, ``seconds``)."""
        self._check_times(model.sde, ts)
        with self.observing(model, ts, state[0], progress=progress, desc=desc) as observe:
            ys = self.integrate_in_clock(model.sde, func, state, ts, adjoint_params(model), observe)
            for i in range(1, ts.numel()):
                observe(i, ys[0][i])
        return tuple(y[-1] for y in ys), observe

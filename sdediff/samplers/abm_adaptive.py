"""Adaptive exponential Adams-Bashforth-Moulton: a variable-step multistep predictor-corrector in
the half log-SNR whose predictor-corrector difference is the local error estimate, so that every
attempted step, accepted or rejected, costs **one** network call (``dpm_adaptive`` costs 2-3).

**Two forms of the probability-flow ODE.** With ``lambda = log(alpha/sigma)`` and
``h = lambda_t - lambda_s > 0``, the exact solution from ``s`` to ``t`` is, in the data-prediction
form (Lu et al. 2022b, "DPM-Solver++", sec. 4) and in the noise-prediction form (Lu et al. 2022,
"DPM-Solver", sec. 3.1),

    x_t = (sigma_t/sigma_s) x_s + alpha_t int_0^h e^{-(h - tau)} D(tau) dtau,     D = x0_theta,
    x_t = (alpha_t/alpha_s) x_s - sigma_t int_0^h e^{h - tau} eps(tau) dtau,      eps = eps_theta.

Write ``m`` for the prediction of the form in use and ``(a, c, g)`` for its linear factor
(``sigma_t/sigma_s`` or ``alpha_t/alpha_s``), prefactor (``alpha_t`` or ``-sigma_t``) and moments
(``g_k = k! h phi_{k+1}(-h)`` or ``k! h phi_{k+1}(h)``: :func:`~sdediff.samplers.expint.moments`,
:func:`~sdediff.samplers.expint.noise_moments`). A multistep rule integrates exactly the polynomial
through ``m`` at the nodes ``r_j = (lambda_j - lambda_s)/h``: ``x_t = a x_s + c sum_j w_j m_j``
with ``sum_j r_j^k w_j = g_k`` for ``k`` below the number of nodes
(:func:`~sdediff.samplers.expint.weights_from_moments`, float64, solved afresh for every step as
the steps vary; on a uniform grid the data form's predictor is ``dpm_solver++`` of that order).

**One attempt** of a step ``h`` from ``x_s`` with ``p = min(order, predictions kept)``:

1. predictor, exponential Adams-Bashforth of order ``p`` (Hochbruck & Ostermann 2010, sec. 2.5),
   nodes ``0, r_1, ..., r_{p-1}`` (the last ``p`` predictions): ``x^P = a x_s + c sum_j w^P_j m_j``;
2. ``m_t = m(x^P, t)``: the attempt's only network call;
3. corrector, exponential Adams-Moulton of the same order ``p``, nodes ``1, 0, r_1, ..., r_{p-2}``:
   ``x^C = a x_s + c (w^C_0 m_t + sum_{j < p-1} w^C_{j+1} m_j)``;
4. error (Milne's device: a predictor and a corrector of one order differ by ``O(h^{p+1})``, in
   proportion to the local error of either; Hairer, Norsett & Wanner, *Solving Ordinary
   Differential Equations I*, ch. III, variable-step Adams methods): per element
   ``delta = max(atol, rtol max(|x^C|, |x_s|))``, per sample ``E_b = RMS((x^C - x^P) / delta)``
   and ``E = max_b E_b`` (every sample meets the tolerance; one step for the whole batch, as
   ``dpm_adaptive``). If ``E <= 1`` the step is accepted: the solver
   continues from ``x^C`` and keeps ``m_t`` as the newest node although it was made at ``x^P``
   (PEC: UniPC's reuse, Zhao et al. 2023, sec. 3; no second call). A rejected attempt keeps
   nothing but its ``E``.

UniPC's corrector is one order higher than its predictor, and then ``x^C - x^P`` measures the
predictor's error, not that of the state kept; with equal orders it measures the kept one.

**The form switches at** ``lambda = switch_log_snr`` (default 0, where ``alpha = sigma``). The
prediction evaluated at ``x^P`` carries the predictor's error into ``x^C`` through the prediction's
sensitivity to ``x``, and the polynomial must follow that dependence: both cost least in the form
whose prediction moves least with ``x``. For data of variance ``s^2``, ``alpha dD/dx =
alpha^2 s^2 / (alpha^2 s^2 + sigma^2)`` and ``sigma d eps/dx`` is one minus that: the data form while
noise dominates, the noise form once signal dominates (at ``lambda = 0`` for unit variance). The
data form alone let the error of the last steps run far above the estimate and the error at
``t_end`` jump up and down as the tolerance tightened (``benchmarks/results/adaptive.md``). At the
switch the kept ``D_j`` become ``eps_j = (x_j - alpha_j D_j) / sigma_j`` at the points ``x_j``
where they were made (the same evaluations, no call); afterwards the model is asked for ``eps``.
``switch_log_snr=None`` keeps the data form throughout.

**Step control.** The first step is a probe of ``h_init`` in ``lambda`` (order 1: DDIM and its
one-node corrector); its error estimate sets the next step, which may grow up to
:data:`FAC_FIRST` times (the starting step chosen from the data, as Hairer et al. sec. II.4, with
the probe kept as a step instead of spending an extra call). Then, accepted or not,

    h <- h * clip((E / theta)^{-1/(p+1)}, FAC_MIN, FAC_MAX),   h <= lambda(t_end) - lambda_s,

an elementary (I) controller aiming at ``E = theta`` (:data:`TARGET`), so the last step lands on
``t_end`` exactly. Constants, with why: ``theta = 0.3`` (a margin of ``1/theta`` below the
rejection threshold keeps rejections to 1-3 per solve), :data:`FAC_MAX` ``= 2`` (variable-step
multistep formulas lose accuracy and stability under large step ratios), :data:`FAC_MIN`
``= 0.2`` (scipy, torchdiffeq). Chosen by measurement on the two benchmark mixtures,
two batches each (NFE to an RMS error of 1e-3): Gustafsson's PI controller (``0.7/k, -0.4/k``) and a
milder PI (``0.6/k, -0.2/k``) needed 14-16% more calls than this I controller, UniPC's
one-higher corrector 8% more, order 4 11% more (it wins at tight tolerances), order 2 26% more,
``theta`` of 0.2 or 0.4 4% more (measurements: ``docs/fast_solvers.md``,
'abm_adaptive'; the comparison with the peers: ``benchmarks/results/adaptive.md``).

NFE: one call at ``T``, then one per attempted step; the count is measured (``nfe(steps)`` is
``None``), the sampler refuses ``steps`` and ``result.times`` is ``[T, t_end]``. Declared order:
``order`` (the predictor's and the corrector's; the first steps use fewer nodes). ``x``:
``(B, ...)``, any event shape and dtype; coefficients are float64 Python numbers. Every process of
``sde.py`` works (``alpha_sigma``, ``log_snr``, ``t_of_log_snr`` only). Tolerances below
``base.TOLERANCE_EPS`` (10) machine epsilons of the sample dtype raise ``ValueError``; a step that
collapses, or a non-finite error estimate, raises :class:`~sdediff.checks.NumericalError`.
"""

from __future__ import annotations

import math

import torch

from ..checks import InputTypeError, NumericalError, check_float, check_int
from . import register
from .base import Sampler, check_resolvable, check_tolerances
from .expint import moments, noise_moments, weights_from_moments

#: Error ratio the step control aims at (the step is rejected above 1).
TARGET = 0.3
#: Largest growth of the step from one step to the next, and after the first (probe) step.
FAC_MAX, FAC_FIRST = 2.0, 10.0
#: Largest shrink of the step after one attempt (scipy, torchdiffeq ``dfactor``).
FAC_MIN = 0.2
#: The probe step in lambda (about 1% of the linear VP's span of ~9.3 down to ``t_end = 1e-3``).
H_INIT = 0.1
#: Default tolerances: ``dpm_adaptive``'s (Lu et al. 2022), for data scaled to ``[-1, 1]``.
RTOL, ATOL = 0.05, 0.0078
#: Log-SNR from which the noise-prediction form is used (``alpha = sigma``).
SWITCH_LOG_SNR = 0.0
#: A step below this fraction of the whole lambda span is a breakdown, not a step.
H_MIN_FRACTION = 1e-9
#: Floor of the error ratio, so that an exact step (E = 0) still gives a finite factor.
E_FLOOR = 1e-12

#: Per form: the model output it integrates, its linear factor ``a`` and prefactor ``c`` from
#: ``(alpha_s, sigma_s, alpha_t, sigma_t)``, and its moments ``g(h, p)``.
FORMS = {
    "x0": ("x0", lambda a_s, s_s, a_t, s_t: (s_t / s_s, a_t), moments),
    "eps": ("eps", lambda a_s, s_s, a_t, s_t: (a_t / a_s, -s_t), noise_moments),
}


@register("abm_adaptive")
class ABMAdaptive(Sampler):
    family = "dpm_solver"
    order = 3                     # of the default; instances declare their own
    adaptive = True
    default_steps = 1             # unused: the steps are chosen by the error control
    defaults = {"order": 3, "rtol": RTOL, "atol": ATOL, "h_init": H_INIT,
                "switch_log_snr": SWITCH_LOG_SNR}

    def __init__(self, **options):
        super().__init__(**options)
        self.order = self.options["order"]

    def check_options(self):
        check_int("order", self.options["order"], minimum=1, maximum=4)
        check_tolerances(self.options)
        check_float("h_init", self.options["h_init"], 0.0, None, low_open=True)
        switch = self.options["switch_log_snr"]
        if switch is not None:
            if isinstance(switch, bool) or not isinstance(switch, (int, float)):
                raise InputTypeError(f"switch_log_snr must be a number or None (data form "
                                     f"throughout), got {switch!r} ({type(switch).__name__})")
            check_float("switch_log_snr", switch)

    def nfe(self, steps):
        return None

    def run(self, model, x, ts, noise, observe):
        sde = model.sde
        order, rtol, atol = self.order, self.options["rtol"], self.options["atol"]
        switch = self.options["switch_log_snr"]
        check_resolvable("abm_adaptive", rtol, atol, x.dtype)

        def lam_of(t):
            return float(sde.log_snr(torch.tensor(t, dtype=torch.float64)))

        def time_of(lam):
            return float(sde.t_of_log_snr(torch.tensor(lam, dtype=torch.float64)))

        def alpha_sigma(t):
            alpha, sigma = sde.alpha_sigma(torch.tensor(t, dtype=torch.float64))
            return float(alpha), float(sigma)

        def form_at(lam):
            return "eps" if switch is not None and lam >= switch else "x0"

        t_end, s = float(ts[-1]), float(ts[0])
        lam_end, lam_s = lam_of(t_end), lam_of(s)
        alpha_s, sigma_s = alpha_sigma(s)
        h_min = H_MIN_FRACTION * (lam_end - lam_s)
        form = form_at(lam_s)
        # kept predictions, newest first: (lambda_j, alpha_j, sigma_j, x_j made at, m_j)
        nodes = [(lam_s, alpha_s, sigma_s, x, model.predict(x, s, FORMS[form][0]))]
        h = min(self.options["h_init"], lam_end - lam_s)
        accepted = 0
        while True:
            if form_at(lam_s) != form:               # data -> noise: convert what is kept
                form = form_at(lam_s)
                nodes = [(lam_j, a_j, s_j, None, (x_j - a_j * D_j) / s_j)
                         for lam_j, a_j, s_j, x_j, D_j in nodes]
            kind, factors, g = FORMS[form]
            last = h >= lam_end - lam_s
            t = t_end if last else time_of(lam_s + h)
            if t <= t_end:                            # rounding put it at the end: land there
                t, last = t_end, True
            h = lam_of(t) - lam_s                     # the step actually taken
            alpha_t, sigma_t = alpha_sigma(t)
            a, c = factors(alpha_s, sigma_s, alpha_t, sigma_t)
            p = min(order, len(nodes))
            r = [(lam_j - lam_s) / h for lam_j, *_ in nodes[:p]]
            w_P = weights_from_moments(r, g(h, p))             # Adams-Bashforth, order p
            w_C = weights_from_moments([1.0] + r[:p - 1], g(h, p))   # Adams-Moulton, order p
            a_x = a * x
            x_P = a_x
            for w_j, (*_, m_j) in zip(w_P, nodes, strict=False):
                x_P = x_P.add(m_j, alpha=c * w_j)              # predictor
            m_t = model.predict(x_P, t, kind)                  # the attempt's one call
            x_C = a_x.add(m_t, alpha=c * w_C[0])
            for w_j, (*_, m_j) in zip(w_C[1:], nodes, strict=False):
                x_C = x_C.add(m_j, alpha=c * w_j)              # corrector
            # Milne's device: mixed tolerance per element, RMS per sample, worst sample
            delta = torch.clamp(rtol * torch.maximum(x_C.abs(), x.abs()), min=atol)
            E = float(((x_C - x_P) / delta).flatten(1).pow(2).mean(1).sqrt().max())
            if not math.isfinite(E):
                raise NumericalError(
                    f"abm_adaptive: non-finite error estimate at t = {s:.6g} (the model returned "
                    "NaN or inf, or the state overflowed); check the model's output")
            factor = (max(E, E_FLOOR) / TARGET) ** (-1.0 / (p + 1))
            rejected = E > 1
            if not rejected:                                   # accept: continue from x^C
                x, s, lam_s, alpha_s, sigma_s = x_C, t, lam_of(t), alpha_t, sigma_t
                made_at = x_P if form == "x0" else None        # kept for the switch only
                nodes = [(lam_s, alpha_t, sigma_t, made_at, m_t)] + nodes[:order - 1]
                accepted += 1
                observe.at(t)
                if last:
                    break
            h = min(h * min(FAC_FIRST if accepted == 1 else FAC_MAX, max(FAC_MIN, factor)),
                    lam_end - lam_s)
            if rejected and h < h_min:                 # only rejections shrink h towards 0
                raise NumericalError(
                    f"abm_adaptive: the step in log-SNR fell to {h:.3g} at t = {s:.6g}; rtol = "
                    f"{rtol:g}, atol = {atol:g} are below what {x.dtype} resolves. Loosen them or "
                    "sample in float64")
        observe(1, x)
        return x

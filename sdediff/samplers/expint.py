"""Exponential-integrator coefficients: the phi-functions and the multistep weights built on them.

The one home of the coefficients of ``dpm_solver++``, ``unipc``, ``dpm_adaptive`` and ``ipndm``
(``docs/samplers.md``). Everything here is float64 Python numbers, computed before a sampler's
loop; the state keeps its own dtype.

**phi-functions.** ``phi_0(z) = e^z`` and ``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``, i.e.
``phi_k(z) = sum_{j>=0} z^j / (j+k)!`` (Hochbruck & Ostermann 2010, "Exponential integrators",
sec. 2). Started from ``expm1``, the recursion still cancels for small ``|z|`` (``phi_k`` loses
about ``(k - 1) log10(1/|z|)`` digits), so :func:`phi` sums the series for ``|z| < 1`` and
recurses beyond, where it is exact to a few ulps.

**The data-prediction integral.** With ``h = lambda_t - lambda_s > 0`` (half log-SNR) and the
data prediction ``m(tau) = x0_theta`` at ``lambda_s + tau``, the probability-flow ODE's exact
solution is (Lu et al. 2022b, "DPM-Solver++", sec. 4)

    x_t = (sigma_t / sigma_s) x_s + alpha_t int_0^h e^{-(h - tau)} m(tau) dtau,

and ``int_0^h e^{-(h - tau)} (tau/h)^k dtau = k! h phi_{k+1}(-h)`` (:func:`moments`). A multistep
method replaces ``m`` by the polynomial through earlier predictions ``m_j`` at
``tau = r_j h`` (``r_0 = 0`` the newest, ``r_j < 0`` the history, ``r = 1`` the step's end) and
gets ``x_t = (sigma_t/sigma_s) x_s + alpha_t sum_j w_j m_j``, where the weights solve the moment
equations (:func:`weights_from_moments`)

    sum_j r_j^k w_j = g_k,   k = 0 .. p - 1.

With the exact moments ``g_k = k! h phi_{k+1}(-h)`` this is the exponential Adams-Bashforth
method of order ``p`` (Hochbruck & Ostermann 2010, sec. 2.5): its local error is
``O(h^{p+1})``. The published solvers differ only in the moments ``g`` (tables below).
"""

from __future__ import annotations

import math

import numpy as np

from ..checks import check_choice, check_int

#: Below this ``|z|`` the phi-functions are summed as series (the recursion would cancel).
SERIES_RADIUS = 1.0
#: Terms of the series: ``|z|^24 / 24! < 1e-23`` for ``|z| < 1``, below float64's resolution.
SERIES_TERMS = 24


def phi(k: int, z: float) -> float:
    """``phi_k(z) = sum_j z^j / (j + k)!`` in float64, stable for every ``z`` (module docstring)."""
    z = float(z)
    if abs(z) < SERIES_RADIUS:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(SERIES_TERMS):
            total += term
            term *= z / (j + k + 1)
        return total
    value = math.exp(z) if k == 0 else math.expm1(z) / z        # phi_0, phi_1
    for j in range(1, k):                                        # phi_{j+1} from phi_j
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def moments(h: float, p: int) -> list[float]:
    """Exact moments ``g_k = int_0^h e^{-(h - tau)} (tau/h)^k dtau = k! h phi_{k+1}(-h)``,
    ``k = 0 .. p - 1`` (``g_0 = 1 - e^{-h}``, DDIM's / DPM-Solver++(1)'s weight)."""
    return [math.factorial(k) * h * phi(k + 1, -h) for k in range(p)]


def noise_moments(h: float, p: int) -> list[float]:
    """Moments of the noise-prediction integral, ``k = 0 .. p - 1``:
    ``g_k = int_0^h e^{h - tau} (tau/h)^k dtau = k! h phi_{k+1}(h)`` (``g_0 = e^h - 1``).

    In the noise-prediction form (Lu et al. 2022, "DPM-Solver", sec. 3.1) the probability-flow
    ODE's exact solution from ``s`` to ``t`` (``h = lambda_t - lambda_s > 0``) is
    ``x_t = (alpha_t/alpha_s) x_s - sigma_t int_0^h e^{h - tau} eps(tau) dtau``; a multistep
    method's weights on ``eps_j`` at the nodes ``r_j`` solve the moment equations of
    :func:`weights_from_moments` with these ``g`` (the counterpart of :func:`moments`)."""
    return [math.factorial(k) * h * phi(k + 1, h) for k in range(p)]


def weights_from_moments(r, g) -> list[float]:
    """Weights ``w`` with ``sum_j r_j^k w_j = g_k`` (``k < len(r)``), solved in float64.

    ``r``: the nodes in units of the step (distinct; ``0`` the newest point); ``g``: the moments.
    The transposed Vandermonde system of 1-4 nodes spaced about one step apart is well
    conditioned; the nodes come from float64 log-SNRs, never from the sample dtype.
    """
    V = np.vander(np.asarray(r, dtype=np.float64), increasing=True).T     # V[k, j] = r_j^k
    return np.linalg.solve(V, np.asarray(g, dtype=np.float64)).tolist()


# --- DPM-Solver++ multistep (Lu et al. 2022b) ---------------------------------------------------
#: Moments of DPM-Solver++'s multistep updates as rows of ``C`` in ``g_k = sum_l C[k][l] h phi_{l+1}(-h)``.
#: Order 1: DPM-Solver++(1) = DDIM. Order 2: DPM-Solver++(2M), Algorithm 2 ("midpoint":
#: the slope enters with ``h phi_1 / 2`` instead of the exact ``h phi_2``; local error O(h^3)).
#: Order 3: the exact third-order moments ``(h phi_1, h phi_2, 2 h phi_3)``.
DPMPP_MOMENTS = {
    1: ((1.0,),),
    2: ((1.0, 0.0), (0.5, 0.0)),
    3: ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 2.0)),
}
#: The reference code's DPM-Solver++(3M) (dpm-solver ``multistep_dpm_solver_third_update``, also
#: diffusers ``DPMSolverMultistepScheduler`` and k-diffusion ``sample_dpmpp_3m_sde`` at eta = 0):
#: its ``- alpha_t phi_3 D_2`` term carries half the Taylor weight (``D_2 ~ h^2 m''/2`` needs
#: ``2 h phi_3(-h)``), so the method is formally second order (local error ``h^3 m''/12``); on the
#: project's mixtures it is nevertheless more accurate than the exact form at few steps
#: (measurements: ``docs/samplers.md``, 'Accuracy at few steps').
DPMPP_3M_REFERENCE_MOMENTS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def dpmpp_weights(h: float, r, moment_rows) -> list[float]:
    """DPM-Solver++ multistep weights on ``m_0, m_1, ...`` (newest first) for a step ``h`` with
    history nodes ``r`` (``r[0] = 0``, ``r[j] = (lambda_{i-j} - lambda_i) / h``); ``moment_rows``
    is one entry of :data:`DPMPP_MOMENTS` (or :data:`DPMPP_3M_REFERENCE_MOMENTS`) of ``len(r)`` rows."""
    basis = [h * phi(k + 1, -h) for k in range(len(moment_rows))]
    g = [sum(c * b for c, b in zip(row, basis, strict=True)) for row in moment_rows]
    return weights_from_moments(r, g)


# --- UniPC (Zhao et al. 2023) -------------------------------------------------------------------
#: UniPC's ``B(h)`` (Zhao et al. 2023, sec. 3.1 and appendix; UniPC ``variant``, diffusers
#: ``solver_type``), in data prediction where the paper's ``h`` is ``-h``: any ``B(h) = O(h)``
#: keeps the order. bh1: ``B(h) = -h``; bh2: ``B(h) = e^{-h} - 1``.
UNIPC_B = {
    "bh1": lambda h: -h,
    "bh2": lambda h: math.expm1(-h),
}
#: The reference code fixes ``rho`` in two small cases instead of solving (UniPC
#: ``multistep_uni_pc_bh_update``; diffusers ``multistep_uni_p_bh_update`` / ``_c_``): the
#: order-2 predictor (``rho_p = [1/2]``; with bh2 this is exactly DPM-Solver++(2M)) and the
#: order-1 corrector (``rho_c = [1/2]``; with bh2 the exponential trapezoid rule). These are the
#: only places where bh1 and bh2 differ: elsewhere ``B(h)`` cancels (``rho`` scales as ``1/B``).
UNIPC_FIXED_RHO = {("predictor", 2): (0.5,), ("corrector", 1): (0.5,)}


def unipc_b(h: float, p: int, variant: str) -> list[float]:
    """UniPC's right-hand side ``b_j = g_j j! / B(h)``, ``j = 1..p``, with
    ``g_j = -h phi_{j+1}(-h)`` (the code's ``h_phi_k`` recursion, here cancellation-free)."""
    B = UNIPC_B[variant](h)
    return [-h * phi(j + 1, -h) * math.factorial(j) / B for j in range(1, p + 1)]


def unipc_weights(h: float, r, variant: str, corrector: bool) -> list[float]:
    """UniP-p (``corrector=False``) or UniC-p (``True``) as weights on the data predictions.

    ``r``: nodes in units of ``h``, ``r[0] = 0`` (``m_0`` at the step's start), then the history
    ``r[1..p-1] < 0``; for the corrector the last node is ``1`` (the prediction at the step's end,
    made at the uncorrected point). The update (Zhao et al. 2023, sec. 3, the B(h) form of the
    reference code, data prediction) is

        x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) m_0 - alpha_t B(h) sum_k rho_k D_k,
        D_k = (m_k - m_0) / r_k,   sum_k r_k^{j-1} rho_k = b_j  (j = 1..K),

    with ``K = p - 1`` history differences for the predictor and ``K = p`` for the corrector.
    Returned: ``w`` with ``x_t = (sigma_t/sigma_s) x_s + alpha_t sum_j w_j m_j`` in the order of
    ``r``. The ``K x K`` system is solved in float64 (the reference code builds it in the sample
    dtype, where for small ``h`` the ``h_phi_k`` recursion cancels; a peer's order-3 bh1 returns
    NaN in float32).
    """
    check_choice("variant", variant, UNIPC_B)
    nodes = [float(v) for v in r[1:]]
    K = len(nodes)
    p = K if corrector else K + 1
    B = UNIPC_B[variant](h)
    fixed = UNIPC_FIXED_RHO.get(("corrector" if corrector else "predictor", p))
    if K == 0:
        rho = []
    elif fixed is not None:
        rho = list(fixed)
    else:
        R = np.vander(np.asarray(nodes, dtype=np.float64), increasing=True).T   # R[j, k] = r_k^j
        rho = np.linalg.solve(R, np.asarray(unipc_b(h, K, variant), dtype=np.float64)).tolist()
    w = [-math.expm1(-h)] + [0.0] * K
    for k, (rho_k, r_k) in enumerate(zip(rho, nodes, strict=True), start=1):
        c = -B * rho_k / r_k                      # -B rho_k D_k = c (m_k - m_0)
        w[k] += c
        w[0] -= c
    return w


# --- iPNDM (Zhang & Chen 2023) ------------------------------------------------------------------
#: Adams-Bashforth weights of iPNDM (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
#: Exponential Integrator", the iPNDM of its appendix; DEIS repo ``th_deis`` ``ipndm``): the classical
#: constant-step AB coefficients, newest first; order ``k`` uses the last ``k`` noise predictions.
IPNDM_AB = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


# --- warm-up and final steps (shared by the multistep solvers) ---------------------------------
def step_orders(steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each multistep step: warm-up ``min(order, i + 1)`` (only ``i + 1`` predictions
    exist) and, with ``lower_order_final``, also ``<= steps - i``: the last step is first order,
    the one before at most second (UniPC's reference ``min(order, steps + 1 - step)``).

    The final steps are where the grid's steps are largest in log-SNR (on ``uniform`` the last
    step is ~4x the one before) and where ``x0`` changes fastest, so extrapolating it from
    earlier steps is unstable: lowering is what keeps ``dpm_solver++`` order 3 accurate on
    ``uniform`` at few steps, and it changes ``logsnr``/``karras`` little. dpm-solver
    (``steps < 10``) and diffusers (``< 15``) lower only for few steps; we always do, as UniPC.
    The price is asymptotic: a first-order last step caps the global order at 2 once its
    ``O(h^2)`` error dominates, which on the project's mixtures shows only at many steps for
    ``dpm_solver++`` (``x0`` barely moves at ``t_end``) and sooner for ``unipc`` order 3;
    ``lower_order_final=False`` keeps the full order (measurements: ``docs/samplers.md``,
    'Lower-order final steps').
    """
    check_int("steps", steps, minimum=1)
    return [min(order, i + 1, steps - i if lower_order_final else order) for i in range(steps)]

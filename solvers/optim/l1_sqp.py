"""Inexact SQP on the l1 merit function, the baselines of Hong et al. (ICML 2023).

``l1-sqp`` is an inexact SQP on the l1 merit ``f + pi ||c||_1`` with GMRES solves in the spirit of
Byrd, Curtis & Nocedal (SIAM J. Optim. 2008) -- the reference paper's main baseline.

``l1-sqp-adaptive`` is the reference code's second l1 baseline (``GmresL1AdapSQP``, read from
IlgeeHong/AdaSketch-Newton): the same merit, but the penalty and the linear-solve accuracy adapt
together. GMRES runs until ``||r||_1 <= kappa ||b||_1``; the step is accepted when its model
reduction ``-g.dx - max(dx^T B dx / 2, 0) + pi (||c||_1 - ||c + G dx||_1)`` is at least
``sigma pi max(||c||_1, ||c + G dx||_1 - ||c||_1)``, else ``pi <- nu pi``, ``kappa <- kappa / nu^2``
and GMRES resumes from its iterate (``pi > 1e8`` accepts as is); Armijo with ``eta = 1e-8`` on the
merit along the directional derivative ``g.dx - pi (||c||_1 - ||c + G dx||_1)``. Constants as in the
reference: ``pi_0 = 1, kappa_0 = 0.1, nu = 1.5, sigma = 0.09``. Deviations: GMRES is stopped on the
2-norm ``||r||_2 <= kappa ||b||_1 / sqrt(N)``, which implies the reference's 1-norm test; dense
problems get the reduced-Hessian shift of ``l1-sqp`` (the reference's PDE problem is convex and
needs none; on the nonconvex HS problems an unshifted ``B`` can give ascent directions).
"""

from __future__ import annotations

import time

import numpy as np

from .derivatives import Derivatives, NonFiniteError
from .kkt import DENSE_LIMIT, OutOfTime, armijo, gmres, hessian_shift, kkt_matrix, shifted
from .minimize_base import MinimizeArgs, OptimizeResult, State, finish, record, stop_reason


def _l1_merit(d: Derivatives, x, pi) -> float:
    """``f + pi ||c||_1``; inf where undefined."""
    try:
        return d.f(x) + pi * float(np.abs(d.c(x)).sum())
    except NonFiniteError:
        return float("inf")


def l1_sqp(
    args: MinimizeArgs, *, kappa: float = 0.1, tau: float = 0.1, eta: float = 1e-8, xi_B: float = 0.1, **_: object
) -> OptimizeResult:
    """Inexact l1-penalty SQP (called by :func:`~.minimize.minimize_eq`; dense problems get the
    reduced-Hessian shift, sparse ones none): KKT step by GMRES to relative residual ``kappa``
    (tightened by 10x while the step gives no model reduction), penalty
    ``pi >= (g.dx + dx^T B dx / 2) / ((1 - tau)(||c||_1 - ||c + G dx||_1))`` (Byrd-Curtis-Nocedal),
    Armijo on ``f + pi ||c||_1``."""
    d, tol, max_seconds = args.d, args.tol, args.max_seconds
    t0 = time.perf_counter()
    s = State(d, args.x, args.lam)
    history: list[dict] = []
    pi, k, inner, message = 1.0, 0, 0, ""
    dense = d.n <= DENSE_LIMIT
    while s.kkt > tol:
        message, xi_G = stop_reason(s, k, args.max_iter, t0, max_seconds)
        if message:
            break
        t_shift = hessian_shift(s.H, s.G, xi_B) if dense else 0.0
        B = shifted(s.H, t_shift)
        K = kkt_matrix(B, s.G)
        b = -np.concatenate([s.gL, s.c])
        c1 = float(np.abs(s.c).sum())
        rtol, mred = kappa, -1.0
        deadline = None if max_seconds is None else t0 + max_seconds
        try:
            while rtol >= 1e-12:
                z, its = gmres(K, b, rtol, deadline)
                inner += its
                dx, dlam = z[: d.n], z[d.n :]
                lin = c1 - float(np.abs(s.c + s.G @ dx).sum())  # linearized infeasibility reduction
                quad = float(s.g @ dx) + 0.5 * max(float(dx @ (B @ dx)), 0.0)
                if lin > 0:
                    pi = max(pi, quad / ((1.0 - tau) * lin) + 1e-4)
                mred = -quad + pi * lin
                if mred > 0:
                    break
                rtol *= 0.1
        except OutOfTime:
            message = f"time budget of {max_seconds} s used inside GMRES; stalled with KKT {s.kkt:.3e}"
            break
        if mred <= 0:
            message = f"no model reduction even with exact KKT solves; stalled with KKT {s.kkt:.3e}"
            break
        alpha = armijo(lambda a: _l1_merit(d, s.x + a * dx, pi), s.f + pi * c1, -mred, eta, 60)
        if alpha is None:
            message = f"line search failed after 60 halvings; stalled with KKT {s.kkt:.3e}"
            break
        s = State(d, s.x + alpha * dx, s.lam + alpha * dlam)
        k += 1
        record(history, args.callback, s, k, alpha, its, t0, pi=pi)
    return finish(s, "l1-sqp", t0, k, tol, message, inner, history)


def l1_sqp_adaptive(
    args: MinimizeArgs,
    *,
    kappa: float = 0.1,
    nu: float = 1.5,
    sigma: float = 0.09,
    eta: float = 1e-8,
    xi_B: float = 0.1,
    **_: object,
) -> OptimizeResult:
    """The reference's adaptive l1-SQP (called by :func:`~.minimize.minimize_eq`; the module
    docstring gives the rules and the deviations)."""
    d, tol, max_seconds = args.d, args.tol, args.max_seconds
    t0 = time.perf_counter()
    s = State(d, args.x, args.lam)
    history: list[dict] = []
    pi, k, inner, message = 1.0, 0, 0, ""
    while s.kkt > tol:
        message = stop_reason(s, k, args.max_iter, t0, max_seconds)[0]
        if message:
            break
        B = shifted(s.H, hessian_shift(s.H, s.G, xi_B) if d.n <= DENSE_LIMIT else 0.0)
        K = kkt_matrix(B, s.G)
        b = -np.concatenate([s.gL, s.c])
        b1, c1 = float(np.abs(b).sum()), float(np.abs(s.c).sum())
        deadline = None if max_seconds is None else t0 + max_seconds
        z = np.zeros_like(b)
        try:
            while True:
                z, its = gmres(K, b, kappa * b1 / (np.sqrt(b.size) * np.linalg.norm(b)), deadline, x0=z)
                inner += its
                dx = z[: d.n]
                lin = c1 - float(np.abs(s.c + s.G @ dx).sum())
                mred = -float(s.g @ dx) - max(0.5 * float(dx @ (B @ dx)), 0.0) + pi * lin
                if pi > 1e8 or mred >= sigma * pi * max(c1, -lin):
                    break
                pi, kappa = pi * nu, kappa / nu**2
        except OutOfTime:
            message = f"time budget of {max_seconds} s used inside GMRES; stalled with KKT {s.kkt:.3e}"
            break
        slope = float(s.g @ dx) - pi * lin
        alpha = armijo(lambda a: _l1_merit(d, s.x + a * dx, pi), s.f + pi * c1, slope, eta, 60)
        if alpha is None:
            message = f"line search failed after 60 halvings; stalled with KKT {s.kkt:.3e}"
            break
        s = State(d, s.x + alpha * dx, s.lam + alpha * z[d.n :])
        k += 1
        record(history, args.callback, s, k, alpha, its, t0, pi=pi, kappa=kappa)
    return finish(s, "l1-sqp-adaptive", t0, k, tol, message, inner, history)


__all__ = ["l1_sqp", "l1_sqp_adaptive"]

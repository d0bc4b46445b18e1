"""Augmented-Lagrangian method of multipliers (``al-multipliers``), the reference's "AL" baseline.

Hong et al. (ICML 2023) compare AdaSketch-Newton with a classical augmented-Lagrangian method
(Hestenes 1969, Powell 1969; Nocedal & Wright, *Numerical Optimization*, Framework 17.3). Its
structure, read from the reference code's ``AL`` folders (IlgeeHong/AdaSketch-Newton), with the
reference's constants:

1. minimize ``L_mu(x) = f(x) + lam^T c(x) + mu/2 ||c(x)||^2`` over ``x`` until
   ``||grad L_mu(x)|| <= tau_k``, by inexact Newton steps: the Hessian
   ``hess_lag(x, lam + mu c) + mu G^T G`` shifted so its smallest eigenvalue is at least 1, the
   Newton system solved by GMRES to relative residual 1e-4, Armijo backtracking (``beta = 0.1``)
   on ``L_mu``;
2. ``lam <- lam + mu c(x)``, ``mu <- 1.5 mu``, ``tau <- 0.1 tau`` (``mu_0 = 1``, ``tau_0 = 0.1``).

Deviations, on purpose:

* the shift is ``max(0, 1 - lambda_min)``: the reference adds ``1 - lambda_min`` always, which
  *lowers* a Hessian whose spectrum lies above 1 (it makes ``lambda_min = 1`` exactly);
* on problems with sparse derivatives ``lambda_min`` is bounded from below by Gershgorin's
  discs instead of computed (a dense eigen-decomposition per step
  would dominate); the shift is then larger than needed, never smaller;
* convergence is tested after every Newton step at the first-order multiplier estimate
  ``lam + mu c(x)`` (at which the Lagrangian's gradient *is* ``grad L_mu``), not only after a
  multiplier update, so the run stops at the first KKT point it meets;
* a subproblem that runs away (``||c(x)||`` above ``1e3 max(1, ||c||)`` at its start, or ``x``
  more than ``1e3 max(1, ||x||)`` from its start: ``L_mu``
  is unbounded below for a small ``mu`` on e.g. hs040, ``f = -x1 x2 x3 x4``) restarts from its start
  with ``mu`` ten times larger, the usual safeguard (Nocedal & Wright, Section 17.4); the reference
  has none and diverges there;
* ``nit`` counts Newton steps (each costs one linear solve, as an SQP iteration does); the
  multiplier updates are in ``history`` (``updates``); ``inner_iterations`` counts GMRES iterations.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from .derivatives import Derivatives, NonFiniteError
from .kkt import OutOfTime, armijo, gmres, shifted
from .minimize_base import MinimizeArgs, OptimizeResult, State, finish, record, stop_reason

#: the reference's constants (``PDE/Parameter/Param.jl`` and ``AugLagrangian.jl``)
MU0, TAU0, MU_GROWTH, TAU_DECAY, GMRES_RTOL, ARMIJO_BETA, MIN_EIG = 1.0, 0.1, 1.5, 0.1, 1e-4, 0.1, 1.0
#: a subproblem whose constraint violation grows this much over its start is restarted with 10 mu (ours)
RUNAWAY = 1e3


def _lambda_min_lower(A) -> float:
    """``lambda_min(A)`` of a symmetric matrix: exact when dense, Gershgorin's lower bound when sparse."""
    if not sp.issparse(A):
        return float(np.linalg.eigvalsh(A)[0])
    A = sp.csr_matrix(A)
    diag = A.diagonal()
    off = np.asarray(abs(A).sum(axis=1)).ravel() - np.abs(diag)
    return float(np.min(diag - off))


def _runs_away(s: State, start: State) -> bool:
    """The subproblem iterate left every sensible region: its constraint violation or its distance
    from the subproblem's start grew :data:`RUNAWAY`-fold (or became non-finite)."""
    c, c0 = float(np.linalg.norm(s.c)), float(np.linalg.norm(start.c))
    dist = float(np.linalg.norm(s.x - start.x))
    return not (c <= RUNAWAY * max(1.0, c0) and dist <= RUNAWAY * max(1.0, float(np.linalg.norm(start.x))))


def _state(d: Derivatives, x: np.ndarray, lam: np.ndarray, mu: float) -> State:
    """The state at ``x`` with the first-order multiplier estimate ``lam + mu c(x)``: its ``gL`` is
    ``grad L_mu(x)`` and its ``H`` the Lagrangian Hessian at that estimate."""
    return State(d, x, lam + mu * d.c(x))


def al_multipliers(args: MinimizeArgs, **_: object) -> OptimizeResult:
    """The method of multipliers (called by :func:`~.minimize.minimize_eq`, which documents the
    arguments; see the module docstring for the algorithm and its deviations from the reference)."""
    d, tol, max_seconds = args.d, args.tol, args.max_seconds
    t0 = time.perf_counter()
    lam, mu, tau = args.lam.copy(), MU0, TAU0
    s = _state(d, args.x, lam, mu)
    history: list[dict] = []
    k, inner, updates, message = 0, 0, 0, ""
    start = s  # the current subproblem's start, for the run-away restart

    def merit(x: np.ndarray) -> float:
        try:
            c = d.c(x)
            return d.f(x) + float(lam @ c) + 0.5 * mu * float(c @ c)
        except NonFiniteError:
            return float("inf")

    while s.kkt > tol:
        message = stop_reason(s, k, args.max_iter, t0, max_seconds)[0]
        if not message and mu > 1e12:
            message = f"penalty mu = {mu:.1e} without reaching the tolerance; stalled with KKT {s.kkt:.3e}"
        if message:
            break
        if np.linalg.norm(s.gL) <= tau:  # subproblem solved: update the multipliers (step 2)
            lam, mu, tau, updates = s.lam, mu * MU_GROWTH, tau * TAU_DECAY, updates + 1
            s = start = _state(d, s.x, lam, mu)
            continue
        if _runs_away(s, start):
            mu *= 10.0  # L_mu unbounded below along this path: restart the subproblem with a larger penalty
            s = start = _state(d, start.x, lam, mu)
            continue
        G = s.G
        A = s.H + mu * (G.T @ G)
        A = shifted(A, max(0.0, MIN_EIG - _lambda_min_lower(A)))
        deadline = None if max_seconds is None else t0 + max_seconds
        try:
            dx, its = gmres(A, -s.gL, GMRES_RTOL, deadline)
        except OutOfTime:
            message = f"time budget of {max_seconds} s used inside GMRES; stalled with KKT {s.kkt:.3e}"
            break
        inner += its
        slope = float(s.gL @ dx)
        if not slope < 0:  # GMRES stopped early on a hard system: fall back to steepest descent
            dx, slope = -s.gL, -float(s.gL @ s.gL)
        alpha = armijo(lambda a: merit(s.x + a * dx), merit(s.x), slope, ARMIJO_BETA, 60)
        if alpha is None:
            message = f"line search failed after 60 halvings; stalled with KKT {s.kkt:.3e}"
            break
        s = _state(d, s.x + alpha * dx, lam, mu)
        k += 1
        record(history, args.callback, s, k, alpha, its, t0, mu=mu, updates=updates)
    return finish(s, "al-multipliers", t0, k, tol, message, inner, history)


__all__ = ["al_multipliers"]

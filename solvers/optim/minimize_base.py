"""What every method of :func:`~.minimize.minimize_eq` shares.

The checked arguments every method receives (:class:`MinimizeArgs`), the result
(:class:`OptimizeResult`) and the bookkeeping that fills it (:func:`stop_reason`, :func:`record`,
:func:`finish`), and the iterate (:class:`State`: values and derivatives at ``(x, lam)``). The
pieces of a Newton (KKT) step that the SQP-type methods share are in :mod:`.kkt`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .derivatives import Derivatives
from .kkt import frobenius, min_eig_GGt

Callback = Callable[[dict], None]


@dataclass
class OptimizeResult:
    """Outcome of :func:`minimize_eq`. ``x`` (n,), ``lam`` (m,) are float64 NumPy arrays; ``kkt`` is
    ``||(grad_x L(x, lam), c(x))||_2``; ``inner_iterations`` counts sketch steps (al-sketch), GMRES
    iterations (l1-sqp), CG iterations (trust-constr) or KKT solves (newton-sqp)."""

    x: np.ndarray
    lam: np.ndarray
    fun: float
    kkt: float
    nit: int
    converged: bool
    seconds: float
    method: str
    message: str = ""
    inner_iterations: int = 0
    constraint_violation: float = float("nan")
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class MinimizeArgs:
    """The checked arguments of :func:`~.minimize.minimize_eq` that every method receives: the
    problem's derivatives, the start ``x`` (n,) and ``lam`` (m,), the KKT tolerance, the iteration
    cap, the wall-clock budget (None: none) and the per-iteration callback. Each method's own
    options come as keywords beside it (:class:`~.minimize.EqMethod`)."""

    d: Derivatives
    x: np.ndarray
    lam: np.ndarray
    tol: float
    max_iter: int
    max_seconds: float | None = None
    callback: Callback | None = None


class State:
    """Function values and derivatives at one point."""

    def __init__(self, d: Derivatives, x: np.ndarray, lam: np.ndarray, with_hessian: bool = True):
        self.x, self.lam = x, lam
        self.f, self.c, self.g, self.G = d.f(x), d.c(x), d.grad(x), d.jac(x)
        self.gL = self.g + self.G.T @ lam
        self.H = d.hess_lag(x, lam) if with_hessian else None

    @property
    def kkt(self) -> float:
        return float(np.sqrt(self.gL @ self.gL + self.c @ self.c))


def finish(
    s: State, method: str, t0: float, nit: int, tol: float, message: str, inner: int, history: list[dict]
) -> OptimizeResult:
    """The :class:`OptimizeResult` at the final state ``s``; ``converged`` iff its KKT residual is ``<= tol``."""
    kkt = s.kkt
    converged = kkt <= tol
    if converged:
        message = f"KKT residual {kkt:.2e} <= tol {tol:.0e}"
    else:
        message = f"{message} (KKT residual {kkt:.2e} > tol {tol:.0e})"
    return OptimizeResult(
        x=s.x,
        lam=s.lam,
        fun=s.f,
        kkt=kkt,
        nit=nit,
        converged=converged,
        seconds=time.perf_counter() - t0,
        method=method,
        message=message,
        inner_iterations=inner,
        constraint_violation=float(np.linalg.norm(s.c)),
        history=history,
    )


def stop_reason(s: State, k: int, max_iter: int, t0: float, max_seconds: float | None) -> tuple[str, float]:
    """Why an outer loop must stop before iteration ``k + 1`` (empty if it may go on), and
    ``lambda_min(G G^T)`` (needed by the step when it goes on)."""
    if k >= max_iter:
        return f"max_iter = {max_iter} reached", 0.0
    if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
        return f"time budget of {max_seconds} s used", 0.0
    xi_G = min_eig_GGt(s.G)
    if xi_G <= 1e-12 * max(1.0, frobenius(s.G) ** 2):
        return rank_deficient(s, xi_G), xi_G
    return "", xi_G


def record(
    history: list, callback: Callback | None, s: State, k: int, alpha: float, inner: int, t0: float, **extra
) -> None:
    """Append iteration ``k``'s summary to ``history`` and pass it to the user's callback."""
    info = {
        "nit": k,
        "kkt": s.kkt,
        "fun": s.f,
        "alpha": alpha,
        "inner": inner,
        **extra,
        "seconds": time.perf_counter() - t0,
    }
    history.append(info)
    if callback is not None:
        callback(info)


def rank_deficient(s: State, xi_G: float) -> str:
    """The message for a constraint Jacobian without full row rank at ``s``."""
    return (
        f"the constraint Jacobian is rank deficient at this point (lambda_min(G G^T) = {xi_G:.2e}): "
        f"the constraints are inconsistent or degenerate; stalled with ||c(x)|| = {np.linalg.norm(s.c):.3e}"
    )


__all__ = ["Callback", "MinimizeArgs", "OptimizeResult", "State", "finish", "rank_deficient", "record", "stop_reason"]

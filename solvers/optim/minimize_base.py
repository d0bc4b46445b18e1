"""What every method of :func:`~.minimize.minimize_eq` shares.

The result (:class:`OptimizeResult`) and the bookkeeping that fills it (:func:`stop_reason`,
:func:`record`, :func:`finish`), the iterate (:class:`State`: values and derivatives at
``(x, lam)``), and the pieces of a Newton (KKT) step the SQP-type methods have in common: the KKT
matrix, the Hessian shift that makes the reduced Hessian positive definite, and Armijo backtracking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .derivatives import Derivatives

#: problems with more variables take the sparse path (no dense reduced-Hessian test)
DENSE_LIMIT = 2000

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


def frobenius(A) -> float:
    """Frobenius norm of a dense or sparse matrix."""
    return float(sp.linalg.norm(A)) if sp.issparse(A) else float(np.linalg.norm(A))


def min_eig_GGt(G) -> float:
    """``lambda_min(G G^T)`` (0 when the sparse factorization finds it exactly singular)."""
    if sp.issparse(G):
        GGt = (G @ G.T).tocsc()
        try:
            return float(spla.eigsh(GGt, k=1, sigma=0.0, which="LM", return_eigenvectors=False)[0])
        except RuntimeError:  # exactly singular: the factorization fails
            return 0.0
    return float(np.linalg.eigvalsh(G @ G.T)[0])


def hessian_shift(H, G, xi_B: float) -> float:
    """Shift ``t`` for ``B = H + t I``: the reference's test ``lambda_min(Z^T H Z) < 1e-6`` (``Z`` an
    orthonormal null-space basis of ``G``), then the smallest ``t`` with ``Z^T B Z >= xi_B I``."""
    m, n = G.shape
    if m >= n:
        return 0.0
    Gd = G.toarray() if sp.issparse(G) else G
    Hd = H.toarray() if sp.issparse(H) else H
    Q, _ = np.linalg.qr(Gd.T, mode="complete")
    Z = Q[:, m:]
    low = float(np.linalg.eigvalsh(Z.T @ Hd @ Z)[0])
    return xi_B - low if low < 1e-6 else 0.0


def kkt_matrix(B, G):
    """``[[B, G^T], [G, 0]]``, sparse if either block is."""
    m = G.shape[0]
    if sp.issparse(B) or sp.issparse(G):
        return sp.bmat([[sp.csr_matrix(B), sp.csr_matrix(G).T], [sp.csr_matrix(G), None]], format="csr")
    return np.block([[B, G.T], [G, np.zeros((m, m))]])


def shifted(H, t: float):
    """``H + t I`` (``H`` itself when ``t == 0``)."""
    if t == 0.0:
        return H
    return H + t * (sp.identity(H.shape[0], format="csr") if sp.issparse(H) else np.eye(H.shape[0]))


def armijo(merit_at: Callable[[float], float], m0: float, slope: float, c1: float, max_halvings: int) -> float | None:
    """Backtracking from ``alpha = 1`` until ``merit_at(alpha) <= m0 + c1 alpha slope``; None if
    ``max_halvings`` halvings do not get there."""
    alpha = 1.0
    for _ in range(max_halvings):
        if merit_at(alpha) <= m0 + c1 * alpha * slope:
            return alpha
        alpha *= 0.5
    return None


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


__all__ = [
    "DENSE_LIMIT",
    "Callback",
    "OptimizeResult",
    "State",
    "armijo",
    "finish",
    "frobenius",
    "hessian_shift",
    "kkt_matrix",
    "min_eig_GGt",
    "rank_deficient",
    "record",
    "shifted",
    "stop_reason",
]

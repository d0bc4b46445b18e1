"""The pieces of a Newton (KKT) step that the SQP-type methods of :func:`~.minimize.minimize_eq`
share: the KKT matrix, the Hessian shift that makes the reduced Hessian positive definite, Armijo
backtracking, and the norms and eigenvalue tests behind them (dense or ``scipy.sparse``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

#: problems with more variables take the sparse path (no dense reduced-Hessian test)
DENSE_LIMIT = 2000


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


def kaczmarz_condition(K) -> float:
    """``||K||_F^2 / sigma_min(K)^2``: the factor in randomized Kaczmarz's expected rate,
    ``E ||z_j - z*||^2 <= (1 - 1 / kappa)^j ||z_0 - z*||^2`` (Strohmer & Vershynin 2009), so about
    ``kappa ln 10`` steps per digit of accuracy. Dense SVD: for systems up to a few thousand rows."""
    A = K.toarray() if sp.issparse(K) else np.asarray(K)
    s = np.linalg.svd(A, compute_uv=False)
    return float((s**2).sum() / max(s[-1] ** 2, np.finfo(float).tiny))


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


class OutOfTime(Exception):
    """A linear solve ran past its deadline."""


def gmres(K, b, rtol: float, deadline: float | None = None, x0=None) -> tuple[np.ndarray, int]:
    """GMRES(200) on ``K z = b`` from ``x0`` (default 0) to relative residual ``rtol``:
    ``(z, iterations)``; raises :class:`OutOfTime` past ``deadline`` (a ``time.perf_counter`` value)."""
    it = [0]

    def count(_):
        it[0] += 1
        if deadline is not None and time.perf_counter() > deadline:
            raise OutOfTime

    N = b.size
    z, _ = spla.gmres(
        K,
        b,
        x0=x0,
        rtol=rtol,
        atol=0.0,
        restart=min(N, 200),
        maxiter=max(10, N),
        callback=count,
        callback_type="pr_norm",
    )
    return z, it[0]


__all__ = [
    "DENSE_LIMIT",
    "OutOfTime",
    "armijo",
    "frobenius",
    "gmres",
    "hessian_shift",
    "kaczmarz_condition",
    "kkt_matrix",
    "min_eig_GGt",
    "shifted",
]

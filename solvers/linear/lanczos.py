"""Lanczos with full reorthogonalisation: Ritz pairs of a symmetric sparse matrix."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigh_tridiagonal

from data.errors import InputError


class OnGrid(Protocol):
    """What :func:`ritz_pairs` needs of a system (a :class:`~.system.GridSystem` has it):
    the matrix, its size and the projection onto fluid cells off the null space."""

    @property
    def A(self) -> sp.csr_matrix: ...

    @property
    def n(self) -> int: ...

    def project(self, v: np.ndarray) -> np.ndarray: ...


def lanczos(A, q0: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m`` steps of Lanczos on symmetric ``A`` from ``q0``, fully reorthogonalised (twice).

    Returns ``(alpha (k,), beta (k-1,), Q (N, k))`` with ``k <= m`` (fewer if an invariant
    subspace is found)."""
    n = q0.shape[0]
    m = int(min(m, n))
    Q = np.zeros((n, m + 1))
    alpha = np.zeros(m)
    beta = np.zeros(m)
    Q[:, 0] = q0 / np.linalg.norm(q0)
    k = m
    for j in range(m):
        w = A @ Q[:, j]
        alpha[j] = Q[:, j] @ w
        w -= alpha[j] * Q[:, j]
        if j > 0:
            w -= beta[j - 1] * Q[:, j - 1]
        for _ in range(2):
            w -= Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        beta[j] = np.linalg.norm(w)
        if beta[j] < 1e-12 * max(abs(alpha[j]), 1.0):  # invariant subspace found
            k = j + 1
            break
        Q[:, j + 1] = w / beta[j]
    return alpha[:k], beta[: k - 1], Q[:, :k]


def ritz_pairs(system: OnGrid, m: int, seed: int = 0, drop_tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """``m`` Lanczos steps from a random start (zero on solid cells, orthogonal to the null
    space), fully reorthogonalised; returns Ritz values ascending, shape ``(k,)``, and Ritz
    vectors, shape ``(N, k)``, with Ritz values ``<= drop_tol * max`` (the null space) dropped.
    Memory: ``N * (m + 1)`` float64.
    """
    m = int(min(m, system.n))
    if m < 2:
        raise InputError(f"need at least 2 Lanczos steps, got m={m}")
    rng = np.random.default_rng(seed)
    alpha, beta, Q = lanczos(system.A, system.project(rng.standard_normal(system.n)), m)
    theta, S = eigh_tridiagonal(alpha, beta)
    V = Q @ S
    keep = np.abs(theta) > drop_tol * np.abs(theta).max()
    return theta[keep], V[:, keep]

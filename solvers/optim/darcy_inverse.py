"""PDE-constrained inverse problem: recover Darcy's log-coefficient from noisy observations of ``u``.

Unknowns ``x = (u, m)``, ``u`` the cell values of the pressure and ``m = log a`` the cell
log-coefficients, each ``N = n^2`` (row-major ``[y, x]`` cell order, as in :mod:`data.pdes`).

    min  h^2 / (2 sigma^2) ||u - d||^2 + beta/2 sum_faces (m_p - m_q)^2
    s.t. c(u, m) = A(e^m) u - 1 = 0                       (N equations)

``A(a)`` is the cell-centred finite-volume ``-div(a grad .)`` with ``u = 0`` on the boundary,
assembled by :func:`data.pdes.grid.fv_operator` (harmonic face means); ``d`` is the PETSc
solution for the true coefficient (:func:`data.pdes.darcy.solve`) plus Gaussian noise of standard
deviation ``noise * max|u_true|``; ``sigma = 0.01 max|u_true|`` is the nominal noise level that makes
the misfit term O(1) at the noise level (so the problem is scaled alike for every ``n``, and the
noiseless case keeps the same weights).

Derivatives are exact and sparse: ``dc/du = A(e^m)`` from ``data/``; ``dc/dm`` and the ``m``-blocks
of the Hessian of the Lagrangian come from torch autograd on a matrix-free copy of the same
operator, compressed by a distance-2 colouring of the 5-point stencil (5 colours,
``(i + 2 j) mod 5``), so each costs 5 Jacobian- or Hessian-vector products, ``O(N)`` each.
The Lagrangian Hessian's ``(u, m)`` block is ``d(A(e^m) lam)/dm`` (``A`` is symmetric).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from data.errors import InputError
from data.pdes import darcy
from data.pdes.grid import fv_operator
from data.pdes.random_fields import grf

from .derivatives import NonFiniteError

_OFFSETS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))  # 5-point stencil, (dy, dx)


def apply_operator(m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``A(e^m) u`` matrix-free; ``m``, ``u`` shape ``(n, n)``; the same operator as ``fv_operator``."""
    n = m.shape[-1]
    a, h2 = torch.exp(m), 1.0 / n**2
    out = torch.zeros_like(u)
    tx = 2.0 * a[:, :-1] * a[:, 1:] / (a[:, :-1] + a[:, 1:]) / h2
    fx = tx * (u[:, :-1] - u[:, 1:])
    ty = 2.0 * a[:-1, :] * a[1:, :] / (a[:-1, :] + a[1:, :]) / h2
    fy = ty * (u[:-1, :] - u[1:, :])
    out = out + torch.nn.functional.pad(fx, (0, 1)) - torch.nn.functional.pad(fx, (1, 0))
    out = out + torch.nn.functional.pad(fy, (0, 0, 0, 1)) - torch.nn.functional.pad(fy, (0, 0, 1, 0))
    wall = torch.zeros_like(u)  # Dirichlet faces: 2 a / h^2 per boundary face
    wall[:, 0] += 2.0 * a[:, 0] / h2
    wall[:, -1] += 2.0 * a[:, -1] / h2
    wall[0, :] += 2.0 * a[0, :] / h2
    wall[-1, :] += 2.0 * a[-1, :] / h2
    return out + wall * u


def _colours(n: int) -> np.ndarray:
    j, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")  # j: row (y), i: column (x)
    return (i + 2 * j) % 5


def _stencil_matrix(compressed: np.ndarray, n: int) -> sp.csr_matrix:
    """Rebuild a 5-point-stencil ``(N, N)`` matrix from its 5 colour-compressed columns
    ``compressed[k] = M @ 1[colour == k]`` (shape ``(5, n, n)``)."""
    col = _colours(n)
    rows, cols, vals = [], [], []
    J, I = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for dj, di in _OFFSETS:
        Jq, Iq = J + dj, I + di
        ok = (Jq >= 0) & (Jq < n) & (Iq >= 0) & (Iq < n)
        r = (J * n + I)[ok]
        q = (Jq * n + Iq)[ok]
        rows.append(r)
        cols.append(q)
        vals.append(compressed[col[Jq[ok], Iq[ok]], J[ok], I[ok]])
    M = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n * n, n * n))
    M.eliminate_zeros()
    return M


@dataclass
class DarcyInverse:
    """The problem on a ``grid x grid`` mesh, as a :class:`~solvers.optim.derivatives.Derivatives`.

    Attributes:
        grid: cells per side; ``self.n = 2 grid^2`` variables, ``self.m = grid^2`` constraints.
        d: observations ``(n, n)``; m_true: the true log-coefficient ``(n, n)``; beta: regularization.
    """

    grid: int
    sigma: float
    d: np.ndarray
    m_true: np.ndarray
    u_true: np.ndarray
    beta: float

    def __post_init__(self):
        N = self.grid**2
        self.n, self.m = 2 * N, N
        self._N = N
        self._h2 = 1.0 / N
        self._w = self._h2 / self.sigma**2  # misfit weight
        self._reg = fv_operator(np.ones((self.grid,) * 2), bc="neumann") * self._h2  # graph Laplacian of the faces
        self._colour_seeds = torch.stack(
            [torch.as_tensor(_colours(self.grid) == k, dtype=torch.float64) for k in range(5)]
        )

    # --- splitting and the pieces ---------------------------------------------------------------
    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = self.grid
        return x[: self._N].reshape(g, g), x[self._N :].reshape(g, g)

    def start(self) -> np.ndarray:
        """``m = 0`` (a = 1) and the PETSc forward solution for it: a feasible start."""
        u0 = darcy.solve(np.ones((self.grid,) * 2))
        return np.concatenate([u0.ravel(), np.zeros(self._N)])

    def _A(self, m: np.ndarray) -> sp.csr_matrix:
        a = np.exp(m)
        if not (np.all(np.isfinite(a)) and np.all(a > 0)):
            raise NonFiniteError(f"exp(m) overflows or underflows (max |m| = {np.max(np.abs(m)):.3g})")
        return fv_operator(a)

    def f(self, x):
        u, m = self.split(x)
        r = (u - self.d).ravel()
        mv = m.ravel()
        return float(0.5 * self._w * r @ r + 0.5 * self.beta * mv @ (self._reg @ mv))

    def grad(self, x):
        u, m = self.split(x)
        return np.concatenate([self._w * (u - self.d).ravel(), self.beta * (self._reg @ m.ravel())])

    def c(self, x):
        u, m = self.split(x)
        c = self._A(m) @ u.ravel() - 1.0
        if not np.all(np.isfinite(c)):
            raise NonFiniteError("c(x) is not finite")
        return c

    def _dm(self, m: np.ndarray, w: np.ndarray) -> sp.csr_matrix:
        """``d(A(e^m) w)/dm`` as a sparse ``(N, N)`` matrix."""
        mt, wt = torch.as_tensor(m), torch.as_tensor(w)
        fn = lambda mm: apply_operator(mm, wt)  # noqa: E731
        cols = torch.func.vmap(lambda v: torch.func.jvp(fn, (mt,), (v,))[1])(self._colour_seeds)
        return _stencil_matrix(cols.numpy(), self.grid)

    def jac(self, x):
        u, m = self.split(x)
        return sp.hstack([self._A(m), self._dm(m, u)], format="csr")

    def hess_lag(self, x, lam):
        u, m = self.split(x)
        g = self.grid
        lt = torch.as_tensor(lam.reshape(g, g))
        ut = torch.as_tensor(u)
        grad_m = torch.func.grad(lambda mm: torch.sum(lt * apply_operator(mm, ut)))
        mt = torch.as_tensor(m)
        cols = torch.func.vmap(lambda v: torch.func.jvp(grad_m, (mt,), (v,))[1])(self._colour_seeds)
        W_mm = _stencil_matrix(cols.numpy(), g) + self.beta * self._reg
        W_um = self._dm(m, lam.reshape(g, g))  # d/dm of A(e^m) lam = d^2 (lam.A u)/(du dm)
        W_uu = sp.identity(self._N, format="csr") * self._w
        H = sp.bmat([[W_uu, W_um], [W_um.T, W_mm]], format="csr")
        return (H + H.T) * 0.5

    # --- quality of a solution -------------------------------------------------------------------
    def coefficient_error(self, x: np.ndarray) -> float:
        """Relative L2 error of the recovered log-coefficient ``||m - m_true|| / ||m_true||``."""
        _, m = self.split(x)
        return float(np.linalg.norm(m - self.m_true) / np.linalg.norm(self.m_true))

    def misfit(self, x: np.ndarray) -> float:
        """Relative data misfit ``||u - d|| / ||d||``."""
        u, _ = self.split(x)
        return float(np.linalg.norm(u - self.d) / np.linalg.norm(self.d))


def make_problem(
    n: int, noise: float = 0.01, beta: float = 1e-2, seed: int = 0, amplitude: float = 0.5
) -> DarcyInverse:
    """Build the inverse problem on an ``n x n`` grid.

    Args:
        n: cells per side, >= 4.
        noise: observation noise, as a fraction of ``max |u_true|`` (0 = noiseless).
        beta: weight of the gradient regularization of ``m``, >= 0.
        seed: seeds the true coefficient (a Gaussian random field, std ``amplitude``) and the noise.
    """
    if int(n) != n or n < 4:
        raise InputError(f"n must be an integer >= 4, got {n}")
    if not (noise >= 0 and np.isfinite(noise)):
        raise InputError(f"noise must be >= 0 and finite, got {noise}")
    if not (beta >= 0 and np.isfinite(beta)):
        raise InputError(f"beta must be >= 0 and finite, got {beta}")
    rng = np.random.default_rng(seed)
    field = grf(rng, n)
    m_true = amplitude * field / field.std()
    u_true = darcy.solve(np.exp(m_true))
    d = u_true + noise * np.abs(u_true).max() * rng.standard_normal(u_true.shape)
    return DarcyInverse(
        grid=int(n), sigma=0.01 * float(np.abs(u_true).max()), d=d, m_true=m_true, u_true=u_true, beta=float(beta)
    )

"""The linear systems every solver takes: a sparse SPD (or SPSD) matrix on a grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.linalg import eigvalsh_tridiagonal

from data.errors import InputError

from .lanczos import lanczos


class NotSPDError(InputError):
    """The matrix is not symmetric positive (semi)definite where a method needs it."""


@dataclass(frozen=True)
class GridSystem:
    """A matrix ``A`` acting on a cell grid of ``shape`` (``[z,] y, x``, x fastest).

    Attributes:
        A: ``scipy.sparse.csr_matrix``, shape ``(prod(shape), prod(shape))``, float64.
        shape: the grid, e.g. ``(64, 64)``.
        mask: optional boolean array of ``shape``; True = solid cell (identity row, x = 0 there).
        null: optional null-space vector of ``A`` (singular Neumann problems), shape ``(N,)``;
            right-hand sides must be orthogonal to it.
    """

    A: sp.csr_matrix
    shape: tuple[int, ...]
    mask: np.ndarray | None = None
    null: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        A = self.A
        if not sp.issparse(A):
            raise TypeError(f"A must be a scipy.sparse matrix, got {type(A).__name__}")
        if A.shape[0] != A.shape[1]:
            raise InputError(f"A must be square, got shape {A.shape}")
        n = int(np.prod(self.shape))
        if A.shape[0] != n:
            raise InputError(f"A has {A.shape[0]} rows but the grid {self.shape} has {n} cells")
        if self.mask is not None and np.shape(self.mask) != tuple(self.shape):
            raise InputError(f"mask has shape {np.shape(self.mask)}, expected {tuple(self.shape)}")
        if self.null is not None and np.shape(self.null) != (n,):
            raise InputError(f"null vector has shape {np.shape(self.null)}, expected ({n},)")
        object.__setattr__(self, "A", sp.csr_matrix(A, dtype=np.float64))

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def dim(self) -> int:
        return len(self.shape)

    @classmethod
    def from_poisson(
        cls, n: int, dim: int = 2, bc: str = "neumann", obstacle: str = "none", seed: int = 0
    ) -> GridSystem:
        """The cell-centred Poisson matrix of ``data.pdes.poisson`` with its mask and null space."""
        from data.pdes import poisson
        from data.spec import PoissonSpec

        mask = poisson.obstacle_mask(obstacle, n, dim, seed)
        A = poisson.assemble(n, dim, bc, mask)
        null = poisson.null_vector(PoissonSpec.model_validate({"n": n, "dim": dim, "bc": bc}), mask)
        return cls(A=A, shape=(n,) * dim, mask=mask, null=None if null is None else null / np.linalg.norm(null))

    def project(self, v: np.ndarray) -> np.ndarray:
        """``v`` without its null-space component (and zero on solid cells)."""
        v = np.array(v, dtype=np.float64).ravel()
        if self.mask is not None:
            v[self.mask.ravel()] = 0.0
        if self.null is not None:
            v -= (self.null @ v) * self.null
        return v


def check_rhs(system: GridSystem, b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64)
    if b.size != system.n:
        raise InputError(f"b has {b.size} entries (shape {b.shape}), A has {system.n} rows")
    b = b.ravel()
    if not np.all(np.isfinite(b)):
        raise InputError("b contains NaN or inf")
    if system.null is not None:
        comp = abs(system.null @ b)
        if comp > 1e-8 * max(float(np.linalg.norm(b)), 1e-300):
            raise InputError(
                f"b is not orthogonal to the null space of the singular A (component {comp:.2e}); "
                "project it first (GridSystem.project)"
            )
    return b


def check_spd(A: sp.csr_matrix, rtol: float = 1e-10, seed: int = 0, steps: int = 40) -> None:
    """Raise :class:`NotSPDError` unless ``A`` looks symmetric positive (semi)definite.

    Symmetry and a non-negative diagonal are checked exactly. A diagonally dominant matrix with
    those is SPSD (Gershgorin); otherwise ``steps`` Lanczos steps bound the lowest eigenvalue
    from above, and a clearly negative Ritz value proves indefiniteness. (A matrix with a tiny
    negative eigenvalue can still pass; CG then stops on negative curvature.)"""
    asym = abs(A - A.T)
    scale = abs(A).max() if A.nnz else 1.0
    if asym.nnz and asym.max() > rtol * scale:
        raise NotSPDError(f"A is not symmetric (max |A - A^T| = {asym.max():.3e})")
    if np.any(A.diagonal() < 0):
        raise NotSPDError("A has negative diagonal entries, so it is not positive (semi)definite")
    off = np.asarray(abs(A).sum(axis=1)).ravel() - np.abs(A.diagonal())
    if np.all(A.diagonal() >= off * (1 - 1e-12)):
        return
    alpha, beta, _ = lanczos(A, np.random.default_rng(seed).standard_normal(A.shape[0]), steps)
    low = eigvalsh_tridiagonal(alpha, beta)[0]
    if low < -1e-8 * scale:
        raise NotSPDError(f"A is indefinite (Lanczos finds an eigenvalue <= {low:.3e})")

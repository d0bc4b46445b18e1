"""Linear solvers behind one entry point.

    solve(A, b, method="dcdm"|"cg"|"icpcg"|"dpcg"|"gamg"|"petsc", tol=1e-6, maxiter=...,
          model=None, petsc_options=None) -> SolveResult

``A`` is a :class:`GridSystem` (matrix + grid shape + obstacle mask + null space), a
``scipy.sparse`` matrix (a square 2D grid is assumed for grid methods), or a PETSc Mat. Every
method stops on ``||b - A x|| <= tol ||b||`` with the true residual, and records the residual
history. Non-convergence returns ``converged=False`` with the history; it never raises.

The methods are the :data:`SOLVERS` registry (name -> function of the checked arguments,
:class:`SolveArgs`); :data:`METHODS` and every list of method names derive from it. A new method
is one function and one entry there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from data.errors import InputError

from .dcdm import dcdm
from .krylov import SolveResult, dpcg, gamg_petsc_options, ic0_petsc_options, pcg, petsc_ksp
from .lanczos import ritz_pairs
from .system import GridSystem, NotSPDError, check_rhs, check_spd


@dataclass(frozen=True)
class SolveArgs:
    """The checked arguments of :func:`solve`, as every registered method receives them: the
    system, the right-hand side (flat, ``N`` entries), the relative tolerance, the iteration cap,
    the initial guess (None: zero) and the options some methods use (``model``, ``n_orth``: dcdm;
    ``petsc_options``: petsc)."""

    system: GridSystem
    b: np.ndarray
    tol: float
    maxiter: int
    x0: np.ndarray | None = None
    model: Any = None
    petsc_options: Mapping[str, str] | None = None
    n_orth: int = 2


#: a registered method: the checked arguments -> the result
LinearSolver = Callable[[SolveArgs], SolveResult]


def _cg(a: SolveArgs) -> SolveResult:
    return pcg(a.system, a.b, a.tol, a.maxiter, x0=a.x0)


def _dpcg(a: SolveArgs) -> SolveResult:
    return dpcg(a.system, a.b, a.tol, a.maxiter, x0=a.x0)


def _icpcg(a: SolveArgs) -> SolveResult:
    return petsc_ksp(a.system, a.b, a.tol, a.maxiter, ic0_petsc_options(), "icpcg", a.x0)


def _gamg(a: SolveArgs) -> SolveResult:
    return petsc_ksp(a.system, a.b, a.tol, a.maxiter, gamg_petsc_options(), "gamg", a.x0)


def _petsc(a: SolveArgs) -> SolveResult:
    if not a.petsc_options:
        raise InputError("method='petsc' needs petsc_options, e.g. {'ksp_type': 'cg', 'pc_type': 'gamg'}")
    return petsc_ksp(a.system, a.b, a.tol, a.maxiter, a.petsc_options, "petsc", a.x0)


def _dcdm(a: SolveArgs) -> SolveResult:
    if a.model is None:
        raise InputError("method='dcdm' needs a trained model (operators.dcdm.DCDMNet)")
    return dcdm(a.system, a.b, a.model, a.tol, a.maxiter, n_orth=a.n_orth, x0=a.x0)


#: method name -> solver; the one list of linear methods (``METHODS``, CLI choices derive from it)
SOLVERS: dict[str, LinearSolver] = {
    "cg": _cg,
    "icpcg": _icpcg,
    "dpcg": _dpcg,
    "gamg": _gamg,
    "petsc": _petsc,
    "dcdm": _dcdm,
}
METHODS = tuple(SOLVERS)


def as_system(A) -> GridSystem:
    """Wrap a scipy.sparse matrix or PETSc Mat as a :class:`GridSystem` (square 2D grid if
    the size is a perfect square, else a 1D grid)."""
    if isinstance(A, GridSystem):
        return A
    if hasattr(A, "getValuesCSR"):  # PETSc Mat
        from data.petsc import mat_to_csr

        A = mat_to_csr(A)
    if not sp.issparse(A):
        A = np.asarray(A)
        if A.ndim != 2 or not np.issubdtype(A.dtype, np.number):
            raise InputError(f"A must be a square numeric matrix, got a {A.ndim}-D {A.dtype} array")
        A = sp.csr_matrix(A)
    if A.shape[0] != A.shape[1]:
        raise InputError(f"A must be square, got shape {A.shape}")
    if not np.isfinite(A.data).all():
        raise InputError(f"the matrix A contains NaN or inf ({int((~np.isfinite(A.data)).sum())} stored entries)")
    n = A.shape[0]
    side = int(round(np.sqrt(n)))
    return GridSystem(A=A, shape=(side, side) if side * side == n else (n,))


def solve(
    A,
    b: np.ndarray,
    method: str = "cg",
    tol: float = 1e-6,
    maxiter: int | None = None,
    model=None,
    petsc_options: Mapping[str, str] | None = None,
    x0: np.ndarray | None = None,
    n_orth: int = 2,
    check: bool = True,
) -> SolveResult:
    """Solve ``A x = b``.

    Args:
        A: GridSystem, scipy.sparse matrix or PETSc Mat; symmetric positive (semi)definite.
        b: right-hand side, ``N`` entries (any shape), finite; orthogonal to A's null space.
        method: one of :data:`METHODS`. ``icpcg`` = PETSc CG + ICC(0); ``gamg`` = PETSc CG +
            GAMG; ``petsc`` = any KSP from ``petsc_options``; ``dpcg`` = deflated PCG with 16
            Ritz vectors + Jacobi; ``dcdm`` needs ``model`` (a trained ``DCDMNet``).
        tol: relative tolerance on the true residual.
        maxiter: iteration cap (default ``N``).
        n_orth: DCDM's number of previous directions to A-orthogonalise against (paper: 2).
        check: verify symmetry / positivity before iterating (clear error instead of garbage).

    Raises:
        InputError, a ValueError (NotSPDError among them): bad shapes, NaN/inf, a non-SPD matrix, a model for
        another dimension, an unknown method — always before the first iteration.
    """
    if method not in SOLVERS:
        raise InputError(f"unknown method {method!r}; choose one of {METHODS}")
    if not (0 < tol < 1):
        raise InputError(f"tol must be in (0, 1), got {tol}")
    system = as_system(A)
    b = check_rhs(system, b)
    if check:
        check_spd(system.A)
    if maxiter is not None and maxiter < 1:
        raise InputError(f"maxiter must be >= 1, got {maxiter}")
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.shape != b.shape:
            raise InputError(f"x0 has shape {x0.shape}, b has {b.shape}")
        if not np.isfinite(x0).all():
            raise InputError("x0 (initial guess) contains NaN or inf")
    maxiter = int(maxiter or system.n)
    return SOLVERS[method](SolveArgs(system, b, tol, maxiter, x0, model, petsc_options, n_orth))


__all__ = [
    "METHODS",
    "SOLVERS",
    "GridSystem",
    "LinearSolver",
    "NotSPDError",
    "SolveArgs",
    "SolveResult",
    "as_system",
    "dcdm",
    "dpcg",
    "pcg",
    "petsc_ksp",
    "ritz_pairs",
    "solve",
]

"""Cell-centred finite-volume operators on the unit square/cube, shared by every family.

Grid convention (matches PETSc's DMDA natural ordering on one process): an array of shape
``(n,) * dim`` is indexed ``[z, y, x]`` (``[y, x]`` in 2D), the x index varies fastest in the
flattened (C-order) vector. Cell ``i`` along an axis has centre ``(i + 1/2) h`` with ``h = 1/n``.

The operator is ``-div(a grad u)`` with two-point fluxes: the face coefficient between two cells
is the harmonic mean of their ``a``; a Dirichlet (u = 0) boundary face has a ghost value at
distance ``h/2`` (coefficient ``2 a / h^2``); a Neumann face contributes nothing. For ``a = 1``
away from boundaries this is the classical 5-point (2D) / 7-point (3D) Laplacian scaled by
``1/h^2``. Solid (masked) cells are removed from the flow domain: faces between a fluid and a
solid cell are no-flux walls, and a solid cell's row and column are the identity row/column so
the matrix keeps the grid's shape (and stays SPD) for grid-based methods.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..petsc import petsc


def cell_centres(n: int, dim: int) -> list[np.ndarray]:
    """Coordinate arrays ``[x, y(, z)]``, each of shape ``(n,) * dim`` (indexed ``[.., y, x]``)."""
    c = (np.arange(n) + 0.5) / n
    grids = np.meshgrid(*([c] * dim), indexing="ij")  # grids[k] varies along axis k
    return [grids[dim - 1 - k] for k in range(dim)]  # x is the last axis


def fv_operator(
    a: np.ndarray,
    bc: str = "dirichlet",
    mask: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Assemble ``-div(a grad .)`` on the grid of ``a``.

    Args:
        a: cell coefficients, shape ``(n,) * dim``, positive and finite.
        bc: ``"dirichlet"`` (u = 0) or ``"neumann"`` (zero flux) on the outer boundary.
        mask: optional boolean array of the same shape; ``True`` marks solid cells.

    Returns:
        CSR matrix of shape ``(n**dim, n**dim)``, float64, symmetric; units ``[a] / length^2``.
    """
    a = np.asarray(a, dtype=np.float64)
    dim = a.ndim
    if dim not in (1, 2, 3) or len(set(a.shape)) != 1:
        raise ValueError(f"a must be a square/cubic grid of 1-3 dimensions, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("a must be finite and strictly positive everywhere")
    if bc not in ("dirichlet", "neumann"):
        raise ValueError(f"bc must be 'dirichlet' or 'neumann', got {bc!r}")
    n = a.shape[0]
    h2 = (1.0 / n) ** 2
    fluid = np.ones(a.shape, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {a.shape}")
        fluid = ~mask
    idx = np.arange(a.size).reshape(a.shape)
    diag = np.zeros(a.shape)
    rows, cols, vals = [], [], []
    for axis in range(dim):
        lo = [slice(None)] * dim
        hi = [slice(None)] * dim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        lo, hi = tuple(lo), tuple(hi)
        # interior faces: harmonic mean, only between two fluid cells
        t = 2.0 * a[lo] * a[hi] / (a[lo] + a[hi]) / h2
        t = np.where(fluid[lo] & fluid[hi], t, 0.0)
        diag[lo] += t
        diag[hi] += t
        nz = t != 0
        for r, c in ((idx[lo], idx[hi]), (idx[hi], idx[lo])):
            rows.append(r[nz])
            cols.append(c[nz])
            vals.append(-t[nz])
        if bc == "dirichlet":
            for face in (0, n - 1):
                s = [slice(None)] * dim
                s[axis] = face
                s = tuple(s)
                diag[s] += np.where(fluid[s], 2.0 * a[s] / h2, 0.0)
    diag = np.where(fluid, diag, 1.0)
    if mask is not None:
        # a fluid cell walled in on every side with Neumann boundaries would give a zero row
        diag = np.where(diag == 0.0, 1.0, diag)
    rows.append(idx.ravel())
    cols.append(idx.ravel())
    vals.append(diag.ravel())
    A = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(a.size, a.size)
    )
    A.sum_duplicates()
    A.sort_indices()
    return A


def dmda(n: int, dim: int):
    """A sequential PETSc DMDA of ``n`` cells per dimension, star stencil of width 1, with
    cell-centre coordinates (used by GAMG and geometric multigrid through ``KSP.setDM``)."""
    PETSc = petsc()
    da = PETSc.DMDA().create(
        dim=dim,
        sizes=(n,) * dim,
        dof=1,
        stencil_width=1,
        stencil_type=PETSc.DMDA.StencilType.STAR,
        comm=PETSc.COMM_SELF,
    )
    h = 1.0 / n
    lim = [0.5 * h, 1.0 - 0.5 * h]
    da.setUniformCoordinates(*(lim * dim))
    return da


def dmda_matrix(A: sp.csr_matrix, n: int, dim: int):
    """Copy ``A`` (assembled by :func:`fv_operator` on an n^dim grid) into a DMDA-preallocated
    PETSc AIJ matrix, returning ``(Mat, DMDA)``."""
    PETSc = petsc()
    da = dmda(n, dim)
    M = da.createMatrix()
    M.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
    M.setValuesCSR(A.indptr.astype(PETSc.IntType), A.indices.astype(PETSc.IntType), A.data)
    M.assemble()
    return M, da

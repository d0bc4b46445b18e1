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

from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..petsc import petsc


def cell_centres(n: int, dim: int) -> list[np.ndarray]:
    """Coordinate arrays ``[x, y(, z)]``, each of shape ``(n,) * dim`` (indexed ``[.., y, x]``)."""
    c = (np.arange(n) + 0.5) / n
    grids = np.meshgrid(*([c] * dim), indexing="ij")  # grids[k] varies along axis k
    return [grids[dim - 1 - k] for k in range(dim)]  # x is the last axis


def fv_stencil(
    a: np.ndarray,
    inside: np.ndarray,
    h: float,
    bc: str = "dirichlet",
    fluid: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The two-point-flux coefficients of ``-div(a grad .)`` for a box of cells: the one stencil,
    assembled globally by :func:`fv_operator` and per MPI rank by :func:`dmda_local_csr`.

    Args:
        a: cell coefficients on the box plus one layer of ghost cells on every side, shape
            ``(m_0 + 2, ..., m_{d-1} + 2)``, positive (the values of ghost cells outside the domain
            are not used).
        inside: boolean, same shape: the cells that belong to the domain (every box cell; a ghost
            cell when it is a real cell, e.g. another rank's). A face between a box cell and a
            cell not inside is a boundary face.
        h: cell width (units of length).
        bc: ``"dirichlet"`` (u = 0 at boundary faces, a ghost value at distance ``h/2``:
            coefficient ``2 a / h^2``) or ``"neumann"`` (zero flux).
        fluid: optional boolean, same shape; False marks solid cells (no flux through their faces).

    Returns:
        ``(diag, faces)``: ``diag`` of shape ``(m_0, ..., m_{d-1})``, the sum of each box cell's face
        coefficients including Dirichlet boundary faces (solid cells: see :func:`fv_operator`);
        ``faces[k]`` of the box's shape with ``m_k + 1`` along axis ``k``: ``faces[k][.., j, ..]`` is
        the coefficient of the face between box cells ``j - 1`` and ``j`` along ``k`` (the harmonic
        mean of their ``a`` over ``h^2``; zero at boundary faces and faces of solid cells). The
        matrix row of a box cell is ``diag`` on the diagonal and ``-faces`` for its neighbours.
        Units ``[a] / length^2``. The diagonal adds, axis by axis, the ``+1`` faces, the ``-1``
        faces, then the boundary faces, so every assembly gives the same bits.
    """
    dim = a.ndim
    h2 = h**2
    if fluid is None:
        fluid = np.ones(a.shape, dtype=bool)
    box = (slice(1, -1),) * dim
    diag = np.zeros(tuple(m - 2 for m in a.shape))
    faces = []
    for axis in range(dim):

        def along(sl: slice, axis: int = axis) -> tuple[slice, ...]:
            """``sl`` along ``axis`` of the padded arrays, the box cells on the other axes."""
            return box[:axis] + (sl,) + box[axis + 1 :]

        def at(sl: slice, axis: int = axis) -> tuple[slice, ...]:
            """``sl`` along ``axis`` of a face array."""
            return (slice(None),) * axis + (sl,)

        lo, hi = along(slice(0, -1)), along(slice(1, None))  # the two cells of every face
        t = 2.0 * a[lo] * a[hi] / (a[lo] + a[hi]) / h2  # interior faces: harmonic mean
        t = np.where(inside[lo] & inside[hi] & fluid[lo] & fluid[hi], t, 0.0)
        faces.append(t)
        diag += t[at(slice(1, None))]  # each box cell's +1 face
        diag += t[at(slice(0, -1))]  # its -1 face
        if bc == "dirichlet":
            centre = np.where(fluid[box], 2.0 * a[box] / h2, 0.0)
            for side in (slice(0, -2), slice(2, None)):  # a -1, then a +1 neighbour outside the domain
                diag += np.where(inside[along(side)], 0.0, centre)
    return diag, faces


def fv_operator(
    a: np.ndarray,
    bc: str = "dirichlet",
    mask: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Assemble ``-div(a grad .)`` on the grid of ``a`` (the stencil of :func:`fv_stencil`).

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
        raise InputError(f"a must be a square/cubic grid of 1-3 dimensions, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise InputError("a must be finite and strictly positive everywhere")
    if bc not in ("dirichlet", "neumann"):
        raise InputError(f"bc must be 'dirichlet' or 'neumann', got {bc!r}")
    n = a.shape[0]
    fluid = np.ones(a.shape, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape:
            raise InputError(f"mask has shape {mask.shape}, expected {a.shape}")
        fluid = ~mask
    inside = np.pad(np.ones(a.shape, dtype=bool), 1, constant_values=False)
    diag, faces = fv_stencil(np.pad(a, 1, mode="edge"), inside, 1.0 / n, bc, np.pad(fluid, 1, constant_values=False))
    idx = np.arange(a.size).reshape(a.shape)
    rows, cols, vals = [], [], []
    for axis, t in enumerate(faces):
        lo = tuple(slice(0, n - 1) if k == axis else slice(None) for k in range(dim))
        hi = tuple(slice(1, n) if k == axis else slice(None) for k in range(dim))
        t = t[tuple(slice(1, n) if k == axis else slice(None) for k in range(dim))]  # faces between two cells
        nz = t != 0
        for r, c in ((idx[lo], idx[hi]), (idx[hi], idx[lo])):
            rows.append(r[nz])
            cols.append(c[nz])
            vals.append(-t[nz])
    diag = np.where(fluid, diag, 1.0)
    if mask is not None:
        # a fluid cell walled in on every side with Neumann boundaries would give a zero row
        diag = np.where(diag == 0.0, 1.0, diag)
    rows.append(idx.ravel())
    cols.append(idx.ravel())
    vals.append(diag.ravel())
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(a.size, a.size))
    A.sum_duplicates()
    A.sort_indices()
    return A


def dmda(n: int, dim: int, comm: Any = None) -> Any:
    """A PETSc DMDA of ``n`` cells per dimension, star stencil of width 1, with cell-centre
    coordinates (used by GAMG and geometric multigrid through ``KSP.setDM``), on ``comm``
    (default ``PETSc.COMM_SELF``: sequential; an MPI communicator distributes the cells)."""
    PETSc = petsc()
    da = PETSc.DMDA().create(
        dim=dim,
        sizes=(n,) * dim,
        dof=1,
        stencil_width=1,
        stencil_type=PETSc.DMDA.StencilType.STAR,
        comm=comm or PETSc.COMM_SELF,
    )
    h = 1.0 / n
    lim = [0.5 * h, 1.0 - 0.5 * h]
    da.setUniformCoordinates(*(lim * dim))
    return da


def dmda_local_csr(da: Any, a: np.ndarray, bc: str = "dirichlet") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This rank's rows of :func:`fv_operator` on a (distributed) DMDA from :func:`dmda`, as CSR
    with *global PETSc* column indices, for ``PETSc.Mat().createAIJ(..., csr=...)``.

    Args:
        da: the DMDA (``n`` cells per dimension, star stencil of width 1).
        a: the coefficient on this rank's cells plus one ghost layer, indexed ``[(z,) y, x]``:
            shape ``(ny + 2, nx + 2)`` in 2D for the owned ranges ``da.getRanges()``; the values at
            positions outside the domain are not used.
        bc: ``"dirichlet"`` or ``"neumann"`` on the outer boundary (see :func:`fv_stencil`).

    Returns:
        ``(indptr, cols, vals)``; row ``r`` is the ``r``-th owned cell in the DMDA's local order
        (x fastest), i.e. global PETSc row ``rstart + r``. Neighbour columns come from the DMDA's
        local-to-global map over the ghosted box. Rows are in stencil order (-z, -y, -x, centre,
        +x, +y, +z: ascending on one rank); rows next to another rank's cells are sorted (AIJ
        preallocation from CSR wants sorted rows). On one rank this is exactly ``fv_operator(a[1:-1, 1:-1])``.
    """
    PETSc = petsc()
    dim = da.getDim()
    n = da.getSizes()[0]
    ranges = da.getRanges()[::-1]  # array axis order [(z,) y, x]
    m = tuple(e - s for s, e in ranges)
    if a.shape != tuple(mi + 2 for mi in m):
        raise InputError(
            f"a has shape {a.shape}; this rank's cells plus one ghost layer are {tuple(mi + 2 for mi in m)}"
        )
    # global PETSc index of every cell of the box with its ghost layer; -1 outside the domain
    gstart, gsize = (tuple(v)[::-1] for v in da.getGhostCorners())
    g = np.full(a.shape, -1, dtype=PETSc.IntType)
    g[tuple(slice(gs - s + 1, gs - s + 1 + gm) for gs, (s, _), gm in zip(gstart, ranges, gsize, strict=False))] = (
        da.getLGMap().getIndices().reshape(gsize)
    )
    diag, faces = fv_stencil(a, g >= 0, 1.0 / n, bc)
    box = (slice(1, -1),) * dim
    neighbours = [(axis, -1) for axis in range(dim)] + [(None, 0)] + [(axis, 1) for axis in reversed(range(dim))]
    cols, vals = [], []
    for axis, side in neighbours:
        if axis is None:
            cols.append(g[box])
            vals.append(diag)
            continue
        sl = slice(1 + side, -1 + side or None)
        cols.append(g[box[:axis] + (sl,) + box[axis + 1 :]])
        face = slice(1, None) if side > 0 else slice(0, -1)
        vals.append(-faces[axis][(slice(None),) * axis + (face,)])
    col = np.stack([c.ravel() for c in cols], axis=1)  # (cells, 2 dim + 1)
    val = np.stack([v.ravel() for v in vals], axis=1)
    edge = np.zeros(m, dtype=bool)  # rows with a neighbour on another rank
    for axis in range(dim):
        edge[(slice(None),) * axis + ([0, -1],)] = True
    rows = np.flatnonzero(edge.ravel())
    sub = np.where(col[rows] >= 0, col[rows], np.iinfo(PETSc.IntType).max)
    order = np.argsort(sub, axis=1, kind="stable")
    col[rows] = np.take_along_axis(col[rows], order, axis=1)
    val[rows] = np.take_along_axis(val[rows], order, axis=1)
    keep = col >= 0
    indptr = np.zeros(col.shape[0] + 1, dtype=PETSc.IntType)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return indptr, col[keep], val[keep]


def dmda_matrix(A: sp.csr_matrix, n: int, dim: int) -> tuple[Any, Any]:
    """Copy ``A`` (assembled by :func:`fv_operator` on an n^dim grid) into a DMDA-preallocated
    PETSc AIJ matrix, returning ``(Mat, DMDA)``."""
    PETSc = petsc()
    da = dmda(n, dim)
    M = da.createMatrix()
    M.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
    M.setValuesCSR(A.indptr.astype(PETSc.IntType), A.indices.astype(PETSc.IntType), A.data)
    M.assemble()
    return M, da

"""Poisson problems ``-lap x = b`` on the unit square/cube, the systems of the linear-solver benchmarks.

Arrays written per split: ``b`` and ``x`` of shape ``(N, n, n)`` (2D) or ``(N, n, n, n)`` (3D),
axes ``sample, [z,] y, x``; shared: the matrix ``A`` (CSR) and the obstacle ``mask``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import ndimage

from ..errors import InputError
from ..petsc import KSPSolver
from ..spec import PoissonSpec
from .grid import cell_centres, dmda_matrix, fv_operator
from .random_fields import grf

AXES = {
    "b": "sample,[z,]y,x",
    "x": "sample,[z,]y,x",
    "mask": "[z,]y,x",
    "A_data": "nnz",
    "A_indices": "nnz",
    "A_indptr": "row+1",
}


def assemble(n: int, dim: int = 2, bc: str = "dirichlet", mask: np.ndarray | None = None) -> sp.csr_matrix:
    """The cell-centred Laplacian ``-lap`` (scaled by ``1/h^2``, ``h = 1/n``) as CSR.

    Args:
        n: cells per dimension (>= 3).
        dim: 2 (5-point stencil) or 3 (7-point stencil).
        bc: ``"dirichlet"`` (u = 0, SPD) or ``"neumann"`` (zero flux, singular: constants on
            the fluid cells span the null space).
        mask: optional boolean ``(n,) * dim`` array, ``True`` = solid cell (excluded, identity row).

    Returns:
        ``scipy.sparse.csr_matrix`` of shape ``(n**dim, n**dim)``, float64, symmetric.
    """
    if not isinstance(n, (int, np.integer)) or n < 3:
        raise InputError(f"n must be an integer >= 3, got {n!r}")
    if dim not in (2, 3):
        raise InputError(f"dim must be 2 or 3, got {dim!r}")
    return fv_operator(np.ones((n,) * dim), bc=bc, mask=mask)


def obstacle_mask(kind: str, n: int, dim: int, seed: int = 0) -> np.ndarray | None:
    """Solid-cell mask: ``"none"`` -> None; ``"box"`` -> the centred box [0.35, 0.65]^dim;
    ``"disks"`` -> 4 random disks/balls (radius 0.06-0.12), resampled until the fluid is connected."""
    if kind == "none":
        return None
    centres = cell_centres(n, dim)
    if kind == "box":
        mask = np.ones((n,) * dim, dtype=bool)
        for c in centres:
            mask &= (c > 0.35) & (c < 0.65)
        return mask
    if kind != "disks":
        raise InputError(f"obstacle must be 'none', 'box' or 'disks', got {kind!r}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    for _ in range(100):
        mask = np.zeros((n,) * dim, dtype=bool)
        for _ in range(4):
            p = rng.uniform(0.2, 0.8, dim)
            r = rng.uniform(0.06, 0.12)
            mask |= sum((c - pk) ** 2 for c, pk in zip(centres, p, strict=True)) < r**2
        _, n_parts = ndimage.label(~mask)
        if n_parts == 1 and mask.any():
            return mask
    raise InputError(
        f"obstacle='disks': 100 draws of 4 disks at n={n}, dim={dim}, seed={seed} all split the fluid or missed "
        "every cell; use a finer grid (larger n) or another seed"
    )


def null_vector(spec: PoissonSpec, mask: np.ndarray | None) -> np.ndarray | None:
    """The operator's null vector (indicator of fluid cells) for Neumann problems, else None."""
    if spec.bc != "neumann":
        return None
    v = np.ones((spec.n,) * spec.dim)
    if mask is not None:
        v[mask] = 0.0
    return v.ravel()


def shared_arrays(spec: PoissonSpec) -> dict[str, np.ndarray]:
    mask = obstacle_mask(spec.obstacle, spec.n, spec.dim, spec.seed)
    A = assemble(spec.n, spec.dim, spec.bc, mask)
    out = {
        "A_data": A.data,
        "A_indices": A.indices.astype(np.int64),
        "A_indptr": A.indptr.astype(np.int64),
        "mask": (np.zeros((spec.n,) * spec.dim, bool) if mask is None else mask).astype(np.uint8),
    }
    return out


def sample_arrays(spec: PoissonSpec, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
    """Right-hand sides from a smooth random field (zero on solid cells, compatible with the
    Neumann null space) and their PETSc solutions. One KSP serves the whole chunk; if it diverges,
    ``spec.petsc_fallbacks`` are tried in order and the one that works serves the rest of it."""
    mask = obstacle_mask(spec.obstacle, spec.n, spec.dim, spec.seed)
    A = assemble(spec.n, spec.dim, spec.bc, mask)
    M, da = dmda_matrix(A, spec.n, spec.dim)
    shape = (spec.n,) * spec.dim
    bs, xs = [], []
    with KSPSolver(
        M, spec.solver_options(), nullspace=null_vector(spec, mask), dm=da, fallbacks=spec.petsc_fallbacks
    ) as ksp:
        for rng in rngs:
            b = grf(rng, spec.n, spec.dim, alpha=2.0, tau=3.0)
            b /= np.abs(b).max()
            if mask is not None:
                b[mask] = 0.0
            if spec.bc == "neumann":
                fluid = slice(None) if mask is None else ~mask
                b[fluid] -= b[fluid].mean()
            x = ksp.solve(b).reshape(shape)
            bs.append(b)
            xs.append(x)
    return {"b": np.stack(bs), "x": np.stack(xs)}


def load_matrix(arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    """Rebuild ``A`` from a loaded Poisson dataset's shared arrays."""
    n_rows = arrays["A_indptr"].shape[0] - 1
    return sp.csr_matrix((arrays["A_data"], arrays["A_indices"], arrays["A_indptr"]), shape=(n_rows, n_rows))

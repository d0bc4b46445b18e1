"""One large 2D Poisson / Darcy solve distributed over MPI ranks (PETSc DMDA + KSP).

    mpiexec -n 2 python -m solvers.linear.mpi_poisson --n 2048 [--problem darcy] \
        [--petsc-option pc_type=hypre ...] [--json out.json]

Each rank assembles only its own rows of the cell-centred finite-volume operator
``-div(a grad u)`` of ``data/pdes/grid.py`` (two-point fluxes, harmonic-mean face coefficients,
Dirichlet ``u = 0`` through a ghost value at ``h/2``; for ``a = 1`` the 5-point Laplacian / h²),
on a distributed ``DMDA`` with cell-centre coordinates. The solver comes from the PETSc options
database (``petsc_options`` over the defaults CG + GAMG, ``rtol 1e-8`` on the unpreconditioned
residual), inserted under a private prefix as in :mod:`data.petsc`.

Problems (both need no communication to assemble: ``a`` and ``f`` are functions of position):

* ``poisson``: ``a = 1``, manufactured ``u = sin(pi x) sin(pi y)``, ``f = 2 pi² u``; the
  discretisation error falls as h² (about ``0.05 h²`` in the max norm).
* ``darcy``: ``f = 1``, ``a`` in ``{12, 3}`` from a thresholded Gaussian random field of the FNO
  benchmark's covariance (``data/pdes/random_fields.py``), truncated to its 16 x 16 lowest cosine
  modes so every rank evaluates its own cells from the same ``seed``. No closed form: the true
  residual is checked.

Rank 0 prints one JSON object (and writes it to ``--json``): ranks, unknowns, unknowns per rank,
iterations, assembly / preconditioner set-up / solve seconds (the slowest rank's), the true
relative residual ``||b - A x|| / ||b||``, and for ``poisson`` the max and L2 errors against the
exact solution. A solve that does not converge raises :class:`data.petsc.SolverDivergedError`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data.pdes import grid, random_fields
from data.petsc import SolverDivergedError, ksp_reason, options_scope, petsc

DEFAULT_OPTIONS = {
    "ksp_type": "cg",
    "pc_type": "gamg",
    "ksp_rtol": "1e-8",
    "ksp_norm_type": "unpreconditioned",
    "ksp_max_it": "1000",
}
PROBLEMS = ("poisson", "darcy")
DARCY_MODES = 16  # cosine modes per dimension kept in the random field


def darcy_field(x: np.ndarray, y: np.ndarray, seed: int = 0, alpha: float = 2.0, tau: float = 3.0) -> np.ndarray:
    """Gaussian random field (covariance ``tau^(2a-2) (-lap + tau²)^(-a)``, Neumann cosine basis)
    at cell centres ``x`` (shape ``(nx,)``) and ``y`` (``(ny,)``); returns ``(ny, nx)``. The
    ``DARCY_MODES²`` coefficients are drawn from ``seed`` identically on every rank."""
    c = random_fields.cosine_coefficients(np.random.default_rng(seed), DARCY_MODES, 2, alpha, tau)
    return random_fields.cosine_series(c, x, y)


def coefficient(problem: str, x: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Cell coefficient ``a`` on the tensor grid ``y x x`` (shape ``(len(y), len(x))``)."""
    if problem == "poisson":
        return np.ones((len(y), len(x)))
    return np.where(darcy_field(x, y, seed) >= 0.0, 12.0, 3.0)


def exact(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Manufactured Poisson solution ``sin(pi x) sin(pi y)`` on ``y x x``."""
    return np.outer(np.sin(np.pi * y), np.sin(np.pi * x))


def forcing(problem: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if problem == "poisson":
        return 2.0 * np.pi**2 * exact(x, y)
    return np.ones((len(y), len(x)))


def local_rows(da, problem: str, seed: int = 0):
    """This rank's rows of ``-div(a grad .)`` as CSR with *global PETSc* column indices: the
    stencil of :func:`data.pdes.grid.fv_stencil` assembled by :func:`data.pdes.grid.dmda_local_csr`
    (see there) on the coefficient of ``problem`` over the owned cells and one ghost ring."""
    n = da.getSizes()[0]
    (xs, xe), (ys, ye) = da.getRanges()
    centre = lambda lo, hi: (np.arange(lo, hi) + 0.5) / n  # noqa: E731
    a = coefficient(problem, centre(xs - 1, xe + 1), centre(ys - 1, ye + 1), seed)  # one ghost ring
    return grid.dmda_local_csr(da, a)


def _all(comm, value: float) -> list[float]:
    """``value`` from every rank, in rank order, on every rank (no mpi4py needed)."""
    PETSc = petsc()
    v = PETSc.Vec().createMPI((1, comm.getSize()), comm=comm)
    v.setValue(v.getOwnershipRange()[0], float(value))
    v.assemble()
    scatter, everywhere = PETSc.Scatter.toAll(v)
    scatter.scatter(v, everywhere)
    out = everywhere.getArray().tolist()
    for obj in (scatter, everywhere, v):
        obj.destroy()
    return out


def solve(
    n: int, problem: str = "poisson", petsc_options: Mapping[str, str] | None = None, seed: int = 0, comm=None
) -> dict:
    """Assemble and solve on ``comm`` (default ``PETSc.COMM_WORLD``); every rank returns the
    same result dict (see the module docstring)."""
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}")
    if not 4 <= n <= 1 << 15:
        raise ValueError(f"n must be in [4, 32768], got {n}")
    PETSc = petsc()
    comm = comm or PETSc.COMM_WORLD
    options = {**DEFAULT_OPTIONS, **{k: str(v) for k, v in (petsc_options or {}).items()}}

    comm.barrier()
    t0 = time.perf_counter()
    da = grid.dmda(n, 2, comm=comm)
    h = 1.0 / n
    indptr, cols, vals = local_rows(da, problem, seed)
    n_loc = len(indptr) - 1
    A = PETSc.Mat().createAIJ(size=((n_loc, n * n), (n_loc, n * n)), csr=(indptr, cols, vals), comm=comm)
    A.assemble()
    b = da.createGlobalVec()
    (xs, xe), (ys, ye) = da.getRanges()
    xc, yc = (np.arange(xs, xe) + 0.5) * h, (np.arange(ys, ye) + 0.5) * h
    b.setArray(forcing(problem, xc, yc).ravel())
    x = b.duplicate()
    assembly = time.perf_counter() - t0

    with options_scope(options, stem="mpipoisson") as prefix:
        ksp = PETSc.KSP().create(comm=comm)
        ksp.setOptionsPrefix(prefix)
        ksp.setDM(da)  # grid and coordinates for GAMG / geometric multigrid; the operator stays ours
        ksp.setDMActive(False)
        ksp.setOperators(A)
        ksp.setFromOptions()
        comm.barrier()
        t0 = time.perf_counter()
        ksp.setUp()
        pc_setup = time.perf_counter() - t0
        comm.barrier()
        t0 = time.perf_counter()
        ksp.solve(b, x)
        solve_s = time.perf_counter() - t0
        reason, iterations = ksp.getConvergedReason(), ksp.getIterationNumber()
        ksp_type, pc_type = ksp.getType(), ksp.getPC().getType()
        ksp.destroy()
    if reason < 0:
        raise SolverDivergedError(
            f"PETSc KSP {ksp_type}/{pc_type} did not converge on {problem} n={n}: "
            f"{ksp_reason(reason)} after {iterations} iterations; options {options}"
        )

    r = b.duplicate()
    A.mult(x, r)
    r.aypx(-1.0, b)  # r = b - A x
    result = {
        "problem": problem,
        "n": n,
        "ranks": comm.getSize(),
        "unknowns": n * n,
        "rank_unknowns": [int(v) for v in np.diff(A.getOwnershipRanges())],
        "rank_pids": [int(v) for v in _all(comm, os.getpid())],
        "ksp": ksp_type,
        "pc": pc_type,
        "iterations": int(iterations),
        "reason": ksp_reason(reason),
        "relative_residual": r.norm() / b.norm(),
        "assembly_seconds": max(_all(comm, assembly)),
        "setup_seconds": max(_all(comm, pc_setup)),
        "solve_seconds": max(_all(comm, solve_s)),
        "solution_l2": x.norm() * h,
        "petsc_options": options,
    }
    result["total_seconds"] = result["assembly_seconds"] + result["setup_seconds"] + result["solve_seconds"]
    if problem == "poisson":
        e = x.duplicate()
        e.setArray(x.getArray() - exact(xc, yc).ravel())
        result["error_max"] = e.norm(PETSc.NormType.INFINITY)
        result["error_l2"] = e.norm() * h
        e.destroy()
    for obj in (r, x, b, A, da):
        obj.destroy()
    return result


def _parse_options(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"mpi_poisson: --petsc-option expects KEY=VALUE, got {item!r}")
        out[key.lstrip("-")] = value
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m solvers.linear.mpi_poisson", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1024, help="cells per side (unknowns = n²)")
    p.add_argument("--problem", choices=PROBLEMS, default="poisson")
    p.add_argument("--seed", type=int, default=0, help="darcy: random-field seed")
    p.add_argument(
        "--petsc-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="PETSc option over the defaults (repeatable), e.g. pc_type=hypre",
    )
    p.add_argument("--json", type=Path, help="also write the result here (rank 0)")
    args = p.parse_args(argv)
    PETSc = petsc()
    result = solve(args.n, args.problem, _parse_options(args.petsc_option), args.seed)
    if PETSc.COMM_WORLD.getRank() == 0:
        text = json.dumps(result)
        print(text, flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except SolverDivergedError as exc:
        print(f"mpi_poisson: {exc}", file=sys.stderr)
        sys.exit(1)

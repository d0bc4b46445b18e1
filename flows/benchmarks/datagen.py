"""Data-generation benchmark: the full flow vs a bare petsc4py loop, and GAMG scaling.

1. Darcy samples/second through ``generate-dataset`` (Prefect tasks + MLflow + HDF5 + digests)
   against a bare loop that solves the same systems (same coefficients, same PETSc options) and
   keeps the solutions in memory. Ratio = flow seconds / bare seconds (target <= 1.15 at
   ``small``). The flow runs on a fresh store (nothing cached); the Prefect API server is
   started before timing (a warm-up flow run), so its one-off start-up is not counted. Bare loop
   and flow alternate (2 repeats at ``small``) and the best time of each is compared, the usual
   estimator on a shared machine whose run-to-run noise (about +-15% here) exceeds the target.
   BLAS thread pools are limited to one thread in both (PETSc here is sequential; OpenBLAS
   threads only spin on its small dense coarse-grid work).
2. One Poisson solve with PETSc CG + GAMG (rtol 1e-8 on the unpreconditioned residual) per grid;
   time per unknown should stay roughly flat (near-linear scaling).
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

import data
from data.pdes import darcy, poisson
from data.pdes.grid import dmda_matrix
from data.petsc import KSPSolver
from data.spec import DarcySpec
from data.store import sample_rngs, single_threaded_blas

SIZES = {
    "smoke": {"darcy": [(16, 32), (32, 16)], "poisson": [32, 64, 128]},
    "small": {"darcy": [(64, 2048), (128, 512)], "poisson": [128, 256, 512, 1024]},
    "paper": {"darcy": [(128, 4096), (256, 1024)], "poisson": [256, 512, 1024, 2048]},
}
CHUNK = {"smoke": 8, "small": 256, "paper": 256}
REPEATS = {"smoke": 1, "small": 2, "paper": 3}
GAMG = {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": "1e-8", "ksp_norm_type": "unpreconditioned"}
META = {"target": "flow/bare <= 1.15 at small; GAMG seconds per unknown within 2x across grids"}


def bare_loop(spec: DarcySpec) -> float:
    """Seconds to draw and solve every train sample of ``spec`` in a plain petsc4py loop."""
    t0 = time.perf_counter()
    with single_threaded_blas(), darcy.DarcySolver(spec.n, spec.solver_options()) as solver:
        out = [
            solver.solve(darcy.coefficient(spec, rng), spec.f) for rng in sample_rngs(spec, "train", 0, spec.n_train)
        ]
    seconds = time.perf_counter() - t0
    assert len(out) == spec.n_train
    return seconds


def gamg_solve(n: int) -> tuple[float, float, int]:
    """(setup+solve seconds, solve-only seconds, iterations) for -lap x = b on an n^2 grid."""
    A = poisson.assemble(n, 2)
    M, da = dmda_matrix(A, n, 2)
    b = np.random.default_rng(0).standard_normal(n * n)
    t0 = time.perf_counter()
    with KSPSolver(M, GAMG, dm=da) as ksp:
        ksp.ksp.setUp()
        t1 = time.perf_counter()
        x = ksp.solve(b)
        t2 = time.perf_counter()
        its = ksp.iterations
    rel = np.linalg.norm(b - A @ x) / np.linalg.norm(b)
    if rel > 1e-8 * 1.01:
        raise RuntimeError(f"GAMG at n={n} returned relative residual {rel:.2e} > 1e-8")
    return t2 - t0, t2 - t1, its


def run(scale: str, run_id: str | None = None, methods=None) -> tuple[list[dict], dict]:
    """Flow vs bare loop on Darcy, then GAMG scaling (``methods``: unused beyond the rows, which
    :func:`flows.benchmarks.run_benchmark` logs to each method's MLflow child run)."""
    from ..generate import generate_dataset

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sciflow-bench-") as tmp:
        generate_dataset(spec=DarcySpec(n=8, n_train=1, n_test=0), chunk_size=1, root=tmp)  # warm-up: API up
        for n, count in SIZES[scale]["darcy"]:
            spec = DarcySpec(n=n, n_train=count, n_test=0, seed=12345)
            bares, flows = [], []
            for rep in range(REPEATS[scale]):  # alternate, fresh store each time; keep the best of each
                bares.append(bare_loop(spec))
                t0 = time.perf_counter()
                ref = generate_dataset(
                    spec=spec, chunk_size=CHUNK[scale], root=f"{tmp}/{n}-{rep}", parent_run_id=run_id
                )
                flows.append(time.perf_counter() - t0)
            bare, flow = min(bares), min(flows)
            assert data.load(ref).arrays["u"].shape == (count, n, n)
            for method, seconds in (("bare-petsc4py", bare), ("prefect-flow", flow)):
                rows.append(
                    {
                        "method": method,
                        "problem": f"darcy-{n}x{n}",
                        "scale": scale,
                        "samples": count,
                        "seconds": round(seconds, 3),
                        "samples_per_s": round(count / seconds, 2),
                        "ratio_to_bare": round(seconds / bare, 3),
                    }
                )
    base = None
    for n in SIZES[scale]["poisson"]:
        total, solve, its = gamg_solve(n)
        per = total / n**2
        base = base or per
        rows.append(
            {
                "method": "petsc-cg-gamg",
                "problem": f"poisson-{n}x{n}",
                "scale": scale,
                "unknowns": n * n,
                "iterations": its,
                "seconds": round(total, 4),
                "solve_seconds": round(solve, 4),
                "us_per_unknown": round(per * 1e6, 4),
                "ratio_to_smallest": round(per / base, 3),
            }
        )
    return rows, {}

"""Classical Krylov baselines: CG, Jacobi-deflated PCG, and PETSc KSP (CG+ICC, CG+GAMG, ...).

Every solver stops on the same rule, ``||b - A x||_2 <= tol ||b||_2`` (the true, unpreconditioned
residual), counts one iteration per matrix-vector product with a new search direction, and
records the residual norm after each iteration (``residuals[0]`` is the initial one).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse.linalg as spla

from .system import GridSystem, NotSPDError


@dataclass
class SolveResult:
    """Outcome of one solve. ``residuals`` are residual 2-norms, one per iteration plus the initial
    one (true residuals; :func:`pcg`'s between its true-residual checks are the recursively updated
    ones); ``converged`` is False when ``maxiter`` ran out or the iteration stopped early (``x`` is
    then the last iterate, ``info["reason"]`` says why)."""

    x: np.ndarray
    iterations: int
    residuals: list[float]
    seconds: float
    converged: bool
    method: str
    setup_seconds: float = 0.0
    info: dict = field(default_factory=dict)
    times: list[float] = field(default_factory=list)  # seconds since the solve began, per residual

    @property
    def relative_residual(self) -> float:
        return self.residuals[-1] / self.residuals[0] if self.residuals and self.residuals[0] else 0.0

    def reached(self, threshold: float) -> tuple[int, float] | None:
        """``(iterations, seconds incl. set-up)`` at which the residual first fell to
        ``threshold`` (an absolute norm), or None if it never did."""
        for i, r in enumerate(self.residuals):
            if r <= threshold:
                return i, self.setup_seconds + (self.times[i] if i < len(self.times) else self.seconds)
        return None


#: after a true-residual check above ``tol``, :func:`pcg` checks again at least this often
RECHECK_EVERY = 10


def initial_state(system: GridSystem, b: np.ndarray, x0: np.ndarray | None):
    """``(x, r, ||b||, [||r||])`` at the start of an iteration from ``x0`` (zero if None)."""
    x = np.zeros(system.n) if x0 is None else np.array(x0, dtype=np.float64)
    r = b - system.A @ x
    return x, r, np.linalg.norm(b), [float(np.linalg.norm(r))]


def pcg(
    system: GridSystem,
    b: np.ndarray,
    tol: float,
    maxiter: int,
    precond: Callable[[np.ndarray], np.ndarray] | None = None,
    x0: np.ndarray | None = None,
    method: str = "cg",
    deflate: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SolveResult:
    """(Preconditioned) conjugate gradients, Hestenes-Stiefel form.

    ``deflate`` (used by :func:`dpcg`) maps a preconditioned residual ``z`` to the part of it
    that is A-orthogonal to a deflation space; search directions are then ``deflate(z) + beta p``.

    The residual is updated recursively (``r -= alpha A p``). When it falls to ``tol ||b||`` the
    true residual ``b - A x`` is computed: the solve has converged if that is below ``tol ||b||``
    too; otherwise it replaces the recursive one (whose rounding errors had drifted from it) and
    the iteration goes on, checking the true residual again when the recursive one is below
    ``tol ||b||`` or :data:`RECHECK_EVERY` iterations later, whichever comes first. A check that
    finds the true residual no smaller than the previous one means ``tol`` is below the accuracy
    rounding errors allow: the solve stops there, not converged, with ``info["reason"]`` set to
    ``"stagnated"``. The history records the true norm at a check, the recursive one elsewhere; with an accurate
    recursive residual the iterates and iteration count are those of plain CG.
    """
    A = system.A
    t0 = time.perf_counter()
    x, r, bnorm, res = initial_state(system, b, x0)
    times = [time.perf_counter() - t0]
    z = precond(r) if precond else r
    p = deflate(z) if deflate else z.copy()
    rz = r @ z
    converged = res[0] <= tol * bnorm
    stagnated, last_check, next_check = False, np.inf, -1  # the true residual at the last check; the next one
    it = 0
    while not converged and it < maxiter:
        Ap = A @ p
        pAp = p @ Ap
        if pAp <= 0:
            raise NotSPDError(f"negative curvature p.Ap = {pAp:.3e} at iteration {it}: A is not positive definite")
        alpha = rz / pAp
        x += alpha * p
        r -= alpha * Ap
        it += 1
        rnorm = float(np.linalg.norm(r))
        if rnorm <= tol * bnorm or it == next_check:  # the stopping rule is the true residual's
            r = b - A @ x
            rnorm = float(np.linalg.norm(r))
            converged = rnorm <= tol * bnorm
            stagnated = not converged and rnorm >= last_check
            last_check, next_check = rnorm, it + RECHECK_EVERY
        res.append(rnorm)
        times.append(time.perf_counter() - t0)
        if converged or stagnated:
            break
        z = precond(r) if precond else r
        rz_new = r @ z
        p = (deflate(z) if deflate else z) + (rz_new / rz) * p
        rz = rz_new
    out = SolveResult(x, it, res, time.perf_counter() - t0, converged, method, times=times)
    if stagnated:
        out.info["reason"] = "stagnated"
    return out


#: above this many unknowns :func:`lowest_eigvecs` inverts the shifted matrix with PETSc CG + GAMG
#: instead of a sparse LU (a 64^3 Poisson LU takes over 13 GiB and tens of minutes; 2D LUs stay small)
DIRECT_EIG_MAX = 100_000


def lowest_eigvecs(system: GridSystem, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` lowest nonzero eigenpairs of ``A`` on the fluid cells (shift-invert Lanczos,
    ARPACK); the null space is excluded and the vectors are zero on solid cells. Returns
    ``(values (k,), vectors (N, k))``.

    The eigenproblem is solved on the fluid block ``A[fluid, fluid]``: solid cells are decoupled
    identity rows whose eigenvalue 1 lies below the scaled fluid spectrum, so asking ARPACK for the
    lowest pairs of the whole matrix returned mostly solid-cell vectors (4 to 10 of 16 kept on the
    benchmark's layouts). The shifted solves use SciPy's sparse LU up to :data:`DIRECT_EIG_MAX`
    fluid unknowns, and above it PETSc CG + GAMG to a relative residual of 1e-12 (the same
    eigenpairs to that accuracy)."""
    A = system.A
    fluid = np.arange(system.n) if system.mask is None else np.flatnonzero(~system.mask.ravel())
    Af = A[fluid][:, fluid].tocsr()
    extra = 1 if system.null is not None else 0
    v0 = np.random.default_rng(seed).standard_normal(len(fluid))
    sigma = -1e-3 * abs(Af.diagonal()).max()  # just below the spectrum: shifted matrix is SPD
    if len(fluid) <= DIRECT_EIG_MAX:
        vals, vecs = spla.eigsh(Af, k=k + extra, sigma=sigma, which="LM", v0=v0)
    else:
        with _shifted_inverse(Af, sigma) as inverse:
            vals, vecs = spla.eigsh(Af, k=k + extra, sigma=sigma, which="LM", v0=v0, OPinv=inverse)
    order = np.argsort(vals)
    vals, vecs = vals[order], vecs[:, order]
    keep = vals > 1e-8 * vals.max()
    out = np.zeros((system.n, int(keep.sum())))
    out[fluid] = vecs[:, keep]
    return vals[keep][:k], out[:, :k]


@contextlib.contextmanager
def _shifted_inverse(A, sigma: float) -> Iterator[spla.LinearOperator]:
    """``(A - sigma I)^-1`` as a LinearOperator: PETSc CG + GAMG solves to rtol 1e-12 (SPD for
    ``sigma`` below the spectrum); the KSP lives for the block."""
    import scipy.sparse as sp

    from data.petsc import mat_from_csr, options_scope, petsc

    PETSc = petsc()
    M = mat_from_csr(A - sigma * sp.identity(A.shape[0], format="csr"))
    opts = {"ksp_type": "cg", "pc_type": "gamg", "ksp_rtol": "1e-12", "ksp_atol": "0", "ksp_max_it": "10000"}
    with options_scope(opts) as prefix:
        ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
        try:
            ksp.setOptionsPrefix(prefix)
            ksp.setOperators(M)
            ksp.setFromOptions()
            ksp.setUp()
            xb, bb = M.createVecs()

            def solve(y: np.ndarray) -> np.ndarray:
                bb.setArray(np.ascontiguousarray(y, dtype=np.float64).ravel())
                ksp.solve(bb, xb)
                if ksp.getConvergedReason() <= 0:
                    raise RuntimeError(f"shifted solve for the eigenvectors failed: reason {ksp.getConvergedReason()}")
                return xb.getArray().copy()

            yield spla.LinearOperator(A.shape, matvec=solve, dtype=np.float64)
        finally:
            ksp.destroy()
            M.destroy()


def dpcg(
    system: GridSystem,
    b: np.ndarray,
    tol: float,
    maxiter: int,
    n_deflate: int = 16,
    x0: np.ndarray | None = None,
    W: np.ndarray | None = None,
) -> SolveResult:
    """Deflated PCG (Saad, Yeung, Erhel & Guyomarc'h 2000, Algorithm 2.1) with a Jacobi
    preconditioner, deflating the ``n_deflate`` lowest Ritz vectors of ``A``.

    The deflation space ``W`` costs an eigen-solve: it is reported as ``setup_seconds``.
    """
    A = system.A
    t_setup = time.perf_counter()
    if W is None:
        _, W = lowest_eigvecs(system, n_deflate)
    AW = A @ W
    E_inv = np.linalg.inv(W.T @ AW)
    dinv = 1.0 / A.diagonal()
    setup = time.perf_counter() - t_setup

    x = np.zeros(system.n) if x0 is None else np.array(x0, dtype=np.float64)
    x += W @ (E_inv @ (W.T @ (b - A @ x)))  # start with a residual orthogonal to W
    out = pcg(
        system,
        b,
        tol,
        maxiter,
        precond=lambda r: dinv * r,
        x0=x,
        method="dpcg",
        deflate=lambda z: z - W @ (E_inv @ (AW.T @ z)),
    )
    out.setup_seconds = setup
    out.info["n_deflate"] = W.shape[1]
    return out


def petsc_ksp(
    system: GridSystem,
    b: np.ndarray,
    tol: float,
    maxiter: int,
    options: Mapping[str, str],
    method: str = "petsc",
    x0: np.ndarray | None = None,
) -> SolveResult:
    """A PETSc KSP chosen by ``options`` (e.g. ``{"ksp_type": "cg", "pc_type": "gamg"}``).

    Stopping is forced to this module's rule: unpreconditioned residual norm, ``rtol = tol``,
    ``atol = 0``. The history comes from the KSP's own residual monitor (the unpreconditioned
    norm, which CG updates recursively; the final true residual is checked). PCSetUp time is
    ``setup_seconds``. Non-convergence returns ``converged=False`` with the KSP reason.
    """
    from data.pdes.grid import dmda_matrix
    from data.petsc import ksp_reason, options_scope, petsc

    PETSc = petsc()
    opts = {
        **dict(options),
        "ksp_norm_type": "unpreconditioned",
        "ksp_rtol": repr(tol),
        "ksp_atol": "0",
        "ksp_max_it": str(maxiter),
        "ksp_divtol": "1e12",
    }
    if system.dim in (2, 3) and len(set(system.shape)) == 1:
        M, dm = dmda_matrix(system.A, system.shape[0], system.dim)
    else:
        from data.petsc import mat_from_csr

        M, dm = mat_from_csr(system.A), None
    if system.null is not None:
        v = M.createVecLeft()
        v.setArray(system.null)
        M.setNullSpace(PETSc.NullSpace().create(vectors=[v]))
    with options_scope(opts) as prefix:
        ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
        try:
            ksp.setOptionsPrefix(prefix)
            if dm is not None:
                ksp.setDM(dm)
                ksp.setDMActive(False)
            ksp.setOperators(M)
            ksp.setFromOptions()
            if x0 is not None:
                ksp.setInitialGuessNonzero(True)
            hist: list[float] = []
            times: list[float] = []
            t0: float  # set just before ksp.solve, the only place the monitor runs

            def monitor(_ksp, _it: int, rnorm: float) -> None:
                hist.append(float(rnorm))
                times.append(time.perf_counter() - t0)

            ksp.setMonitor(monitor)
            xb, bb = M.createVecs()
            bb.setArray(b)
            xb.setArray(np.zeros(system.n) if x0 is None else np.asarray(x0, dtype=np.float64))
            t_setup = time.perf_counter()
            ksp.setUp()
            setup = time.perf_counter() - t_setup
            t0 = time.perf_counter()
            ksp.solve(bb, xb)
            seconds = time.perf_counter() - t0
            x = xb.getArray().copy()
            reason = ksp.getConvergedReason()
            label = f"{ksp.getType()}+{ksp.getPC().getType()}"
        finally:
            ksp.destroy()
    true = float(np.linalg.norm(b - system.A @ x))
    converged = bool(reason > 0 and true <= tol * np.linalg.norm(b) * 1.0001)
    out = SolveResult(
        x, max(len(hist) - 1, 0), hist or [true], seconds, converged, method, setup_seconds=setup, times=times
    )
    out.info.update({"ksp": label, "reason": ksp_reason(reason), "true_residual": true})
    return out


def ic0_petsc_options() -> dict[str, str]:
    """PETSc CG + ICC(0); the factor shift keeps singular (Neumann) M-matrices factorable."""
    return {"ksp_type": "cg", "pc_type": "icc", "pc_factor_levels": "0", "pc_factor_shift_type": "positive_definite"}


def gamg_petsc_options() -> dict[str, str]:
    return {"ksp_type": "cg", "pc_type": "gamg"}

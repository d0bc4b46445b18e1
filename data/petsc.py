"""Thin helpers around petsc4py: options scopes, matrices from CSR, KSP with checked convergence.

The solver is chosen by the PETSc options database (``KSP.setFromOptions``), never by code:
callers pass a ``{"ksp_type": "cg", "pc_type": "gamg"}`` mapping, which is inserted under a
unique prefix for the lifetime of one solver and removed afterwards. A :class:`KSPSolver` may
also take fallback mappings, tried in order (each under its own prefix) when a solve diverges.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from .errors import SolverDivergedError

_prefix_counter = itertools.count()
log = logging.getLogger(__name__)


def petsc():
    """Import and return ``petsc4py.PETSc`` (initialised once, without command-line arguments)."""
    import petsc4py

    petsc4py.init([])
    from petsc4py import PETSc

    return PETSc


def _reason_name(enum_cls, code: int) -> str:
    for name in dir(enum_cls):
        if not name.startswith("_") and getattr(enum_cls, name) == code and name.isupper():
            return name
    return str(code)


def _first_line(exc: Exception) -> str:
    """PETSc's error text without the traceback lines: the line that names the failure."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = [ln for ln in lines if "DIVERGED" in ln or "failed" in ln.lower() or "pivot" in ln.lower()]
    return (reason or lines or [repr(exc)])[-1].removeprefix("[0] ")


def ksp_reason(code: int) -> str:
    """Human name of a ``KSPConvergedReason`` code, e.g. ``DIVERGED_INDEFINITE_PC``."""
    return _reason_name(petsc().KSP.ConvergedReason, code)


def ts_reason(code: int) -> str:
    """Human name of a ``TSConvergedReason`` code, e.g. ``DIVERGED_NONLINEAR_SOLVE``."""
    return _reason_name(petsc().TS.ConvergedReason, code)


@contextmanager
def options_scope(options: Mapping[str, str], stem: str = "sciflow") -> Iterator[str]:
    """Insert ``options`` under a fresh prefix; yield the prefix; delete them on exit."""
    PETSc = petsc()
    prefix = f"{stem}{next(_prefix_counter)}_"
    db = PETSc.Options()
    for key, value in options.items():
        db.setValue(prefix + key, value)
    try:
        yield prefix
    finally:
        for key in options:
            db.delValue(prefix + key)


def mat_from_csr(A: sp.csr_matrix, comm=None):
    """A sequential PETSc AIJ matrix holding a copy of the CSR matrix ``A`` (float64)."""
    PETSc = petsc()
    A = sp.csr_matrix(A, dtype=np.float64)
    A.sort_indices()
    M = PETSc.Mat().createAIJ(
        size=A.shape,
        csr=(A.indptr.astype(PETSc.IntType), A.indices.astype(PETSc.IntType), A.data),
        comm=comm or PETSc.COMM_SELF,
    )
    M.assemble()
    return M


def mat_to_csr(M) -> sp.csr_matrix:
    indptr, indices, data = M.getValuesCSR()
    return sp.csr_matrix((data, indices, indptr), shape=M.getSize())


class KSPSolver:
    """A reusable PETSc KSP configured from an options mapping, with optional fallbacks.

    ``nullspace`` (a vector) makes a singular operator solvable: ``b`` is projected orthogonal to it
    and the returned ``x`` has no component along it. ``solve(b)`` returns the solution as a new
    float64 array and raises :class:`SolverDivergedError` (with the KSP reason) if the solve did
    not converge.

    ``fallbacks`` is a sequence of PETSc options mappings, each merged over ``options`` (it
    overrides entries, it cannot remove them), e.g. ``[{"pc_type": "lu", "ksp_type": "preonly",
    "ksp_norm_type": "none"}]``. When a solve fails (a negative ``KSPConvergedReason`` such as
    ``DIVERGED_ITS`` or ``DIVERGED_INDEFINITE_PC``, or a PETSc error such as a zero pivot) or a
    configuration cannot be set up (an unknown ``pc_type``), a warning names the reason and the
    next fallback, the KSP is rebuilt with the merged options under a fresh options prefix (the
    previous prefix's entries are removed from the options database) and the **same right-hand
    side** is solved again. When every fallback has failed, :class:`SolverDivergedError` lists
    each attempt with its options and reason. Without fallbacks the error is the single attempt's.

    The switch is kept for the rest of the solver's life: later solves start from the fallback
    that worked (re-diverging with the first options on every sample would double the cost), and
    a later failure moves on to the next fallback, never back. Which configuration solved a
    sample therefore depends on the samples solved before it with this solver; solutions agree
    with the first options' to the solver tolerance, not bit for bit. :attr:`fallbacks_used`
    counts the switches, :attr:`attempt` is the index of the active configuration (0: ``options``,
    ``k``: ``fallbacks[k - 1]``) and :attr:`options` the merged options in use.
    """

    def __init__(
        self,
        A,
        options: Mapping[str, str],
        nullspace: np.ndarray | None = None,
        dm=None,
        fallbacks: Sequence[Mapping[str, str]] = (),
    ):
        PETSc = petsc()
        self._PETSc = PETSc
        self.base_options = dict(options)
        self.fallbacks = [dict(f) for f in fallbacks]
        self.options = dict(options)
        self.attempt = 0
        self.fallbacks_used = 0
        self.failures: list[str] = []  # "[label] reason" of every failed attempt, in order
        self._solves = 0
        self._scope = None
        self._prefix = ""
        self._dm = dm
        self._nullvec = None
        if nullspace is not None:
            v = np.asarray(nullspace, dtype=np.float64).ravel()
            self._nullvec = v / np.linalg.norm(v)
        self.ksp = None
        try:
            self._use_options(self.options)
            self._set_matrix(A)
            try:
                self._new_ksp()
            except PETSc.Error as exc:
                if not self.fallbacks:
                    raise
                self._record(f"KSP setup failed: {_first_line(exc)}")
                self._fall_back()
        except BaseException:
            self.close()
            raise

    # -- configuration ----------------------------------------------------------------------

    def _use_options(self, options: Mapping[str, str]) -> None:
        """Insert ``options`` under a fresh prefix and remove the previous prefix's entries."""
        scope = options_scope(options)
        prefix = scope.__enter__()
        old, self._scope, self._prefix, self.options = self._scope, scope, prefix, dict(options)
        if old is not None:
            old.__exit__(None, None, None)

    def _new_ksp(self):
        """Create the KSP from the options for the current operator."""
        PETSc = self._PETSc
        if self.ksp is not None:
            self.ksp.destroy()
        self.ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
        self.ksp.setOptionsPrefix(self._prefix)
        if self._dm is not None:  # grid information for GAMG / geometric multigrid; operators stay ours
            self.ksp.setDM(self._dm)
            self.ksp.setDMActive(False)
        self.ksp.setOperators(self.A)
        self.ksp.setFromOptions()

    def _label(self) -> str:
        if self.attempt == 0:
            return f"options {self.base_options}"
        return f"fallback {self.attempt}/{len(self.fallbacks)} {self.fallbacks[self.attempt - 1]}"

    def _record(self, reason: str) -> None:
        self.failures.append(f"[solve {self._solves}, {self._label()}] {reason}")

    def _fall_back(self) -> None:
        """Switch to the next fallback whose KSP can be set up; after the last one, raise
        :class:`SolverDivergedError` listing every failed attempt."""
        while self.attempt < len(self.fallbacks):
            reason = self.failures[-1]
            self.attempt += 1
            self.fallbacks_used += 1
            log.warning("%s; retrying the same right-hand side with %s", reason, self._label())
            self._use_options({**self.base_options, **self.fallbacks[self.attempt - 1]})
            try:
                self._new_ksp()
                return
            except self._PETSc.Error as exc:
                self._record(f"KSP setup failed: {_first_line(exc)}")
        raise SolverDivergedError(
            f"PETSc KSP failed with the options and all {len(self.fallbacks)} fallbacks "
            f"({len(self.failures)} attempts): " + "; ".join(self.failures)
        )

    def _set_matrix(self, A) -> None:
        M = A if isinstance(A, self._PETSc.Mat) else mat_from_csr(A)
        if self._nullvec is not None:
            v = M.createVecLeft()
            v.setArray(self._nullvec)
            M.setNullSpace(self._PETSc.NullSpace().create(vectors=[v], comm=M.getComm()))
        self.A = M
        self.x, self.b = M.createVecs()

    def set_operator(self, A) -> None:
        """Use a new operator (any sparsity pattern); the KSP is rebuilt with the active options."""
        self._set_matrix(A)
        self._new_ksp()

    def update_values(self, A: sp.csr_matrix) -> None:
        """Replace the operator's values (same sparsity pattern); the preconditioner is updated.

        The KSP is kept: with GAMG its default ``pc_gamg_reuse_interpolation`` keeps the
        prolongator built for the first operator (half the cost per solve). Solutions still meet
        the tolerance, but agree across different groupings of samples only to that tolerance,
        not bit for bit (the same grouping is bit-for-bit reproducible)."""
        PETSc = self._PETSc
        self.A.zeroEntries()
        self.A.setValuesCSR(A.indptr.astype(PETSc.IntType), A.indices.astype(PETSc.IntType), A.data)
        self.A.assemble()
        self.ksp.setOperators(self.A)

    # -- solving ----------------------------------------------------------------------------

    def _solve_once(self) -> str | None:
        """Solve ``self.b`` into ``self.x`` with the active KSP; the failure reason, or None."""
        self.x.set(0.0)
        try:
            self.ksp.solve(self.b, self.x)
        except self._PETSc.Error as exc:  # e.g. a zero pivot in a factorization, a bad option pair
            return f"PETSc KSP {self.ksp.getType()}/{self.ksp.getPC().getType()} failed: {_first_line(exc)}"
        reason = self.ksp.getConvergedReason()
        if reason < 0:
            return (
                f"PETSc KSP {self.ksp.getType()}/{self.ksp.getPC().getType()} did not converge: "
                f"{ksp_reason(reason)} after {self.ksp.getIterationNumber()} iterations "
                f"(residual norm {self.ksp.getResidualNorm():.3e})"
            )
        return None

    def solve(self, b: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(b, dtype=np.float64).ravel()
        if b.shape[0] != self.b.getSize():
            raise ValueError(f"right-hand side has {b.shape[0]} entries, the operator has {self.b.getSize()} rows")
        if not np.all(np.isfinite(b)):
            raise ValueError("right-hand side contains NaN or inf")
        if self._nullvec is not None:  # make the system consistent: b orthogonal to the null space
            b = b - (self._nullvec @ b) * self._nullvec
        self._solves += 1
        self.b.setArray(b)
        while (reason := self._solve_once()) is not None:
            if not self.fallbacks:
                raise SolverDivergedError(f"{reason}; options {self.options}")
            self._record(reason)
            self._fall_back()  # raises once every fallback has failed
            self.b.setArray(b)  # the same right-hand side (a failed solve may have touched b)
        x = self.x.getArray().copy()
        if self._nullvec is not None:  # the solution with no null-space component
            x -= (self._nullvec @ x) * self._nullvec
        return x

    @property
    def iterations(self) -> int:
        return self.ksp.getIterationNumber()

    def close(self) -> None:
        """Destroy the KSP and remove this solver's entries from the options database (idempotent)."""
        if self.ksp is not None:
            self.ksp.destroy()
            self.ksp = None
        if self._scope is not None:
            self._scope.__exit__(None, None, None)
            self._scope = None

    def __enter__(self) -> "KSPSolver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TimeStepper:
    """A PETSc TS configured from an options mapping (under a private prefix), reused across
    initial conditions. Subclasses set up the problem on ``self.ts`` (RHS, Jacobian, DM), then
    call ``self.ts.setFromOptions()``; :meth:`trajectory` steps to each output time exactly."""

    def __init__(self, options: Mapping[str, str], stem: str = "sciflow_ts"):
        PETSc = petsc()
        self._scope = options_scope(options, stem=stem)
        prefix = self._scope.__enter__()
        self.ts = PETSc.TS().create(comm=PETSc.COMM_SELF)
        self.ts.setOptionsPrefix(prefix)
        self.ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)

    def trajectory(self, u, u0: np.ndarray, times: np.ndarray, dt: float) -> np.ndarray:
        """Integrate from ``u0`` (flat, finite) at ``times[0]``; the state at every time in
        ``times``, shape ``(len(times), u0.size)``. Raises :class:`SolverDivergedError` with the
        TS reason and the time reached."""
        if not np.all(np.isfinite(u0)):
            raise ValueError("initial state contains NaN or inf")
        if np.any(np.diff(times) <= 0):
            raise ValueError("output times must be strictly increasing")
        ts = self.ts
        u.setArray(np.ascontiguousarray(u0, dtype=np.float64).ravel())
        ts.setTime(float(times[0]))
        ts.setStepNumber(0)
        ts.setTimeStep(dt)
        out = [u.getArray().copy()]
        for t_out in times[1:]:
            ts.setMaxTime(float(t_out))
            ts.setMaxSteps(10**9)
            try:
                ts.solve(u)
            except petsc().Error as exc:  # PETSc raises instead of returning a reason here
                raise SolverDivergedError(f"PETSc TS {ts.getType()} failed at t={ts.getTime():.4g}: {_first_line(exc)}") from exc
            reason = ts.getConvergedReason()
            if reason < 0:
                raise SolverDivergedError(f"PETSc TS {ts.getType()} failed at t={ts.getTime():.4g}: {ts_reason(reason)}")
            out.append(u.getArray().copy())
        return np.stack(out)

    def close(self) -> None:
        self.ts.destroy()
        self._scope.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

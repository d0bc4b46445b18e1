"""Thin helpers around petsc4py: options scopes, matrices from CSR, KSP with checked convergence.

The solver is chosen by the PETSc options database (``KSP.setFromOptions``), never by code:
callers pass a ``{"ksp_type": "cg", "pc_type": "gamg"}`` mapping, which is inserted under a
unique prefix for the lifetime of one solver and removed afterwards. A :class:`KSPSolver` may
also take fallback mappings, tried in order (each under its own prefix) when a solve diverges.

PETSc's errors (``petsc4py.PETSc.Error``, an error code and a traceback) never reach the caller
raw: :func:`translate_error` turns one into :class:`PetscOptionError` naming the option and value
PETSc refused (``ksp_type=nosuchksp: unknown KSP type (PETSc error 86: ...); known types include
...``), or into :class:`SolverDivergedError` / :class:`SciflowError` naming PETSc's error code and
the line that says what failed.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal, Self

import numpy as np
import scipy.sparse as sp

from .errors import InputError, PetscOptionError, SciflowError, SolverDivergedError

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


def _first_line(exc: BaseException) -> str:
    """PETSc's error text without the traceback lines: the line that names the failure."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    reason = [ln for ln in lines if "DIVERGED" in ln or "failed" in ln.lower() or "pivot" in ln.lower()]
    return (reason or lines or [repr(exc)])[-1].removeprefix("[0] ")


# ---------------------------------------------------------------------------------------------
# PETSc errors -> the error family

#: PETSc error codes (``petscerror.h``) that mean a value PETSc cannot use: 56 not supported,
#: 62 wrong argument, 63 out of range / not a number, 75 incompatible arguments, 83 user error
#: (an enum option's unknown value), 86 unknown type, 92 missing factorization package, 95 bad input
OPTION_ERROR_CODES = frozenset({56, 62, 63, 75, 83, 86, 92, 95})

#: option-name suffix -> (what it names, the petsc4py class listing the known values); longest first
_TYPE_REGISTRIES: tuple[tuple[str, str, str, str], ...] = (
    ("pc_factor_mat_solver_type", "factorization package", "Mat", "SolverType"),
    ("ts_arkimex_type", "TS ARKIMEX", "TS", "ARKIMEXType"),
    ("ts_rk_type", "TS RK", "TS", "RKType"),
    ("pc_gamg_type", "PC GAMG", "PC", "GAMGType"),
    ("snes_type", "SNES", "SNES", "Type"),
    ("ksp_type", "KSP", "KSP", "Type"),
    ("mat_type", "Mat", "Mat", "Type"),
    ("pc_type", "PC", "PC", "Type"),
    ("ts_type", "TS", "TS", "Type"),
)
_FRAME = re.compile(r"^\w+\(\) at \S+:\d+$")  # a traceback line: "KSPSetUp() at ./src/.../itfunc.c:406"
_TOKEN = re.compile(r"[^\s\"'`:;,()]+")


def petsc_error_code(exc: BaseException) -> int | None:
    """The PETSc error code of a ``petsc4py.PETSc.Error`` (None for any other exception)."""
    code = getattr(exc, "ierr", None)
    return code if isinstance(code, int) else None


def _reason_lines(exc: BaseException, prefix: str = "") -> list[str]:
    """PETSc's message lines that say what failed (no traceback frames), option names without
    sciflow's private prefix."""
    lines = [ln.strip().removeprefix("[0] ").strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not _FRAME.match(ln) and not re.fullmatch(r"error code \d+", ln)]
    return [ln.replace(f"-{prefix}", "-") for ln in lines] if prefix else lines


def known_types(key: str) -> tuple[str, list[str]]:
    """For an option naming a PETSc type (``ksp_type``, ``mg_levels_pc_type``, ``ts_rk_type``, ...):
    what it names (``"KSP"``) and the values petsc4py knows, sorted; ``("", [])`` for other options.
    A known value may still be missing from this PETSc build (an external package)."""
    for suffix, noun, cls, attr in _TYPE_REGISTRIES:
        if key == suffix or key.endswith("_" + suffix):
            registry = getattr(getattr(petsc(), cls, None), attr, None)
            if registry is None:
                return noun, []
            return noun, sorted({v for k, v in vars(registry).items() if not k.startswith("_") and isinstance(v, str)})
    return "", []


def option_error_message(key: str, value: str, exc: BaseException, prefix: str = "") -> str:
    """``key=value: <what is wrong> (PETSc error <code>: <PETSc's reason>)[; known types include ...]``."""
    code = petsc_error_code(exc)
    reason = (_reason_lines(exc, prefix) or [_first_line(exc)])[-1]
    noun, known = known_types(key)
    if known and (code == 86 or value not in known):
        msg = (
            f"{key}={value}: unknown {noun} type (PETSc error {code}: {reason}); known types include {', '.join(known)}"
        )
        close = difflib.get_close_matches(value, known, n=3)
        return msg + (f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
    if code == 86:
        return f"{key}={value}: unknown type (PETSc error {code}: {reason})"
    return f"{key}={value}: PETSc cannot use this value (PETSc error {code}: {reason})"


def _named_option(options: Mapping[str, str], exc: BaseException, prefix: str) -> str | None:
    """The option PETSc's message names (``Unknown option zz for -<prefix><key>``) or, failing
    that, the one option whose value the message quotes; None when it names none or several."""
    text = str(exc)
    named = [k for k in options if re.search(rf"-{re.escape(prefix + k)}(?![\w-])", text)]
    if len(named) == 1:
        return named[0]
    tokens = {t for ln in _reason_lines(exc) for t in _TOKEN.findall(ln)}
    quoted = [k for k, v in options.items() if v and v in tokens]
    return quoted[0] if len(quoted) == 1 else None


def _reapplied_option(options: Mapping[str, str], kind: Literal["ksp", "ts"]) -> tuple[str, BaseException, str] | None:
    """Re-apply ``options`` one more at a time (in order) to a scratch KSP or TS and configure it
    (``setFromOptions``); ``(key, error, prefix)`` for the option whose addition first makes PETSc
    fail (or, among the options applied so far, the one PETSc's message names or quotes: an
    option read only once a later one enables it). Deterministic and cheap (no operator, no
    set-up); None when the options configure cleanly."""
    PETSc = petsc()
    items = list(options.items())
    for i in range(len(items)):
        applied = dict(items[: i + 1])
        with options_scope(applied, stem="sciflow_check") as prefix:
            obj = PETSc.KSP().create(comm=PETSc.COMM_SELF) if kind == "ksp" else PETSc.TS().create(comm=PETSc.COMM_SELF)
            try:
                obj.setOptionsPrefix(prefix)
                obj.setFromOptions()
            except PETSc.Error as exc:
                return _named_option(applied, exc, prefix) or items[i][0], exc, prefix
            finally:
                obj.destroy()
    return None


def translate_error(
    exc: BaseException,
    options: Mapping[str, str],
    *,
    what: str,
    stage: Literal["configure", "solve"],
    kind: Literal["ksp", "ts"] = "ksp",
    prefix: str = "",
) -> SciflowError:
    """The error-family form of a ``petsc4py.PETSc.Error`` raised by a KSP/TS configured from
    ``options`` (inserted under ``prefix``); the caller raises it ``from exc``.

    * An option PETSc refused: :class:`PetscOptionError` naming it, its value, PETSc's error code
      and reason and, for a type, the known types. The option is the one PETSc's message names
      (or whose value it quotes) when that is one option; else, for an error while configuring,
      the one whose re-application to a scratch object (:func:`_reapplied_option`) fails.
      Errors in set-up (e.g. a factorization package this PETSc lacks) count as an option's
      only with an error code in :data:`OPTION_ERROR_CODES`.
    * Anything else: :class:`SolverDivergedError` (``stage="solve"``, e.g. a zero pivot) or
      :class:`SciflowError` (``stage="configure"``): ``"<what> (PETSc error <code>): <reason>"``, where
      ``what`` says what failed (``"PETSc KSP cg/lu failed"``).
    """
    code = petsc_error_code(exc)
    culprit: tuple[str, BaseException, str] | None = None
    if code in OPTION_ERROR_CODES:
        key = _named_option(options, exc, prefix)
        culprit = (key, exc, prefix) if key is not None else None
    if culprit is None and stage == "configure":
        culprit = _reapplied_option(options, kind)
    error: SciflowError
    if culprit is not None:
        key, cause, pfx = culprit
        error = PetscOptionError(option_error_message(key, options[key], cause, pfx))
    elif stage == "solve":
        error = SolverDivergedError(f"{what} (PETSc error {code}): {_first_line(exc)}")
    else:
        error = SciflowError(f"{what} (PETSc error {code}): {_first_line(exc)}; options {dict(options)}")
    error.__cause__ = exc
    return error


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


class ScopedSolver:
    """A PETSc solver object (a KSP, a TS) whose options live under a private prefix of the options
    database for as long as the solver does. :meth:`close` (also on leaving a ``with`` block)
    destroys the object and removes those options; it is idempotent. Subclasses keep the options
    scope in ``_scope`` and destroy their PETSc object in :meth:`_destroy`."""

    _scope: AbstractContextManager[str] | None = None

    def _destroy(self) -> None:
        """Destroy the PETSc object (if it still exists)."""

    def close(self) -> None:
        """Destroy the PETSc object and remove this solver's entries from the options database (idempotent)."""
        self._destroy()
        if self._scope is not None:
            self._scope.__exit__(None, None, None)
            self._scope = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class KSPSolver(ScopedSolver):
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
    each attempt with its options and reason (:class:`PetscOptionError` when every attempt failed
    on an option PETSc refused). Without fallbacks the error is the single attempt's: a
    :class:`PetscOptionError` naming the option for options PETSc refuses (``ksp_type=nosuchksp``,
    ``ksp_rtol=abc``), :class:`SolverDivergedError` for a solve that failed (see
    :func:`translate_error`).

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
        self._option_failures = 0  # how many of them were options PETSc refused
        self._solves = 0
        self._scope = None
        self._prefix = ""
        self._dm = dm
        self._nullvec = None
        if nullspace is not None:
            v = np.asarray(nullspace, dtype=np.float64).ravel()
            self._nullvec = v / np.linalg.norm(v)
        self.ksp: Any = None
        try:
            self._use_options(self.options)
            self._set_matrix(A)
            try:
                self._new_ksp()
            except SciflowError as exc:
                if not self.fallbacks:
                    raise
                self._record(f"KSP setup failed: {exc}", isinstance(exc, PetscOptionError))
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

    def _new_ksp(self) -> None:
        """Create the KSP from the options for the current operator; a PETSc error while
        configuring it is raised translated (:func:`translate_error`)."""
        PETSc = self._PETSc
        if self.ksp is not None:
            self.ksp.destroy()
        self.ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
        self.ksp.setOptionsPrefix(self._prefix)
        if self._dm is not None:  # grid information for GAMG / geometric multigrid; operators stay ours
            self.ksp.setDM(self._dm)
            self.ksp.setDMActive(False)
        self.ksp.setOperators(self.A)
        try:
            self.ksp.setFromOptions()
        except PETSc.Error as exc:
            raise translate_error(
                exc, self.options, what="PETSc KSP could not be configured", stage="configure", prefix=self._prefix
            ) from exc

    def _label(self) -> str:
        if self.attempt == 0:
            return f"options {self.base_options}"
        return f"fallback {self.attempt}/{len(self.fallbacks)} {self.fallbacks[self.attempt - 1]}"

    def _record(self, reason: str, option_error: bool = False) -> None:
        self.failures.append(f"[solve {self._solves}, {self._label()}] {reason}")
        self._option_failures += option_error

    def _fall_back(self) -> None:
        """Switch to the next fallback whose KSP can be set up; after the last one, raise
        :class:`SolverDivergedError` listing every failed attempt (:class:`PetscOptionError`
        when each failed on an option PETSc refused)."""
        while self.attempt < len(self.fallbacks):
            reason = self.failures[-1]
            self.attempt += 1
            self.fallbacks_used += 1
            log.warning("%s; retrying the same right-hand side with %s", reason, self._label())
            self._use_options({**self.base_options, **self.fallbacks[self.attempt - 1]})
            try:
                self._new_ksp()
                return
            except SciflowError as exc:
                self._record(f"KSP setup failed: {exc}", isinstance(exc, PetscOptionError))
        error = PetscOptionError if self._option_failures == len(self.failures) else SolverDivergedError
        raise error(
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

    def _solve_once(self) -> SciflowError | None:
        """Solve ``self.b`` into ``self.x`` with the active KSP; the failure, or None."""
        self.x.set(0.0)
        try:
            self.ksp.solve(self.b, self.x)
        except self._PETSc.Error as exc:  # e.g. a zero pivot in a factorization, a missing package
            what = f"PETSc KSP {self.ksp.getType()}/{self.ksp.getPC().getType()} failed"
            return translate_error(exc, self.options, what=what, stage="solve", prefix=self._prefix)
        reason = self.ksp.getConvergedReason()
        if reason < 0:
            return SolverDivergedError(
                f"PETSc KSP {self.ksp.getType()}/{self.ksp.getPC().getType()} did not converge: "
                f"{ksp_reason(reason)} after {self.ksp.getIterationNumber()} iterations "
                f"(residual norm {self.ksp.getResidualNorm():.3e})"
            )
        return None

    def solve(self, b: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(b, dtype=np.float64).ravel()
        if b.shape[0] != self.b.getSize():
            raise InputError(f"right-hand side has {b.shape[0]} entries, the operator has {self.b.getSize()} rows")
        if not np.all(np.isfinite(b)):
            raise InputError("right-hand side contains NaN or inf")
        if self._nullvec is not None:  # make the system consistent: b orthogonal to the null space
            b = b - (self._nullvec @ b) * self._nullvec
        self._solves += 1
        self.b.setArray(b)
        while (failure := self._solve_once()) is not None:
            if not self.fallbacks:
                if isinstance(failure, PetscOptionError):
                    raise failure
                raise SolverDivergedError(f"{failure}; options {self.options}") from failure.__cause__
            self._record(str(failure), isinstance(failure, PetscOptionError))
            self._fall_back()  # raises once every fallback has failed
            self.b.setArray(b)  # the same right-hand side (a failed solve may have touched b)
        x = self.x.getArray().copy()
        if self._nullvec is not None:  # the solution with no null-space component
            x -= (self._nullvec @ x) * self._nullvec
        return x

    @property
    def iterations(self) -> int:
        return self.ksp.getIterationNumber()

    def _destroy(self) -> None:
        if self.ksp is not None:
            self.ksp.destroy()
            self.ksp = None


class TimeStepper(ScopedSolver):
    """A PETSc TS configured from an options mapping (under a private prefix), reused across
    initial conditions. Subclasses set up the problem on ``self.ts`` (RHS, Jacobian, DM), then
    call :meth:`configure`; :meth:`trajectory` steps to each output time exactly."""

    def __init__(self, options: Mapping[str, str], stem: str = "sciflow_ts"):
        PETSc = petsc()
        self.options = dict(options)
        scope = options_scope(options, stem=stem)
        self._prefix = scope.__enter__()
        self._scope = scope
        self.ts = PETSc.TS().create(comm=PETSc.COMM_SELF)
        self.ts.setOptionsPrefix(self._prefix)
        self.ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)

    def configure(self) -> None:
        """``ts.setFromOptions()``; an option PETSc refuses raises :class:`PetscOptionError`
        naming it (other PETSc errors: :class:`SciflowError`), after closing this stepper."""
        try:
            self.ts.setFromOptions()
        except petsc().Error as exc:
            error = translate_error(
                exc,
                self.options,
                what="PETSc TS could not be configured",
                stage="configure",
                kind="ts",
                prefix=self._prefix,
            )
            self.close()
            raise error from exc

    def trajectory(self, u, u0: np.ndarray, times: np.ndarray, dt: float) -> np.ndarray:
        """Integrate from ``u0`` (flat, finite) at ``times[0]``; the state at every time in
        ``times``, shape ``(len(times), u0.size)``. Raises :class:`SolverDivergedError` with the
        TS reason and the time reached."""
        if not np.all(np.isfinite(u0)):
            raise InputError("initial state contains NaN or inf")
        if np.any(np.diff(times) <= 0):
            raise InputError("output times must be strictly increasing")
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
                raise translate_error(
                    exc,
                    self.options,
                    what=f"PETSc TS {ts.getType()} failed at t={ts.getTime():.4g}",
                    stage="solve",
                    kind="ts",
                    prefix=self._prefix,
                ) from exc
            reason = ts.getConvergedReason()
            if reason < 0:
                raise SolverDivergedError(
                    f"PETSc TS {ts.getType()} failed at t={ts.getTime():.4g}: {ts_reason(reason)}"
                )
            out.append(u.getArray().copy())
        return np.stack(out)

    def _destroy(self) -> None:
        if self.ts is not None:
            self.ts.destroy()
            self.ts = None


__all__ = [
    "OPTION_ERROR_CODES",
    "KSPSolver",
    "PetscOptionError",
    "SciflowError",
    "ScopedSolver",
    "SolverDivergedError",
    "TimeStepper",
    "known_types",
    "ksp_reason",
    "mat_from_csr",
    "mat_to_csr",
    "option_error_message",
    "options_scope",
    "petsc",
    "petsc_error_code",
    "translate_error",
    "ts_reason",
]

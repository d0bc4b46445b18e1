"""Darcy flow ``-div(a grad u) = f`` on the unit square with ``u = 0`` on the boundary.

The FNO benchmark problem (Li et al., 2021): ``a`` piecewise constant (12 / 3) from a thresholded
Gaussian random field, ``f = 1``. Discretised by cell-centred finite volumes (``grid.fv_operator``)
and solved with a PETSc KSP chosen through the options database.

Arrays written per split: ``a`` and ``u``, shape ``(N, n, n)``, axes ``sample, y, x``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..petsc import KSPSolver
from ..spec import DarcySpec
from .grid import dmda_matrix, fv_operator
from .random_fields import grf, threshold

AXES = {"a": "sample,y,x", "u": "sample,y,x"}
DEFAULT_OPTIONS = DarcySpec.model_construct().default_petsc_options()


class DarcySolver:
    """Solves many Darcy problems of one resolution with one reused PETSc KSP.

    ``petsc_fallbacks``: options mappings merged over the solver options and tried in order when
    a solve diverges (see :class:`data.petsc.KSPSolver`); the one that works is kept."""

    def __init__(
        self,
        n: int,
        petsc_options: Mapping[str, str] | None = None,
        petsc_fallbacks: Sequence[Mapping[str, str]] = (),
    ):
        self.n = n
        A = fv_operator(np.ones((n, n)))
        self._M, self._da = dmda_matrix(A, n, 2)
        self._ksp = KSPSolver(
            self._M, {**DEFAULT_OPTIONS, **(petsc_options or {})}, dm=self._da, fallbacks=petsc_fallbacks
        )
        self._first = True

    def solve(self, a: np.ndarray, f: float | np.ndarray = 1.0) -> np.ndarray:
        a = _check_coefficient(a, self.n)
        try:
            rhs = np.broadcast_to(np.asarray(f, dtype=np.float64), a.shape)
        except ValueError as exc:
            raise InputError(
                f"f has shape {np.shape(f)}, which does not broadcast to the coefficient's {a.shape}; "
                f"give a number or an array of shape {a.shape}"
            ) from exc
        if not np.all(np.isfinite(rhs)):
            raise InputError("f contains NaN or inf")
        self._ksp.update_values(fv_operator(a))
        return self._ksp.solve(rhs).reshape(a.shape)

    @property
    def iterations(self) -> int:
        return self._ksp.iterations

    @property
    def fallbacks_used(self) -> int:
        """How many times the solver switched to a fallback (0: the first options served)."""
        return self._ksp.fallbacks_used

    def close(self) -> None:
        self._ksp.close()

    def __enter__(self) -> DarcySolver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_coefficient(a: np.ndarray, n: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise InputError(f"a must be a square (n, n) array, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise InputError(f"a has resolution {a.shape[0]}, this solver was built for {n}")
    if a.shape[0] < 2:
        raise InputError("a needs at least 2x2 cells")
    if not np.all(np.isfinite(a)):
        raise InputError("a contains NaN or inf")
    if np.any(a <= 0):
        raise InputError("a must be strictly positive")
    return a


def solve(
    a: np.ndarray,
    f: float | np.ndarray = 1.0,
    petsc_options: Mapping[str, str] | None = None,
    petsc_fallbacks: Sequence[Mapping[str, str]] = (),
) -> np.ndarray:
    """Solve one Darcy problem.

    Args:
        a: **cell** coefficients, shape ``(n, n)`` (cell ``[j, i]`` is centred at
            ``((i + 1/2)/n, (j + 1/2)/n)``), positive and finite.
        f: forcing, a scalar or an ``(n, n)`` array of cell values.
        petsc_options: PETSc options overriding the defaults (CG + GAMG, rtol 1e-10).
        petsc_fallbacks: options mappings merged over those and tried in order if the solve
            diverges, e.g. ``[{"ksp_type": "preonly", "pc_type": "lu"}]``.

    Returns:
        ``u`` at the cell centres, shape ``(n, n)``, float64.

    Raises:
        ValueError: bad shape or values. SolverDivergedError: the KSP did not converge (with
        every fallback, each attempt and its reason listed).
    """
    a = _check_coefficient(a)
    with DarcySolver(a.shape[0], petsc_options, petsc_fallbacks) as solver:
        return solver.solve(a, f)


def coefficient(spec: DarcySpec, rng: np.random.Generator) -> np.ndarray:
    """One coefficient field ``a`` of shape ``(n, n)`` for the spec."""
    return threshold(grf(rng, spec.n, 2, spec.alpha, spec.tau), spec.a_high, spec.a_low)


def shared_arrays(spec: DarcySpec) -> dict[str, np.ndarray]:
    return {}


def sample_arrays(spec: DarcySpec, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
    a_list, u_list = [], []
    with DarcySolver(spec.n, spec.solver_options(), spec.petsc_fallbacks) as solver:
        for rng in rngs:
            a = coefficient(spec, rng)
            a_list.append(a)
            u_list.append(solver.solve(a, spec.f))
    return {"a": np.stack(a_list).astype(np.float32), "u": np.stack(u_list)}

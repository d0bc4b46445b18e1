"""1D diffusion-sorption (PDEBench; PI-HC-MoE, Chalapathi et al. ICLR 2024), integrated by PETSc TS.

    u_t = D / R(u) u_xx,   R(u) = 1 + C n_f u^(n_f - 1),   C = ((1 - phi) / phi) rho_s k,   x in [0, 1]
    u(0, t) = 1 (Dirichlet),   u(1, t) = -D u_x(1, t) (Cauchy: the outflow flux -D u_x equals u)

``R`` is the Freundlich retardation factor; multiplying by it gives the conservation law
``d/dt S(u) = D u_xx`` for the total (dissolved + sorbed) concentration ``S(u) = u + C u^n_f``, so
``d/dt int S dx = D u_x(1) - D u_x(0)``. ``n_f - 1 < 0`` makes ``u^(n_f - 1)`` singular at u = 0;
as in PDEBench's ``sim_diff_sorp.py`` (which evaluates ``(c + 1e-6)^(n_f - 1)``) every power is taken
of ``max(u, 0) + u_floor`` (``u_floor = 1e-6``), and ``S`` uses the same shift so that
``S'(u) = R(u)`` holds exactly (see :func:`storage`).

Sign of the right condition: PDEBench's paper writes ``u(1, t) = D u_x(1, t)``, but its generator
sets the ghost value to ``D (c[-2] - c[-1]) / dx = -D u_x``; only the latter keeps u in [0, 1]
(steady state ``1 - x / (1 + D)``; the printed sign gives ``1 - x / (1 - D) < 0`` at x = 1). We use
``u(1) = -D u_x(1)``.

Space: cell-centred finite volumes on n cells of width ``h = 1/n``, centres ``x_i = (i + 1/2) h``
(PDEBench's layout). Each row is ``R(u_i) du_i/dt = D (u_{i-1} - 2 u_i + u_{i+1}) / h^2`` with
ghost cells placed so the boundary conditions hold at the faces x = 0 and x = 1 to second order:

- left, ``(u_{-1} + u_0) / 2 = 1``: ``u_{-1} = 2 - u_0``;
- right, ``(u_{n-1} + u_n) / 2 = -D (u_n - u_{n-1}) / h``: ``u_n = g u_{n-1}``,
  ``g = (2D - h) / (2D + h)``; the outflow is ``u(1) = 2D u_{n-1} / (2D + h)`` (the face flux of
  a resistance ``h / (2D)`` from the centre to the face in series with the unit transfer one).

The discrete total ``sum_i h S(u_i)`` changes exactly by the discrete face fluxes
(:func:`boundary_fluxes`). Both ghost rules are exact for linear functions, so the discrete steady
state of the linear limit (``k = 0``) is ``1 - x_i / (1 + D)`` to round-off. (PDEBench instead puts
the value 1 in the ghost cell, i.e. at x = -h/2, a first-order boundary.)

Time: a PETSc TS (options from the spec; an adaptive L-stable implicit Runge-Kutta by default,
see :class:`data.spec.DiffusionSorptionSpec`) with the analytic tridiagonal Jacobian of the RHS.

Arrays per split: ``u`` of shape ``(N, n_times + 1, n)``, axes ``sample, time, x``; shared: ``t``
of shape ``(n_times + 1,)`` and the cell centres ``x`` of shape ``(n,)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import scipy.sparse as sp

from ..errors import InputError
from ..petsc import TimeStepper, petsc
from ..spec import DiffusionSorptionSpec

AXES = {"u": "sample,time,x", "t": "time", "x": "x"}

#: the Dirichlet value at x = 0 (concentrations are relative to the solubility, PDEBench's ``sol``)
U_LEFT = 1.0


def _spec_default(name: str) -> float:
    return float(DiffusionSorptionSpec.model_fields[name].default)


@dataclass(frozen=True)
class SorptionParams:
    """The physical coefficients of the PDE: the fields of :class:`DiffusionSorptionSpec` that
    define it, with the same names and the spec's defaults (the one place their values and
    allowed ranges are written). Every user of the coefficients (this module, the hard-constraint
    PDE :class:`operators.hard.pdes.DiffusionSorption`) takes them from here."""

    D: float = _spec_default("D")
    phi: float = _spec_default("phi")
    rho_s: float = _spec_default("rho_s")
    k: float = _spec_default("k")
    n_f: float = _spec_default("n_f")
    u_floor: float = _spec_default("u_floor")

    @classmethod
    def of(cls, p: SorptionParams | DiffusionSorptionSpec) -> SorptionParams:
        if isinstance(p, SorptionParams):
            return p
        return cls(**{f.name: float(getattr(p, f.name)) for f in fields(cls)})

    @property
    def C(self) -> float:
        """The sorption capacity ``((1 - phi) / phi) rho_s k`` (dimensionless)."""
        return (1.0 - self.phi) / self.phi * self.rho_s * self.k


def cell_centres(n: int) -> np.ndarray:
    """Cell centres ``(i + 1/2) / n``, shape ``(n,)``."""
    return (np.arange(n) + 0.5) / n


def output_times(spec: DiffusionSorptionSpec) -> np.ndarray:
    return np.linspace(0.0, spec.t_final, spec.n_times + 1)


def _shifted(u: np.ndarray, p: SorptionParams) -> np.ndarray:
    return np.maximum(u, 0.0) + p.u_floor


def retardation(u: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> np.ndarray:
    """``R(u) = 1 + C n_f (max(u, 0) + u_floor)^(n_f - 1)``, elementwise, same shape as ``u``."""
    p = SorptionParams.of(params)
    return 1.0 + p.C * p.n_f * _shifted(np.asarray(u, dtype=np.float64), p) ** (p.n_f - 1.0)


def retardation_derivative(u: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> np.ndarray:
    """``dR/du`` elementwise (0 where u < 0, where R is constant)."""
    p = SorptionParams.of(params)
    u = np.asarray(u, dtype=np.float64)
    d = p.C * p.n_f * (p.n_f - 1.0) * _shifted(u, p) ** (p.n_f - 2.0)
    return np.where(u > 0, d, 0.0)


def storage(u: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> np.ndarray:
    """Total concentration ``S(u) = u + C ((max(u, 0) + u_floor)^n_f - u_floor^n_f)``, elementwise:
    dissolved plus sorbed, with ``S'(u) = R(u)`` exactly (for u >= 0), so ``S(u)_t = D u_xx``."""
    p = SorptionParams.of(params)
    u = np.asarray(u, dtype=np.float64)
    return u + p.C * (_shifted(u, p) ** p.n_f - p.u_floor**p.n_f)


def _ghost_factor(n: int, D: float) -> float:
    h = 1.0 / n
    return (2.0 * D - h) / (2.0 * D + h)


def _second_difference(u: np.ndarray, D: float) -> np.ndarray:
    """``u_{i-1} - 2 u_i + u_{i+1}`` with both ghost cells, shape of ``u`` (``(..., n)``)."""
    n = u.shape[-1]
    pad = np.concatenate([2.0 * U_LEFT - u[..., :1], u, _ghost_factor(n, D) * u[..., -1:]], axis=-1)
    return pad[..., :-2] - 2.0 * u + pad[..., 2:]


def rhs(u: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> np.ndarray:
    """The semi-discrete right-hand side ``du/dt = D / (R(u) h^2) (u_{i-1} - 2 u_i + u_{i+1})``.

    ``u``: cell values, shape ``(..., n)`` (leading batch axes allowed); returns the same shape.
    """
    p = SorptionParams.of(params)
    u = np.asarray(u, dtype=np.float64)
    n = u.shape[-1]
    return p.D * n**2 * _second_difference(u, p.D) / retardation(u, p)


def _stencil_bands(n: int, D: float) -> np.ndarray:
    """The matrix of :func:`_second_difference` (without the constant ``2 U_LEFT`` in row 0) as
    bands, shape ``(n, 3)``: row i holds the coefficients of ``u_{i-1}, u_i, u_{i+1}`` (the
    entries outside the matrix, ``[0, 0]`` and ``[n-1, 2]``, are zero)."""
    bands = np.tile([1.0, -2.0, 1.0], (n, 1))
    bands[0, 0] = bands[-1, 2] = 0.0
    bands[0, 1] = -3.0
    bands[-1, 1] = -2.0 + _ghost_factor(n, D)
    return bands


def _tridiagonal_pattern(n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr, indices)`` of an ``n x n`` tridiagonal matrix, rows sorted; its data array
    is ``bands.ravel()[1:-1]`` for bands laid out as in :func:`_stencil_bands`."""
    counts = np.full(n, 3)
    counts[0] = counts[-1] = 2
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = (np.arange(n)[:, None] + np.arange(-1, 2)[None, :]).ravel()[1:-1]
    return indptr, indices


def _jacobian_bands(u: np.ndarray, p: SorptionParams) -> np.ndarray:
    """Bands (layout of :func:`_stencil_bands`) of ``d rhs / du`` at ``u`` (shape ``(n,)``):
    ``diag(D / (R h^2)) L - diag(D L(u) R'(u) / (R^2 h^2))``."""
    n = u.shape[0]
    R = retardation(u, p)
    scale = p.D * n**2 / R
    bands = _stencil_bands(n, p.D) * scale[:, None]
    bands[:, 1] -= scale * _second_difference(u, p.D) * retardation_derivative(u, p) / R
    return bands


def jacobian(u: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> sp.csr_matrix:
    """``d rhs / du`` at ``u`` (shape ``(n,)``): tridiagonal CSR of shape ``(n, n)``."""
    u = np.asarray(u, dtype=np.float64)
    n = u.shape[0]
    indptr, indices = _tridiagonal_pattern(n)
    return sp.csr_matrix((_jacobian_bands(u, SorptionParams.of(params)).ravel()[1:-1], indices, indptr), shape=(n, n))


def boundary_fluxes(u: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> tuple[np.ndarray, np.ndarray]:
    """The discrete face values ``(D u_x(0), D u_x(1))`` of a state ``u`` of shape ``(..., n)``,
    each of shape ``(...)``: ``d/dt sum_i h S(u_i) = D u_x(1) - D u_x(0)`` exactly."""
    p = SorptionParams.of(params)
    u = np.asarray(u, dtype=np.float64)
    n = u.shape[-1]
    h = 1.0 / n
    left = 2.0 * p.D * (u[..., 0] - U_LEFT) / h
    right = -2.0 * p.D * u[..., -1] / (2.0 * p.D + h)
    return left, right


def total_mass(u: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> np.ndarray:
    """``int_0^1 S(u) dx`` by the midpoint rule, shape ``(...)`` for ``u`` of shape ``(..., n)``."""
    return storage(u, params).mean(axis=-1)


def residual(t: np.ndarray, U: np.ndarray, params: SorptionParams | DiffusionSorptionSpec) -> np.ndarray:
    """PDE residual of a stored trajectory: ``S(u)_t - D u_xx`` at the interior output times,
    time derivative by central differences (second order for equal spacing), ``u_xx`` by the
    discrete operator with its ghost cells. ``U`` of shape ``(..., T, n)``, ``t`` of shape ``(T,)``;
    returns shape ``(..., T - 2, n)``. Small (O(dt^2 + h^2)) for a solution of the PDE."""
    p = SorptionParams.of(params)
    t = np.asarray(t, dtype=np.float64)
    S = storage(U, p)
    dSdt = (S[..., 2:, :] - S[..., :-2, :]) / (t[2:] - t[:-2])[:, None]
    n = U.shape[-1]
    return dSdt - p.D * n**2 * _second_difference(np.asarray(U, dtype=np.float64)[..., 1:-1, :], p.D)


def linear_steady_state(x: np.ndarray, D: float) -> np.ndarray:
    """The steady state of the linear limit (and of every ``k``): ``u = 1 - x / (1 + D)``."""
    return U_LEFT * (1.0 - np.asarray(x, dtype=np.float64) / (1.0 + D))


class DiffusionSorptionTS(TimeStepper):
    """One PETSc TS for the semi-discrete system on ``n`` cells, reused across initial conditions."""

    def __init__(
        self, n: int, params: SorptionParams | DiffusionSorptionSpec, petsc_options: Mapping[str, str] | None = None
    ):
        PETSc = petsc()
        super().__init__(
            {**DiffusionSorptionSpec.model_construct().default_petsc_options(), **(petsc_options or {})},
            stem="sciflow_ds",
        )
        if n < 2:
            raise InputError(f"need at least 2 cells, got {n}")
        self.n, self.params = n, SorptionParams.of(params)
        indptr, indices = _tridiagonal_pattern(n)
        self._indptr, self._indices = indptr.astype(PETSc.IntType), indices.astype(PETSc.IntType)
        self._J = PETSc.Mat().createAIJ(size=(n, n), nnz=3, comm=PETSc.COMM_SELF)
        self._J.setValuesCSR(self._indptr, self._indices, _stencil_bands(n, self.params.D).ravel()[1:-1])
        self._J.assemble()
        self.u = self._J.createVecRight()
        ts = self.ts
        ts.setProblemType(PETSc.TS.ProblemType.NONLINEAR)
        ts.setRHSFunction(self._rhs, self.u.duplicate())
        ts.setRHSJacobian(self._jac, self._J, self._J)
        self.configure()

    def _rhs(self, ts, t, u, F) -> None:
        F.setArray(rhs(u.getArray(readonly=True), self.params))

    def _jac(self, ts, t, u, J, P) -> None:
        bands = _jacobian_bands(u.getArray(readonly=True), self.params)
        P.setValuesCSR(self._indptr, self._indices, bands.ravel()[1:-1])
        P.assemble()  # J is P; TS shifts/scales it in place for the stages, so every entry is rewritten

    def integrate(self, u0: np.ndarray, times: np.ndarray, dt0: float | None = None) -> np.ndarray:
        """States at ``times`` (``times[0]``: the time of ``u0``), shape ``(len(times), n)``.

        ``dt0``: first TS step (default 1e-4 of the first output interval: the boundary layer at
        x = 0 is resolved first, the adaptive controller then grows the step)."""
        u0 = np.asarray(u0, dtype=np.float64)
        if u0.shape != (self.n,):
            raise InputError(f"u0 has shape {u0.shape}, expected {(self.n,)}")
        times = np.asarray(times, dtype=np.float64)
        if times.ndim != 1 or times.size < 2:
            raise InputError("times must be a 1D array of at least two times")
        dt = dt0 if dt0 is not None else 1e-4 * float(times[1] - times[0])
        return self.trajectory(self.u, u0, times, dt)


def simulate(
    u0: np.ndarray | float,
    params: SorptionParams | DiffusionSorptionSpec,
    times: np.ndarray | None = None,
    n: int | None = None,
    petsc_options: Mapping[str, str] | None = None,
    dt0: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate one initial condition.

    Args:
        u0: cell values, shape ``(n,)`` (the grid is ``len(u0)`` cells), or a number: PDEBench's
            constant level on ``n`` cells (``n`` defaults to ``spec.n``).
        params: a :class:`DiffusionSorptionSpec` (its coefficients, output times and
            ``petsc_options`` are used) or :class:`SorptionParams`.
        times: output times (default: the spec's ``linspace(0, t_final, n_times + 1)``).
        petsc_options: overrides, merged over the family defaults and the spec's options.

    Returns:
        ``(t, U)``: ``t`` of shape ``(T,)``, ``U`` of shape ``(T, n)`` (``U[0] = u0``).
    """
    spec = params if isinstance(params, DiffusionSorptionSpec) else None
    if np.ndim(u0) == 0:
        if n is None:
            if spec is None:
                raise InputError("u0 is a number (a constant level): give n, the number of cells, or a spec")
            n = spec.n
        u0 = np.full(n, float(u0))
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim != 1:
        raise InputError(f"u0 must have shape (n,), got {u0.shape}")
    if times is None:
        if spec is None:
            raise InputError("times are required with SorptionParams")
        times = output_times(spec)
    options = {**(spec.solver_options() if spec is not None else {}), **(petsc_options or {})}
    times = np.asarray(times, dtype=np.float64)
    with DiffusionSorptionTS(u0.shape[0], params, options) as integ:
        return times, integ.integrate(u0, times, dt0)


def initial_level(spec: DiffusionSorptionSpec, rng: np.random.Generator) -> float:
    """PDEBench's initial condition: one level ``c ~ U(ic_low, ic_high)``; ``u(x, 0) = c``."""
    return float(rng.uniform(spec.ic_low, spec.ic_high))


def shared_arrays(spec: DiffusionSorptionSpec) -> dict[str, np.ndarray]:
    return {"t": output_times(spec), "x": cell_centres(spec.n)}


def sample_arrays(spec: DiffusionSorptionSpec, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
    t = output_times(spec)
    with DiffusionSorptionTS(spec.n, spec, spec.solver_options()) as integ:
        trajs = [integ.integrate(np.full(spec.n, initial_level(spec, rng)), t) for rng in rngs]
    return {"u": np.stack(trajs)}

"""Linear diffusion ``u_t = kappa lap u`` with ``u = 0`` on the boundary, integrated by PETSc TS.

Space: the cell-centred Laplacian of ``grid.fv_operator`` (1D or 2D). Time: an implicit PETSc TS
(Crank-Nicolson by default; any ``ts_type`` through the options, e.g. ``beuler``) with a fixed
step, hitting each output time exactly.

Arrays written per split: ``u`` of shape ``(N, n_times + 1, n[, n])``, axes
``sample, time, [y,] x``; shared: ``t`` of shape ``(n_times + 1,)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from ..petsc import TimeStepper, petsc
from ..spec import HeatSpec
from .grid import cell_centres, dmda_matrix, fv_operator
from .random_fields import grf

AXES = {"u": "sample,time,[y,]x", "t": "time"}


class HeatIntegrator(TimeStepper):
    """One PETSc TS for the semi-discrete system ``du/dt = -kappa A u``, reused across samples."""

    def __init__(self, n: int, dim: int, kappa: float, petsc_options: Mapping[str, str] | None = None):
        PETSc = petsc()
        super().__init__({**HeatSpec.model_construct().default_petsc_options(), **(petsc_options or {})})
        self.shape = (n,) * dim
        # _J0 stays pristine; TS shifts/scales the Jacobian matrix _J in place each step
        self._J0, self._da = dmda_matrix(-kappa * fv_operator(np.ones(self.shape)), n, dim)
        self._J = self._J0.duplicate(copy=True)
        ts = self.ts
        ts.setDM(self._da)
        ts.setProblemType(PETSc.TS.ProblemType.LINEAR)
        ts.setRHSFunction(self._rhs, self._J0.createVecLeft())
        ts.setRHSJacobian(self._jac, self._J, self._J)
        self.configure()
        self.u = self._J0.createVecRight()

    def _rhs(self, ts, t, u, F) -> None:
        self._J0.mult(u, F)

    def _jac(self, ts, t, u, J, P) -> None:
        self._J0.copy(J, structure=petsc().Mat.Structure.SAME_NONZERO_PATTERN)

    def integrate(self, u0: np.ndarray, times: np.ndarray, dt: float) -> np.ndarray:
        """Trajectory at ``times`` (``times[0]`` = initial time), shape ``(len(times), *u0.shape)``."""
        u0 = np.asarray(u0, dtype=np.float64)
        if u0.shape != self.shape:
            raise InputError(f"u0 has shape {u0.shape}, expected {self.shape}")
        return self.trajectory(self.u, u0, times, dt).reshape(len(times), *self.shape)


def output_times(spec: HeatSpec) -> np.ndarray:
    return np.linspace(0.0, spec.t_final, spec.n_times + 1)


def simulate(
    u0: np.ndarray,
    kappa: float,
    t_final: float,
    n_times: int = 10,
    steps_per_output: int = 4,
    petsc_options: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate one initial condition ``u0`` (shape ``(n,)`` or ``(n, n)``, cell values).

    Returns ``(t, U)``: ``t`` of shape ``(n_times + 1,)`` and ``U`` of shape ``(n_times + 1, *u0.shape)``.
    """
    u0 = np.asarray(u0, dtype=np.float64)
    if u0.ndim not in (1, 2) or len(set(u0.shape)) != 1:
        raise InputError(f"u0 must have shape (n,) or (n, n), got {u0.shape}")
    t = np.linspace(0.0, t_final, n_times + 1)
    with HeatIntegrator(u0.shape[0], u0.ndim, kappa, petsc_options) as integ:
        return t, integ.integrate(u0, t, t_final / (n_times * steps_per_output))


def shared_arrays(spec: HeatSpec) -> dict[str, np.ndarray]:
    return {"t": output_times(spec)}


def sample_arrays(spec: HeatSpec, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
    t = output_times(spec)
    dt = spec.t_final / (spec.n_times * spec.steps_per_output)
    window = np.prod([np.sin(np.pi * c) for c in cell_centres(spec.n, spec.dim)], axis=0)
    trajs = []
    with HeatIntegrator(spec.n, spec.dim, spec.kappa, spec.solver_options()) as integ:
        for rng in rngs:
            u0 = grf(rng, spec.n, spec.dim, alpha=2.5, tau=5.0) * window  # compatible with u = 0
            u0 /= np.abs(u0).max()
            trajs.append(integ.integrate(u0, t, dt))
    return {"u": np.stack(trajs)}

"""Lotka-Volterra trajectories integrated by PETSc TS: the neural-ODE surrogate data.

    x' = alpha x - beta x y,    y' = delta x y - gamma y

An explicit adaptive Runge-Kutta TS (Dormand-Prince 5(4) by default, tight tolerances),
stopping exactly at each output time. Initial states uniform in ``[y0_low, y0_high]^2``.

Arrays per split: ``u`` of shape ``(N, n_times + 1, 2)``, axes ``sample, time, species``;
shared: ``t`` of shape ``(n_times + 1,)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from ..petsc import TimeStepper, petsc
from ..spec import LotkaVolterraSpec

AXES = {"u": "sample,time,species", "t": "time"}


class LotkaVolterraTS(TimeStepper):
    """One PETSc TS reused across initial conditions."""

    def __init__(self, params: tuple[float, float, float, float], options: Mapping[str, str]):
        PETSc = petsc()
        super().__init__(options, stem="sciflow_lv")
        self.a, self.b, self.g, self.d = params
        self.u = PETSc.Vec().createSeq(2, comm=PETSc.COMM_SELF)
        self.ts.setProblemType(PETSc.TS.ProblemType.NONLINEAR)
        self.ts.setRHSFunction(self._rhs, self.u.duplicate())
        self.configure()

    def _rhs(self, ts, t, u, F) -> None:
        x, y = u.getArray(readonly=True)
        F.setArray([self.a * x - self.b * x * y, self.d * x * y - self.g * y])

    def integrate(self, u0: np.ndarray, times: np.ndarray) -> np.ndarray:
        """States at ``times`` (``times[0]`` is the initial time), shape ``(len(times), 2)``."""
        u0 = np.asarray(u0, dtype=np.float64)
        if u0.shape != (2,):
            raise InputError(f"u0 must be 2 numbers, got shape {u0.shape}")
        return self.trajectory(self.u, u0, times, float(times[1] - times[0]) / 10)


def output_times(spec: LotkaVolterraSpec) -> np.ndarray:
    return np.linspace(0.0, spec.t_final, spec.n_times + 1)


def shared_arrays(spec: LotkaVolterraSpec) -> dict[str, np.ndarray]:
    return {"t": output_times(spec)}


def sample_arrays(spec: LotkaVolterraSpec, rngs: list[np.random.Generator]) -> dict[str, np.ndarray]:
    t = output_times(spec)
    params = (spec.alpha, spec.beta, spec.gamma, spec.delta)
    with LotkaVolterraTS(params, spec.solver_options()) as lv:
        trajs = [lv.integrate(rng.uniform(spec.y0_low, spec.y0_high, 2), t) for rng in rngs]
    return {"u": np.stack(trajs)}

"""Why AdaSketch-Newton's Kaczmarz rounds run out of steps: the accuracy Algorithm 1 demands of
each KKT solve against what randomized Kaczmarz can deliver, along newton-sqp's iterates.

At iterate ``k`` (``B``, ``K`` as :mod:`.adasketch` builds them, ``mu``, ``nu`` at their initial
values, ``delta`` at its bound ``delta_trial`` capped by ``delta0``, ``theta = 1``):

* ``accuracy``: the relative residual ``||r|| / ||b||`` the round must reach,
  ``delta / (||K||_F psi)`` (step 2 of Algorithm 1);
* ``kaczmarz_factor``: ``||K||_F^2 / sigma_min(K)^2``, the factor in Kaczmarz's expected rate
  (:func:`.kkt.kaczmarz_condition`);
* ``expected_steps``: ``kaczmarz_factor ln(1 / accuracy)``, the expected steps to that accuracy
  (the error contracts by ``1 - 1/factor`` per step in expectation; the residual is bounded by
  ``||K||`` times the error, so this is the order of the count, not a bound).

``python -m solvers.optim.diagnose hs046 hs049`` prints the table.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from .adasketch import ALParams, accuracy_constants, delta_trial
from .derivatives import AutogradDerivatives
from .kkt import frobenius, hessian_shift, kaczmarz_condition, kkt_matrix, shifted
from .minimize import minimize_eq
from .minimize_base import State, min_eig_GGt
from .problems import get


def accuracy_demand(
    problem: str,
    iterations: int = 30,
    tol: float = 1e-6,
    params: ALParams = ALParams(),  # noqa: B008
) -> list[dict]:
    """One row per newton-sqp iterate ``k = 1..iterations`` (fewer once it converges to ``tol``) of
    the HS/BT ``problem``: ``nit``, ``kkt``, ``accuracy``, ``kaczmarz_factor``, ``expected_steps``
    (module docstring) and ``max_inner``, al-sketch's step cap per accuracy round."""
    p = get(problem)
    d = AutogradDerivatives(p.f, p.c, np.asarray(p.x0, dtype=float))
    P = params
    rows = []
    for k in range(1, iterations + 1):
        r = minimize_eq(p.f, p.c, p.x0, method="newton-sqp", tol=tol, max_iter=k)
        s = State(d, r.x, r.lam)
        B = shifted(s.H, hessian_shift(s.H, s.G, P.xi_B))
        psi, ups = accuracy_constants(B, s.G, frobenius(s.H), min_eig_GGt(s.G), P)
        delta = max(min(P.delta0, delta_trial(P, P.mu0, P.nu0, psi, ups)), P.delta_floor)
        K = kkt_matrix(B, s.G)
        accuracy = P.theta * delta / (frobenius(K) * psi)
        factor = kaczmarz_condition(K)
        rows.append(
            {
                "problem": problem,
                "nit": r.nit,
                "kkt": float(f"{s.kkt:.3g}"),
                "accuracy": float(f"{accuracy:.3g}"),
                "kaczmarz_factor": float(f"{factor:.3g}"),
                "expected_steps": float(f"{factor * math.log(1 / accuracy):.3g}"),
                "max_inner": P.max_inner,
            }
        )
        if r.converged or r.nit < k:
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    for name in argv if argv is not None else sys.argv[1:]:
        for row in accuracy_demand(name):
            print("  ".join(f"{k} {v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

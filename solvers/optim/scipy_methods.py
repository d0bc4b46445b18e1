"""SciPy's constrained minimizers as baselines of ``minimize_eq``: ``slsqp`` and ``trust-constr``."""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from .derivatives import Derivatives, least_squares_multipliers
from .minimize_base import MinimizeArgs, OptimizeResult, State, finish


def slsqp(args: MinimizeArgs, **_: object) -> OptimizeResult:
    """SciPy's SLSQP from ``args.x`` (``args.lam`` is not used: SciPy starts its own multipliers)."""
    return _minimize(args.d, args.x, "slsqp", args.tol, args.max_iter, args.max_seconds)


def trust_constr(args: MinimizeArgs, **_: object) -> OptimizeResult:
    """SciPy's trust-constr from ``args.x`` (``args.lam`` is not used: SciPy starts its own multipliers)."""
    return _minimize(args.d, args.x, "trust-constr", args.tol, args.max_iter, args.max_seconds)


def _minimize(
    d: Derivatives, x: np.ndarray, method: str, tol: float, max_iter: int, max_seconds: float | None
) -> OptimizeResult:
    """SciPy's SLSQP / trust-constr with exact first (and, for trust-constr, second) derivatives.
    The KKT residual is measured at the returned point with least-squares multipliers (the most
    favourable multipliers for that point; the other methods report their own iterate's)."""
    from scipy.optimize import NonlinearConstraint, minimize

    t0 = time.perf_counter()
    out_of_time = [False]

    def budget(intermediate_result):  # SciPy stops on StopIteration from a new-style callback
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            out_of_time[0] = True
            raise StopIteration

    if method == "slsqp":
        cons = [{"type": "eq", "fun": d.c, "jac": lambda x: _dense(d.jac(x))}]
        res = minimize(
            d.f,
            x,
            jac=d.grad,
            constraints=cons,
            method="SLSQP",
            callback=budget,
            options={"maxiter": max_iter, "ftol": 1e-12},
        )
        inner = 0
    else:
        zero = np.zeros(d.m)
        hess_c = lambda x, v: d.hess_lag(x, v) - d.hess_lag(x, np.zeros_like(v))  # noqa: E731
        con = NonlinearConstraint(d.c, zero, zero, jac=d.jac, hess=hess_c)
        res = minimize(
            d.f,
            x,
            jac=d.grad,
            hess=lambda x: d.hess_lag(x, np.zeros(d.m)),
            constraints=[con],
            method="trust-constr",
            callback=budget,
            options={"maxiter": max_iter, "gtol": tol, "xtol": 1e-14},
        )
        inner = int(getattr(res, "cg_niter", 0))
    xs = np.asarray(res.x, dtype=np.float64)
    s = State(d, xs, least_squares_multipliers(d.grad(xs), d.jac(xs)), with_hessian=False)
    message = f"time budget of {max_seconds} s used" if out_of_time[0] else f"SciPy: {res.message}"
    return finish(s, method, t0, int(getattr(res, "nit", 0)), tol, message, inner, [])


def _dense(A):
    return A.toarray() if sp.issparse(A) else A


__all__ = ["slsqp", "trust_constr"]

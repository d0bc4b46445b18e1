"""The implicit-differentiation baseline of ``bilevel(..., method="implicit")`` (cvxpylayers).

``method="implicit"``: projected gradient descent on ``Phi(x) = F(x, y*(x))``, with ``y*(x)`` and
its derivative from a cvxpylayers layer (convex, DPP lower level; see :class:`CvxpyLowerLevel`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .bilevel_base import (
    DTYPE,
    BilevelArgs,
    BilevelInputError,
    BilevelResult,
    CvxpyLowerLevel,
    Progress,
    Tensor,
    check_scalar,
    grads,
    positive,
)


def implicit(args: BilevelArgs) -> BilevelResult:
    """Projected hypergradient descent (called by :func:`~.bilevel.bilevel`, which documents the
    arguments and checks the common ones); ``f``, ``g``, ``h`` are not used (``lower`` is the
    lower level)."""
    if args.lower is None:
        raise BilevelInputError('method="implicit" needs lower=CvxpyLowerLevel(...)')
    return _implicit(
        args.F,
        args.x0,
        args.y0,
        args.lower,
        args.project_x,
        args.max_iter,
        args.tol,
        positive("lr", args.lr),
        args.log_every,
        args.monitor,
    )


def make_layer(lower: CvxpyLowerLevel, x0: Tensor, m: int):
    """Validate ``lower`` against x0 (shape ``(n,)``) and y's size m; return
    ``(CvxpyLayer, params_of_x)``. Raises BilevelInputError with the reason cvxpylayers would
    refuse the problem (not DCP / not DPP / parameter or variable mismatch / shape mismatch)."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    prob = lower.problem
    if not isinstance(prob, cp.Problem):
        raise BilevelInputError(f"lower.problem must be a cvxpy.Problem, got {type(prob).__name__}")
    if not prob.is_dcp():
        raise BilevelInputError("lower.problem is not convex (not DCP); cvxpylayers needs a convex lower level")
    if not prob.is_dpp():
        raise BilevelInputError(
            "lower.problem is not DPP: parameters must enter the problem affinely (or multiply "
            "parameter-free expressions); reparametrize, e.g. exp(c) * xi**2 as "
            "sum_squares(multiply(p, xi)) with p = exp(c / 2)"
        )
    params, variables = list(lower.parameters), list(lower.variables)
    if set(params) != set(prob.parameters()):
        raise BilevelInputError("lower.parameters must be exactly lower.problem.parameters()")
    if not set(variables) <= set(prob.variables()):
        raise BilevelInputError("lower.variables must be variables of lower.problem")
    size = sum(int(np.prod(v.shape)) for v in variables)
    if size != m:
        raise BilevelInputError(f"lower.variables have {size} entries in all but y0 has {m}")
    params_of_x = lower.params_of_x or (lambda xv: (xv,))
    vals = tuple(params_of_x(x0))
    if len(vals) != len(params):
        raise BilevelInputError(f"params_of_x returned {len(vals)} tensors for {len(params)} parameters")
    for par, v in zip(params, vals, strict=False):
        if tuple(v.shape) != tuple(par.shape):
            raise BilevelInputError(
                f"params_of_x(x0) gives shape {tuple(v.shape)} for parameter {par.name()} of shape {par.shape}"
            )
        if not torch.isfinite(v).all():
            raise BilevelInputError(f"params_of_x(x0) is not finite for parameter {par.name()}")
    solver_args = dict(lower.solver_args or {})
    if lower.solver is None:
        solver_args.setdefault("solve_method", "Clarabel")
    try:
        layer = CvxpyLayer(prob, parameters=params, variables=variables, solver=lower.solver, solver_args=solver_args)
    except (ValueError, AssertionError) as err:
        raise BilevelInputError(f"cvxpylayers refused the lower level: {err}") from err
    return layer, params_of_x


def _implicit(F, x, y0, lower, project_x, max_iter, tol, lr, log_every, monitor) -> BilevelResult:
    """Projected gradient descent ``x+ = Proj_X(x - lr grad Phi(x))`` on ``Phi(x) = F(x, y*(x))``;
    ``y*(x)`` and ``dy*/dx`` come from cvxpylayers (implicit differentiation of the LL KKT
    conditions). One LL solve plus one backward pass per iteration."""
    layer, params_of_x = make_layer(lower, x, y0.numel())
    project_x = project_x or (lambda v: v)
    x_start = x
    x = torch.as_tensor(project_x(x), dtype=DTYPE).detach()
    if x.shape != x_start.shape or not torch.isfinite(x).all():
        raise BilevelInputError("project_x(x0) must return a finite vector of x0's shape")

    def solve_ll(xv: Tensor) -> Tensor:
        sols = layer(*params_of_x(xv))
        return torch.cat([s.reshape(-1) for s in sols]).to(DTYPE)

    y = y0
    run, k = Progress(max_iter, log_every, monitor), 0
    for k in range(max_iter):
        xr = x.detach().requires_grad_(True)
        try:
            y = solve_ll(xr)
        except Exception as err:  # solver failure: report, never mark converged
            run.stop(k, f"lower-level solve failed at iteration {k}: {err}")
            break
        Fv = F(xr, y)
        if k == 0:
            check_scalar("F", Fv, "at (x0, y*(x0))")
        (gx,) = grads(Fv, [xr])
        x_new = torch.as_tensor(project_x(x - lr * gx), dtype=DTYPE).detach()
        Fv = Fv.detach()
        if not torch.isfinite(x_new).all() or not math.isfinite(float(Fv)):
            run.stop(k, f"non-finite iterate at iteration {k} (lr too large?)")
            break
        step = float(torch.linalg.vector_norm(x_new - x)) / (lr * (1 + float(torch.linalg.vector_norm(x))))
        x_prev, x, y = x, x_new, y.detach()
        done = step <= tol
        if run.due(k) or done:
            run.log(x_prev, y, k=k, F=float(Fv), step=step)
        if done:
            run.stop(k)
            break
    # y is y*(x) at the last x where the LL was solved; re-solve at the returned x.
    if not run.failed:
        try:
            with torch.no_grad():
                y = solve_ll(x)
        except Exception as err:
            run.stop(k, f"lower-level solve failed at the final x: {err}")
    return run.result("implicit", F, x, y.detach(), k)


__all__ = ["CvxpyLowerLevel", "implicit", "make_layer"]

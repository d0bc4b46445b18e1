"""The implicit-differentiation baseline of ``bilevel(..., method="implicit")`` (cvxpylayers).

``method="implicit"``: projected gradient descent on ``Phi(x) = F(x, y*(x))``, with ``y*(x)`` and
its derivative from a cvxpylayers layer (convex, DPP lower level; see :class:`CvxpyLowerLevel`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .bilevel_base import (
    DTYPE,
    BilevelInputError,
    BilevelResult,
    Monitor,
    Objective,
    Tensor,
    check_scalar,
    grads,
    log_row,
    positive,
)


@dataclass(frozen=True)
class CvxpyLowerLevel:
    """The lower level as a cvxpylayers-ready problem, for ``method="implicit"``.

    ``problem``: a convex, DPP ``cvxpy.Problem`` whose parameters are exactly ``parameters``.
    ``variables``: the cvxpy variables that make up y, in order; y is their flattened (C-order)
    concatenation, so it must match the ``y`` that F expects. ``params_of_x(x)`` maps the torch
    vector x to one tensor per parameter (differentiably; default: ``(x,)``, one parameter of
    x's shape). Reparametrize to stay DPP, e.g. ``exp(c_i) xi_i^2`` as
    ``sum_squares(multiply(p, xi))`` with ``p = exp(c / 2)``. ``solver``/``solver_args`` go to
    ``CvxpyLayer``; the default (diffcp) uses Clarabel, tolerances ``solver_args`` may tighten
    (e.g. ``tol_gap_abs``, ``tol_gap_rel``, ``tol_feas``).
    The LL solution must be unique for the derivative to exist (add a selection term if not).
    """

    problem: Any
    parameters: Sequence[Any]
    variables: Sequence[Any]
    params_of_x: Callable[[Tensor], Sequence[Tensor]] | None = None
    solver: str | None = None
    solver_args: Mapping[str, Any] | None = None


def implicit(
    F: Objective,
    f: Objective | None,
    g: Objective | None,
    x0: Tensor,
    y0: Tensor,
    *,
    max_iter: int,
    tol: float,
    log_every: int,
    monitor: Monitor | None,
    lower: CvxpyLowerLevel | None,
    project_x: Callable[[Tensor], Tensor] | None,
    lr: float,
    **_: object,
) -> BilevelResult:
    """Projected hypergradient descent from the checked start ``(x0, y0)`` (called by
    :func:`~.bilevel.bilevel`, which documents the arguments); ``f`` and ``g`` are not used
    (``lower`` is the lower level)."""
    if lower is None:
        raise BilevelInputError('method="implicit" needs lower=CvxpyLowerLevel(...)')
    return _implicit(F, x0, y0, lower, project_x, max_iter, tol, positive("lr", lr), log_every, monitor)


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

    history: list[dict[str, float]] = []
    monitor_s, converged, message, k = 0.0, False, "", 0
    y = y0
    t0 = time.perf_counter()
    for k in range(max_iter):
        xr = x.detach().requires_grad_(True)
        try:
            y = solve_ll(xr)
        except Exception as err:  # solver failure: report, never mark converged
            message = f"lower-level solve failed at iteration {k}: {err}"
            break
        Fv = F(xr, y)
        if k == 0:
            check_scalar("F", Fv, "at (x0, y*(x0))")
        (gx,) = grads(Fv, [xr])
        x_new = torch.as_tensor(project_x(x - lr * gx), dtype=DTYPE).detach()
        Fv = Fv.detach()
        if not torch.isfinite(x_new).all() or not math.isfinite(float(Fv)):
            message = f"non-finite iterate at iteration {k} (lr too large?)"
            break
        step = float(torch.linalg.vector_norm(x_new - x)) / (lr * (1 + float(torch.linalg.vector_norm(x))))
        x_prev, x, y = x, x_new, y.detach()
        done = step <= tol
        if k % log_every == 0 or done or k == max_iter - 1:
            monitor_s += log_row(history, monitor, x_prev, y, k=k, F=float(Fv), step=step)
        if done:
            converged, message = True, f"stopping rule met at iteration {k}"
            break
    else:
        message = f"max_iter={max_iter} reached"
    # y is y*(x) at the last x where the LL was solved; re-solve at the returned x.
    if converged or message.startswith("max_iter"):
        try:
            with torch.no_grad():
                y = solve_ll(x)
        except Exception as err:
            converged, message = False, f"lower-level solve failed at the final x: {err}"
    seconds = time.perf_counter() - t0 - monitor_s
    with torch.no_grad():
        F_end = float(F(x, y))
    return BilevelResult(
        x=x,
        y=y.detach(),
        F=F_end,
        nit=k + 1,
        converged=converged,
        seconds=seconds,
        method="implicit",
        history=history,
        message=message,
    )


__all__ = ["CvxpyLowerLevel", "implicit", "make_layer"]

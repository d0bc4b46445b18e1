"""Constrained bilevel optimization: LV-HBA and an implicit-differentiation baseline.

    bilevel(F, f, g, x0, y0, *, method="lv-hba"|"implicit", ...) -> BilevelResult

solves the (optimistic) bilevel problem

    min_{(x, y) in C}  F(x, y)   s.t.  y in argmin_{theta in Y} { f(x, theta) : g(x, theta) <= 0, h(x, theta) = 0 }

with the lower-level (LL) constraints coupling x and y.

``method="lv-hba"``: Algorithm 1 (LV-HBA) of W. Yao, C. Yu, S. Zeng, J. Zhang, "Constrained
Bi-Level Optimization: Proximal Lagrangian Value Function Approach and Hessian-free Algorithm",
ICLR 2024 (arXiv:2401.16164). The LL is replaced by the proximal Lagrangian value function

    v_gamma(x, y, z) = min_{theta in Y} max_{lam in Z} f(x, theta) + <lam, cons(x, theta)>
                       + ||theta - y||^2 / (2 gamma1) - ||lam - z||^2 / (2 gamma2)

(cons = (g, h); Z = R^l_+ for g and R^q for h), so the problem becomes the single-level
``min_{(x,y) in C, z in Z} F(x, y)  s.t.  f(x, y) - v_gamma(x, y, z) <= 0``. Each iteration takes
one projected gradient step on the saddle variables (theta, lam) of v_gamma and one on the
penalized objective ``F / c_k + f - v_gamma`` in (x, y, z), with ``c_k = c0 (k + 1)^p``,
``0 < p < 1/2``. Only first derivatives of F, f, g, h are used (Hessian-free).

``method="implicit"``: projected gradient descent on ``Phi(x) = F(x, y*(x))``, with ``y*(x)`` and
its derivative from a cvxpylayers layer (convex, DPP lower level; see :class:`CvxpyLowerLevel`).

Functions act on float64 torch vectors: ``x`` of shape ``(n,)``, ``y`` of shape ``(m,)``;
``F``, ``f`` return scalars, ``g`` a ``(l,)`` vector (feasible where ``<= 0``), ``h`` a ``(q,)``
vector (feasible where ``= 0``). ``project(x, y) -> (x, y)`` is the Euclidean projection onto C
(for LV-HBA the paper takes C inside the LL-feasible set ``{g(x, y) <= 0, h(x, y) = 0}``);
``project_theta(theta)`` onto Y.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

Tensor = torch.Tensor
Objective = Callable[[Tensor, Tensor], Tensor]
Projection = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Monitor = Callable[[Tensor, Tensor], Mapping[str, float]]

METHODS = ("lv-hba", "implicit")
DTYPE = torch.float64


@dataclass
class BilevelResult:
    """Outcome of one bilevel solve.

    ``x``, ``y``: final iterate (float64, shapes ``(n,)``, ``(m,)``); ``F``: upper objective there.
    ``converged``: the stopping rule of the method held (see :func:`bilevel`); False when
    ``max_iter`` ran out, an iterate became non-finite or the lower-level solver failed
    (``message`` says which). ``history``: one dict per logged iteration (``k``, ``F``, the
    residuals of the stopping rule, and whatever ``monitor`` returned). ``seconds``: wall time of
    the iterations, excluding ``monitor`` calls. LV-HBA also returns ``theta`` (proximal LL point),
    ``lam`` (LL multipliers, ``g`` entries first, those ``>= 0``) and ``z`` (their proximal anchor).
    """

    x: Tensor
    y: Tensor
    F: float
    nit: int
    converged: bool
    seconds: float
    method: str
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""
    theta: Tensor | None = None
    lam: Tensor | None = None
    z: Tensor | None = None


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


class BilevelInputError(ValueError):
    """Bad input to :func:`bilevel`: shapes, non-finite values, or a lower level that
    cvxpylayers cannot accept."""


# --------------------------------------------------------------------------- validation


def _vector(name: str, v) -> Tensor:
    t = torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v), dtype=DTYPE)
    if t.ndim != 1 or t.numel() == 0:
        raise BilevelInputError(f"{name} must be a non-empty 1-D vector, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise BilevelInputError(f"{name} has non-finite entries (nan/inf)")
    return t.clone()


def _positive(name: str, value: float, upper: float = math.inf) -> float:
    value = float(value)
    if not (0.0 < value < upper) or not math.isfinite(value):
        bound = f"(0, {upper})" if math.isfinite(upper) else "(0, inf)"
        raise BilevelInputError(f"{name} must be in {bound}, got {value}")
    return value


def _scalar_out(name: str, out, where: str) -> None:
    if not isinstance(out, Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise BilevelInputError(f"{name}(x, y) must return a scalar torch tensor, got {shape} {where}")
    if not torch.isfinite(out).all():
        raise BilevelInputError(f"{name}(x, y) is not finite {where}")


def _vector_out(name: str, out, where: str) -> int:
    if not isinstance(out, Tensor) or out.ndim != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise BilevelInputError(f"{name}(x, y) must return a 1-D torch tensor, got {shape} {where}")
    if not torch.isfinite(out).all():
        raise BilevelInputError(f"{name}(x, y) is not finite {where}")
    return out.numel()


def _check_projection(project: Projection, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    px, py = project(x, y)
    px, py = torch.as_tensor(px, dtype=DTYPE), torch.as_tensor(py, dtype=DTYPE)
    if px.shape != x.shape or py.shape != y.shape:
        raise BilevelInputError(
            f"project(x, y) must return shapes {tuple(x.shape)}, {tuple(y.shape)}; "
            f"got {tuple(px.shape)}, {tuple(py.shape)}"
        )
    if not (torch.isfinite(px).all() and torch.isfinite(py).all()):
        raise BilevelInputError("project(x, y) returned non-finite values")
    return px, py


def _grads(out: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    gs = torch.autograd.grad(out, inputs, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for gi, i in zip(gs, inputs)]


def _constraints(g: Objective | None, h: Objective | None) -> Objective | None:
    if g is None and h is None:
        return None
    if h is None:
        return g
    if g is None:
        return h
    return lambda x, y: torch.cat([g(x, y).reshape(-1), h(x, y).reshape(-1)])


# --------------------------------------------------------------------------- public entry point


def bilevel(
    F: Objective,
    f: Objective | None,
    g: Objective | None,
    x0,
    y0,
    *,
    method: str = "lv-hba",
    h: Objective | None = None,
    project: Projection | None = None,
    project_theta: Callable[[Tensor], Tensor] | None = None,
    lower: CvxpyLowerLevel | None = None,
    project_x: Callable[[Tensor], Tensor] | None = None,
    max_iter: int = 5000,
    tol: float = 1e-4,
    alpha: float = 0.01,
    beta: float = 0.01,
    eta: float = 0.01,
    gamma1: float = 10.0,
    gamma2: float = 10.0,
    c0: float = 1.0,
    p: float = 0.3,
    multiplier_bound: float = math.inf,
    lr: float = 0.1,
    log_every: int = 10,
    monitor: Monitor | None = None,
) -> BilevelResult:
    """Solve ``min F(x, y)`` s.t. ``y`` solves the constrained lower level (see module doc).

    Args:
        F, f: upper / lower objectives, ``(x (n,), y (m,)) -> scalar`` (torch, differentiable).
        g, h: LL inequality (``g <= 0``, ``(l,)``) / equality (``h = 0``, ``(q,)``) constraints,
            or None. For ``method="implicit"``, f, g, h are not used (``lower`` is the LL).
        x0, y0: starting point (1-D, finite). LV-HBA first projects it onto C.
        method: ``"lv-hba"`` or ``"implicit"``.
        project: Euclidean projection onto C (LV-HBA; default: no constraint).
        project_theta: projection onto Y for the proximal LL variable theta (default: identity).
        lower: :class:`CvxpyLowerLevel` (required for ``"implicit"``).
        project_x: projection onto the upper-level set of x (``"implicit"``; default identity).
        max_iter: iteration cap; hitting it returns ``converged=False``.
        tol: tolerance of the stopping rule (relative, see below).
        alpha, beta, eta: LV-HBA step sizes for (x, y), z, and (theta, lam).
        gamma1, gamma2: proximal parameters of v_gamma (theta and lam).
        c0, p: penalty schedule ``c_k = c0 (k + 1)^p`` (the paper needs ``0 < p < 1/2``).
        multiplier_bound: r in ``Z = [0, r]^l x [-r, r]^q`` (the reference code clips at r).
        lr: step of the implicit method's projected gradient descent.
        log_every: append to ``history`` every this many iterations (and at the last one).
        monitor: optional ``(x, y) -> {name: float}`` merged into logged history rows
            (e.g. distance to a known solution); its time is not counted in ``seconds``.

    Stopping rules (all quantities relative, ``|v|`` the 2-norm):
        LV-HBA, at iteration k (after the update), all of
          * stationarity: ``c_k |(x+, y+) - (x, y)| <= alpha tol (1 + |(x, y)|)``, i.e. the
            projected gradient of ``F + c_k (f - v_gamma)`` is below tol (a tol-KKT point of the
            value-function reformulation with multiplier c_k; scaling by c_k keeps the slow
            F-driven drift of the penalized iteration from passing as convergence);
          * LL optimality of y: ``|y - theta+| <= tol (1 + |y|)`` (y is its own proximal LL point);
          * inner saddle residual: ``|theta+ - theta| + |lam+ - lam| <= eta tol (1 + |theta| + |lam|)``;
          * LL feasibility: ``|max(g(x+, y+), 0)| + |h(x+, y+)| <= tol (1 + |y+|)``.
          The distance of a penalized stationary point to the bilevel solution is O(1 / c_k), which
          the LL-optimality test bounds; keep ``tol`` at the accuracy you want in y.
        implicit: ``|x+ - x| <= lr tol (1 + |x|)`` (projected hypergradient below tol) with every
          LL solve succeeding.

    Raises:
        BilevelInputError (a ValueError): mismatched shapes, non-finite inputs or outputs at the
        start, bad option values, an unknown method, or (implicit) a lower level that is not
        convex/DPP or does not match x0, y0.
    """
    if method not in METHODS:
        raise BilevelInputError(f"method must be one of {METHODS}, got {method!r}")
    if not callable(F):
        raise BilevelInputError("F must be callable (x, y) -> scalar tensor")
    x0, y0 = _vector("x0", x0), _vector("y0", y0)
    if int(max_iter) < 1:
        raise BilevelInputError(f"max_iter must be >= 1, got {max_iter}")
    if int(log_every) < 1:
        raise BilevelInputError(f"log_every must be >= 1, got {log_every}")
    _positive("tol", tol)
    if method == "implicit":
        if lower is None:
            raise BilevelInputError('method="implicit" needs lower=CvxpyLowerLevel(...)')
        return _implicit(F, x0, y0, lower, project_x, int(max_iter), tol, _positive("lr", lr),
                         int(log_every), monitor)
    if not callable(f):
        raise BilevelInputError("f must be callable (x, y) -> scalar tensor for LV-HBA")
    steps = dict(alpha=alpha, beta=beta, eta=eta, gamma1=gamma1, gamma2=gamma2, c0=c0)
    steps = {k: _positive(k, v) for k, v in steps.items()}
    _positive("p", p, 1.0)
    _positive("multiplier_bound", multiplier_bound if math.isfinite(multiplier_bound) else 1.0)
    return _lv_hba(F, f, g, h, x0, y0, project, project_theta, int(max_iter), tol, p=float(p),
                   r=float(multiplier_bound), log_every=int(log_every), monitor=monitor, **steps)


# --------------------------------------------------------------------------- LV-HBA


def _lv_hba(F, f, g, h, x, y, project, project_theta, max_iter, tol, *, alpha, beta, eta, gamma1,
            gamma2, c0, p, r, log_every, monitor) -> BilevelResult:
    """Algorithm 1 of Yao et al. (ICLR 2024). One iteration k, with cons = (g, h):

      d_theta = grad_y f(x, theta) + J_y cons(x, theta)^T lam + (theta - y) / gamma1
      d_lam   = -cons(x, theta) + (lam - z) / gamma2
      theta+  = Proj_Y(theta - eta d_theta);   lam+ = Proj_Z(lam - eta d_lam)
      d_x     = grad_x F(x, y) / c_k + grad_x f(x, y) - grad_x f(x, theta+) - J_x cons(x, theta+)^T lam+
      d_y     = grad_y F(x, y) / c_k + grad_y f(x, y) - (y - theta+) / gamma1
      d_z     = (z - lam+) / gamma2
      (x+, y+) = Proj_C((x, y) - alpha (d_x, d_y));   z+ = Proj_Z(z - beta d_z)

    (d_x, d_y, d_z) is the gradient of ``F/c_k + f - v_gamma`` with v_gamma's gradient taken at
    the one-step saddle estimate (theta+, lam+); ``c_k = c0 (k+1)^p``. Z = [0, r] for g entries
    (lam >= 0) and [-r, r] for h entries (free sign: an equality is not in the paper, which
    takes g <= 0 only; it is the same algorithm with a sign-free multiplier, as the authors'
    toy-example code does). theta, lam, z start at y0, 0, 0 (the paper leaves them free).
    Deviations from the authors' scripts, none from the paper: lam is projected every step, the
    hyperparameter update is in place, and theta is never frozen.
    """
    where0 = "at (x0, y0)"
    if project is not None:
        x, y = _check_projection(project, x, y)
    else:
        project = lambda a, b: (a, b)  # noqa: E731
    _scalar_out("F", F(x, y), where0)
    _scalar_out("f", f(x, y), where0)
    cons = _constraints(g, h)
    n_g = _vector_out("g", g(x, y), where0) if g is not None else 0
    n_h = _vector_out("h", h(x, y), where0) if h is not None else 0
    theta = y.clone()
    if project_theta is not None:
        theta = torch.as_tensor(project_theta(theta), dtype=DTYPE)
        if theta.shape != y.shape or not torch.isfinite(theta).all():
            raise BilevelInputError("project_theta(y0) must return a finite vector of y0's shape")
    else:
        project_theta = lambda t: t  # noqa: E731
    lo = torch.cat([torch.zeros(n_g, dtype=DTYPE), torch.full((n_h,), -r, dtype=DTYPE)])
    hi = torch.full((n_g + n_h,), r, dtype=DTYPE)
    lam, z = torch.zeros(n_g + n_h, dtype=DTYPE), torch.zeros(n_g + n_h, dtype=DTYPE)

    def lagrangian(xv: Tensor, tv: Tensor, lv: Tensor) -> Tensor:
        out = f(xv, tv)
        return out + lv @ cons(xv, tv) if cons is not None else out

    history: list[dict[str, float]] = []
    monitor_s, converged, message, k = 0.0, False, "", 0
    t0 = time.perf_counter()
    for k in range(max_iter):
        ck = c0 * (k + 1) ** p
        # theta, lam: one projected gradient step on the saddle problem defining v_gamma.
        tr = theta.detach().requires_grad_(True)
        xd = x.detach()
        val = f(xd, tr)
        if cons is not None:
            cv = cons(xd, tr)
            val = val + lam @ cv
            d_lam = -cv.detach() + (lam - z) / gamma2
        else:
            d_lam = lam
        (gt,) = _grads(val, [tr])
        d_theta = gt + (theta - y) / gamma1
        theta_new = project_theta(theta - eta * d_theta).detach()
        lam_new = torch.clamp(lam - eta * d_lam, lo, hi) if cons is not None else lam
        # x, y, z: one projected gradient step on F/c_k + f - v_gamma.
        xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        Fv = F(xr, yr)
        phi = Fv / ck + f(xr, yr) - lagrangian(xr, theta_new, lam_new)
        gx, gy = _grads(phi, [xr, yr])
        d_y = gy - (y - theta_new) / gamma1
        x_new, y_new = project(x - alpha * gx, y - alpha * d_y)
        z_new = torch.clamp(z - beta * (z - lam_new) / gamma2, lo, hi) if cons is not None else z

        nxy = math.sqrt(float(x @ x + y @ y))
        step = ck * math.sqrt(float((x_new - x) @ (x_new - x) + (y_new - y) @ (y_new - y))) / (alpha * (1 + nxy))
        ll_gap = float(torch.linalg.vector_norm(y - theta_new)) / (1 + float(torch.linalg.vector_norm(y)))
        inner = (float(torch.linalg.vector_norm(theta_new - theta)) + float(torch.linalg.vector_norm(lam_new - lam))) / (
            eta * (1 + float(torch.linalg.vector_norm(theta)) + float(torch.linalg.vector_norm(lam))))
        Fv = Fv.detach()
        if not all(math.isfinite(v) for v in (step, ll_gap, inner, float(Fv), float(z_new.sum()))):
            message = f"non-finite iterate at iteration {k} (step sizes too large?)"
            break
        x, y, theta, lam, z = x_new.detach(), y_new.detach(), theta_new, lam_new, z_new
        done = step <= tol and ll_gap <= tol and inner <= tol
        feas = math.nan
        if done or k % log_every == 0 or k == max_iter - 1:
            feas = _infeasibility(g, h, x, y)
            done = done and feas <= tol
        if k % log_every == 0 or done or k == max_iter - 1:
            monitor_s += _log_row(history, monitor, x, y, k=k, F=float(Fv), c=ck, step=step, ll_gap=ll_gap,
                                  inner=inner, infeas=feas)
        if done:
            converged, message = True, f"stopping rule met at iteration {k}"
            break
    else:
        message = f"max_iter={max_iter} reached"
    seconds = time.perf_counter() - t0 - monitor_s
    with torch.no_grad():
        F_end = float(F(x, y))
    return BilevelResult(x=x, y=y, F=F_end, nit=k + 1, converged=converged, seconds=seconds,
                         method="lv-hba", history=history, message=message, theta=theta, lam=lam, z=z)


def _log_row(history: list, monitor, x: Tensor, y: Tensor, **row) -> float:
    """Append ``row`` (plus the user's ``monitor(x, y)`` values) to ``history``; returns the
    seconds spent in the monitor, which are not charged to the method."""
    tm = time.perf_counter()
    if monitor is not None:
        row.update({key: float(v) for key, v in monitor(x, y).items()})
    history.append(row)
    return time.perf_counter() - tm


def _infeasibility(g, h, x: Tensor, y: Tensor) -> float:
    """``(|max(g, 0)| + |h|) / (1 + |y|)`` at (x, y); 0 without constraints."""
    with torch.no_grad():
        v = 0.0
        if g is not None:
            v += float(torch.linalg.vector_norm(torch.clamp(g(x, y), min=0)))
        if h is not None:
            v += float(torch.linalg.vector_norm(h(x, y)))
        return v / (1 + float(torch.linalg.vector_norm(y)))


# --------------------------------------------------------------------------- implicit baseline


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
    for par, v in zip(params, vals):
        if tuple(v.shape) != tuple(par.shape):
            raise BilevelInputError(
                f"params_of_x(x0) gives shape {tuple(v.shape)} for parameter {par.name()} of shape {par.shape}")
        if not torch.isfinite(v).all():
            raise BilevelInputError(f"params_of_x(x0) is not finite for parameter {par.name()}")
    solver_args = dict(lower.solver_args or {})
    if lower.solver is None:
        solver_args.setdefault("solve_method", "Clarabel")
    try:
        layer = CvxpyLayer(prob, parameters=params, variables=variables, solver=lower.solver,
                           solver_args=solver_args)
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
            _scalar_out("F", Fv, "at (x0, y*(x0))")
        (gx,) = _grads(Fv, [xr])
        x_new = torch.as_tensor(project_x(x - lr * gx), dtype=DTYPE).detach()
        Fv = Fv.detach()
        if not torch.isfinite(x_new).all() or not math.isfinite(float(Fv)):
            message = f"non-finite iterate at iteration {k} (lr too large?)"
            break
        step = float(torch.linalg.vector_norm(x_new - x)) / (lr * (1 + float(torch.linalg.vector_norm(x))))
        x_prev, x, y = x, x_new, y.detach()
        done = step <= tol
        if k % log_every == 0 or done or k == max_iter - 1:
            monitor_s += _log_row(history, monitor, x_prev, y, k=k, F=float(Fv), step=step)
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
    return BilevelResult(x=x, y=y.detach(), F=F_end, nit=k + 1, converged=converged, seconds=seconds,
                         method="implicit", history=history, message=message)

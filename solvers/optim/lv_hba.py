"""LV-HBA, the method of ``bilevel(..., method="lv-hba")`` (problem and conventions: :mod:`.bilevel`).

Algorithm 1 (LV-HBA) of W. Yao, C. Yu, S. Zeng, J. Zhang, "Constrained
Bi-Level Optimization: Proximal Lagrangian Value Function Approach and Hessian-free Algorithm",
ICLR 2024 (arXiv:2401.16164). The LL is replaced by the proximal Lagrangian value function

    v_gamma(x, y, z) = min_{theta in Y} max_{lam in Z} f(x, theta) + <lam, cons(x, theta)>
                       + ||theta - y||^2 / (2 gamma1) - ||lam - z||^2 / (2 gamma2)

(cons = (g, h); Z = R^l_+ for g and R^q for h), so the problem becomes the single-level
``min_{(x,y) in C, z in Z} F(x, y)  s.t.  f(x, y) - v_gamma(x, y, z) <= 0``. Each iteration takes
one projected gradient step on the saddle variables (theta, lam) of v_gamma and one on the
penalized objective ``F / c_k + f - v_gamma`` in (x, y, z), with ``c_k = c0 (k + 1)^p``,
``0 < p < 1/2``. Only first derivatives of F, f, g, h are used (Hessian-free).
"""

from __future__ import annotations

import math

import torch

from .bilevel_base import (
    DTYPE,
    BilevelArgs,
    BilevelInputError,
    BilevelResult,
    Objective,
    Progress,
    Projection,
    Tensor,
    check_scalar,
    grads,
    positive,
)


def lv_hba(args: BilevelArgs) -> BilevelResult:
    """LV-HBA (called by :func:`~.bilevel.bilevel`, which documents the arguments and checks the
    common ones); checks its own options."""
    if not callable(args.f):
        raise BilevelInputError("f must be callable (x, y) -> scalar tensor for LV-HBA")
    steps = dict(alpha=args.alpha, beta=args.beta, eta=args.eta, gamma1=args.gamma1, gamma2=args.gamma2, c0=args.c0)
    steps = {k: positive(k, v) for k, v in steps.items()}
    positive("p", args.p, 1.0)
    r = args.multiplier_bound
    positive("multiplier_bound", r if math.isfinite(r) else 1.0)
    return _lv_hba(
        args.F,
        args.f,
        args.g,
        args.h,
        args.x0,
        args.y0,
        args.project,
        args.project_theta,
        args.max_iter,
        args.tol,
        p=float(args.p),
        r=float(r),
        log_every=args.log_every,
        monitor=args.monitor,
        **steps,
    )


def _lv_hba(
    F,
    f,
    g,
    h,
    x,
    y,
    project,
    project_theta,
    max_iter,
    tol,
    *,
    alpha,
    beta,
    eta,
    gamma1,
    gamma2,
    c0,
    p,
    r,
    log_every,
    monitor,
) -> BilevelResult:
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
    check_scalar("F", F(x, y), where0)
    check_scalar("f", f(x, y), where0)
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

    run, k = Progress(max_iter, log_every, monitor), 0
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
        (gt,) = grads(val, [tr])
        d_theta = gt + (theta - y) / gamma1
        theta_new = project_theta(theta - eta * d_theta).detach()
        lam_new = torch.clamp(lam - eta * d_lam, lo, hi) if cons is not None else lam
        # x, y, z: one projected gradient step on F/c_k + f - v_gamma.
        xr, yr = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        Fv = F(xr, yr)
        phi = Fv / ck + f(xr, yr) - lagrangian(xr, theta_new, lam_new)
        gx, gy = grads(phi, [xr, yr])
        d_y = gy - (y - theta_new) / gamma1
        x_new, y_new = project(x - alpha * gx, y - alpha * d_y)
        z_new = torch.clamp(z - beta * (z - lam_new) / gamma2, lo, hi) if cons is not None else z

        nxy = math.sqrt(float(x @ x + y @ y))
        step = ck * math.sqrt(float((x_new - x) @ (x_new - x) + (y_new - y) @ (y_new - y))) / (alpha * (1 + nxy))
        ll_gap = float(torch.linalg.vector_norm(y - theta_new)) / (1 + float(torch.linalg.vector_norm(y)))
        inner = (
            float(torch.linalg.vector_norm(theta_new - theta)) + float(torch.linalg.vector_norm(lam_new - lam))
        ) / (eta * (1 + float(torch.linalg.vector_norm(theta)) + float(torch.linalg.vector_norm(lam))))
        Fv = Fv.detach()
        if not all(math.isfinite(v) for v in (step, ll_gap, inner, float(Fv), float(z_new.sum()))):
            run.stop(k, f"non-finite iterate at iteration {k} (step sizes too large?)")
            break
        x, y, theta, lam, z = x_new.detach(), y_new.detach(), theta_new, lam_new, z_new
        done = step <= tol and ll_gap <= tol and inner <= tol
        feas = math.nan
        if done or run.due(k):
            feas = _infeasibility(g, h, x, y)
            done = done and feas <= tol
        if run.due(k) or done:
            run.log(x, y, k=k, F=float(Fv), c=ck, step=step, ll_gap=ll_gap, inner=inner, infeas=feas)
        if done:
            run.stop(k)
            break
    return run.result("lv-hba", F, x, y, k, theta=theta, lam=lam, z=z)


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


def _constraints(g: Objective | None, h: Objective | None) -> Objective | None:
    if g is None and h is None:
        return None
    if h is None:
        return g
    if g is None:
        return h
    return lambda x, y: torch.cat([g(x, y).reshape(-1), h(x, y).reshape(-1)])


def _infeasibility(g, h, x: Tensor, y: Tensor) -> float:
    """``(|max(g, 0)| + |h|) / (1 + |y|)`` at (x, y); 0 without constraints."""
    with torch.no_grad():
        v = 0.0
        if g is not None:
            v += float(torch.linalg.vector_norm(torch.clamp(g(x, y), min=0)))
        if h is not None:
            v += float(torch.linalg.vector_norm(h(x, y)))
        return v / (1 + float(torch.linalg.vector_norm(y)))


__all__ = ["lv_hba"]

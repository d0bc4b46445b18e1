"""Constrained bilevel optimization: LV-HBA and an implicit-differentiation baseline.

    bilevel(F, f, g, x0, y0, *, method="lv-hba"|"implicit", ...) -> BilevelResult

solves the (optimistic) bilevel problem

    min_{(x, y) in C}  F(x, y)   s.t.  y in argmin_{theta in Y} { f(x, theta) : g(x, theta) <= 0, h(x, theta) = 0 }

with the lower-level (LL) constraints coupling x and y.

The methods (:data:`BILEVEL_METHODS`, one module each):

``method="lv-hba"`` (:mod:`.lv_hba`): Algorithm 1 (LV-HBA) of W. Yao, C. Yu, S. Zeng, J. Zhang,
"Constrained Bi-Level Optimization: Proximal Lagrangian Value Function Approach and Hessian-free
Algorithm", ICLR 2024 (arXiv:2401.16164): projected gradient steps on the proximal Lagrangian
value-function reformulation of the lower level, first derivatives only (Hessian-free).

``method="implicit"`` (:mod:`.implicit`): projected gradient descent on ``Phi(x) = F(x, y*(x))``,
with ``y*(x)`` and its derivative from a cvxpylayers layer (convex, DPP lower level; see
:class:`CvxpyLowerLevel`).

Functions act on float64 torch vectors: ``x`` of shape ``(n,)``, ``y`` of shape ``(m,)``;
``F``, ``f`` return scalars, ``g`` a ``(l,)`` vector (feasible where ``<= 0``), ``h`` a ``(q,)``
vector (feasible where ``= 0``). ``project(x, y) -> (x, y)`` is the Euclidean projection onto C
(for LV-HBA the paper takes C inside the LL-feasible set ``{g(x, y) <= 0, h(x, y) = 0}``);
``project_theta(theta)`` onto Y.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .bilevel_base import (
    DTYPE,
    BilevelArgs,
    BilevelInputError,
    BilevelResult,
    CvxpyLowerLevel,
    Monitor,
    Objective,
    Projection,
    Tensor,
    as_vector,
    positive,
)
from .implicit import implicit
from .lv_hba import lv_hba

#: a registered method: the checked arguments -> the result
BilevelMethod = Callable[[BilevelArgs], BilevelResult]


#: method name -> method; the one list of bilevel methods (``METHODS`` derives from it)
BILEVEL_METHODS: dict[str, BilevelMethod] = {
    "lv-hba": lv_hba,
    "implicit": implicit,
}
METHODS = tuple(BILEVEL_METHODS)


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
        method: one of :data:`METHODS` (``"lv-hba"`` or ``"implicit"``).
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
    if method not in BILEVEL_METHODS:
        raise BilevelInputError(f"method must be one of {METHODS}, got {method!r}")
    if not callable(F):
        raise BilevelInputError("F must be callable (x, y) -> scalar tensor")
    x0, y0 = as_vector("x0", x0), as_vector("y0", y0)
    if int(max_iter) < 1:
        raise BilevelInputError(f"max_iter must be >= 1, got {max_iter}")
    if int(log_every) < 1:
        raise BilevelInputError(f"log_every must be >= 1, got {log_every}")
    positive("tol", tol)
    args = BilevelArgs(
        F=F,
        f=f,
        g=g,
        h=h,
        x0=x0,
        y0=y0,
        max_iter=int(max_iter),
        tol=tol,
        log_every=int(log_every),
        monitor=monitor,
        project=project,
        project_theta=project_theta,
        alpha=alpha,
        beta=beta,
        eta=eta,
        gamma1=gamma1,
        gamma2=gamma2,
        c0=c0,
        p=p,
        multiplier_bound=multiplier_bound,
        lower=lower,
        project_x=project_x,
        lr=lr,
    )
    return BILEVEL_METHODS[method](args)


__all__ = [
    "BILEVEL_METHODS",
    "DTYPE",
    "METHODS",
    "BilevelArgs",
    "BilevelInputError",
    "BilevelMethod",
    "BilevelResult",
    "CvxpyLowerLevel",
    "bilevel",
]

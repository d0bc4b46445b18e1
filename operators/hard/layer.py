"""The hard-constraint layer: coefficients ``w`` that make a batch of least-squares residuals small.

Given basis functions ``phi_1..phi_N`` evaluated (with their derivatives) at constraint points,
PI-HC (Chalapathi et al., ICLR 2024, Section 3, eq. (2)-(4); after Negiar et al. 2023) predicts
``u = sum_i w_i phi_i`` with ``w`` *solving* the constrained least-squares problem

    w*(theta) = argmin_w  1/2 ||r(w; theta)||^2 + 1/2 ridge^2 ||w||^2                      (1)

where the rows of ``r`` are the PDE residual at the sampled points and the initial / boundary
conditions, and ``theta`` (the basis-term matrices) depends on the network weights. The reference
code (``neptune/models/constraints/hard_constraint.py``, ``pdes/diffusion_sorption.py``) appends
``ridge * w`` (ridge = 1e-4) to the residual vector, which is the ``ridge^2`` term above.

Backends (one interface, :func:`solve`), all batched over a leading axis ``E`` (batch x experts):

* ``"cholesky"`` -- linear problems ``r = A w - b``: the normal equations
  ``(A^T A + ridge^2 I) w = A^T b`` by a batched float64 Cholesky. Autograd through
  ``cholesky_solve`` *is* the implicit gradient of (1). A failed factorization (singular or
  numerically indefinite system) is retried with a larger damping, which is reported.
* ``"cvxpylayers"`` -- the same convex problem through cvxpylayers (a cone program solved by
  SCS at eps 1e-10, differentiated by diffcp). Slow at many rows; the correctness oracle and the option for
  users who add convex constraints.
* ``"lm"`` -- nonlinear ``r(w)``: batched float64 Levenberg-Marquardt (the reference uses
  optimistix' LM: rtol/atol 1e-4, 50-100 steps, ``w0 = 1`` for diffusion-sorption). The backward
  pass is the implicit function theorem at ``w*``: with ``g(w, theta) = grad_w L`` and
  ``H = d g / d w`` (the exact Hessian, not Gauss-Newton), ``dw*/dtheta = -H^{-1} dg/dtheta``. It is
  realized as one differentiable Newton step ``w* - H^{-1} g(w*, theta)`` with ``H`` and ``w*``
  detached: its value is ``w*`` (``g = 0`` at the solution, up to the solver tolerance) and its
  derivative is exactly the implicit one; no solver step is unrolled.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from data.errors import InputError

#: one system's residual: (w of shape (N,), {name: tensor for this system}) -> (M,)
ResidualFn = Callable[[Tensor, Mapping[str, Tensor]], Tensor]


class ConstraintSolveError(InputError):
    """The constraint system cannot be solved (bad shapes, non-finite input or output)."""


@dataclass
class SolveInfo:
    """What the solve did, per call (worst case over the batch).

    ``condition``: 2-norm condition number of the (damped) normal matrix / LM Hessian at ``w*``;
    ``damping``: the ridge^2 actually used (larger than requested after a fallback);
    ``iterations``: LM iterations (1 for closed forms); ``converged``: all systems met the tolerance.
    """

    backend: str
    condition: float
    damping: float
    iterations: int = 1
    converged: bool = True
    notes: list[str] = field(default_factory=list)


def merge_infos(infos: list[SolveInfo]) -> SolveInfo:
    """One :class:`SolveInfo` for a batch solved in parts (e.g. experts on several devices): the
    worst case over the parts, as for one batch."""
    if len(infos) == 1:
        return infos[0]
    return SolveInfo(
        infos[0].backend,
        condition=max(i.condition for i in infos),
        damping=max(i.damping for i in infos),
        iterations=max(i.iterations for i in infos),
        converged=all(i.converged for i in infos),
        notes=[n for i in infos for n in i.notes],
    )


@dataclass
class LeastSquares:
    """A batch of ``E`` least-squares systems with ``N`` unknowns each.

    Linear systems give ``A`` (``(E, M, N)``) and ``b`` (``(E, M)``), ``r(w) = A w - b``.
    Nonlinear systems give ``residual`` (one system: ``(w (N,), data) -> (M,)``) and ``data``, a
    dict of tensors with leading axis ``E`` (what gradients flow into), plus ``n`` = N.
    """

    A: Tensor | None = None
    b: Tensor | None = None
    residual: ResidualFn | None = None
    data: dict[str, Tensor] | None = None
    n: int | None = None

    @property
    def linear(self) -> bool:
        return self.A is not None

    def __post_init__(self) -> None:
        tensors: Mapping[str, Tensor]
        if self.A is not None:
            if self.b is None or self.A.ndim != 3 or self.b.shape != self.A.shape[:2]:
                raise ConstraintSolveError(
                    f"linear system needs A (E, M, N) and b (E, M); got A {tuple(self.A.shape)}, "
                    f"b {None if self.b is None else tuple(self.b.shape)}"
                )
            self.n = self.A.shape[-1]
            tensors = {"A": self.A, "b": self.b}
        else:
            if self.residual is None or not self.data or not self.n:
                raise ConstraintSolveError("a nonlinear system needs residual, data and n")
            lead = {v.shape[0] for v in self.data.values()}
            if len(lead) != 1:
                raise ConstraintSolveError(f"data tensors disagree on the batch axis E: {sorted(lead)}")
            tensors = self.data
        for name, v in tensors.items():
            if not torch.isfinite(v).all():
                raise ConstraintSolveError(f"constraint system input {name!r} has NaN or inf entries")

    @property
    def batch(self) -> int:
        if self.A is not None:
            return self.A.shape[0]
        assert self.data is not None  # __post_init__ checked
        return next(iter(self.data.values())).shape[0]

    @property
    def device(self) -> torch.device:
        """The device of the system's tensors."""
        return self.A.device if self.A is not None else next(iter((self.data or {}).values())).device

    def select(self, rows: Tensor, device: torch.device | None = None) -> LeastSquares:
        """The systems ``rows`` (indices along ``E``) as a new batch, on ``device`` (default: here);
        differentiable (gradients flow back to this batch's tensors across devices)."""
        dev = self.device if device is None else device
        if self.A is not None and self.b is not None:
            return LeastSquares(A=self.A[rows].to(dev), b=self.b[rows].to(dev))
        data = {k: v[rows].to(dev) for k, v in (self.data or {}).items()}
        return LeastSquares(residual=self.residual, data=data, n=self.n)

    def as_function(self) -> tuple[ResidualFn, dict[str, Tensor]]:
        """``(residual, data)`` for any system (a linear one as ``A w - b``)."""
        if self.A is not None and self.b is not None:
            return (lambda w, d: d["A"] @ w - d["b"]), {"A": self.A, "b": self.b}
        assert self.residual is not None and self.data is not None  # __post_init__ checked
        return self.residual, self.data


def _normal_solve(A: Tensor, b: Tensor, ridge: float) -> tuple[Tensor, SolveInfo]:
    """Batched ``(A^T A + lam I) w = A^T b`` by Cholesky, float64, differentiable."""
    A64, b64 = A.double(), b.double()
    n = A64.shape[-1]
    G = A64.transpose(-1, -2) @ A64
    rhs = A64.transpose(-1, -2) @ b64.unsqueeze(-1)
    eye = torch.eye(n, dtype=torch.float64, device=A.device)
    lam = ridge**2
    scale = float(G.diagonal(dim1=-2, dim2=-1).abs().mean().detach()) or 1.0
    notes = []
    for _ in range(12):
        L, info = torch.linalg.cholesky_ex(G + lam * eye)
        if not bool((info > 0).any()):
            break
        new = max(10.0 * lam, 1e-12 * scale)
        notes.append(
            f"Cholesky failed at damping {lam:.3g} (singular or ill-conditioned normal matrix); retrying with {new:.3g}"
        )
        lam = new
    else:
        raise ConstraintSolveError(f"normal equations not positive definite even with damping {lam:.3g}")
    w = torch.cholesky_solve(rhs, L).squeeze(-1)
    cond = float(torch.linalg.cond((G + lam * eye).detach()).max())
    if notes:
        warnings.warn(
            "Cholesky failed (singular or ill-conditioned normal matrix); solved with more damping "
            "(SolveInfo.damping, .notes)",
            RuntimeWarning,
            stacklevel=4,
        )
    return w, SolveInfo("cholesky", condition=cond, damping=lam, notes=notes)


_CVX_CACHE: dict[tuple[int, int, float], object] = {}
#: SCS's primal/dual residual tolerance for the cvxpylayers backend
SCS_EPS = 1e-10


def _cvxpy_layer(m: int, n: int, ridge: float):
    key = (m, n, ridge)
    if key not in _CVX_CACHE:
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        A, b, w, r = cp.Parameter((m, n)), cp.Parameter(m), cp.Variable(n), cp.Variable(m)
        # residual as a variable: a QP with a quadratic objective and equality constraints, which SCS
        # solves far more accurately than the second-order-cone form of sum_squares(A w - b)
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(r) + 0.5 * ridge**2 * cp.sum_squares(w)), [A @ w - r == b])
        assert prob.is_dpp()
        _CVX_CACHE[key] = CvxpyLayer(prob, parameters=[A, b], variables=[w])
    return _CVX_CACHE[key]


def _cvxpy_solve(A: Tensor, b: Tensor, ridge: float, solver_args: Mapping | None) -> tuple[Tensor, SolveInfo]:
    _, m, n = A.shape
    layer = _cvxpy_layer(m, n, ridge)
    # SCS at eps 1e-10 matches the closed form to ~1e-9 on well-posed rows and to ~cond * eps on
    # ill-conditioned ones (diffcp's Clarabel path stalls near 1e-5; SCS at 1e-12 runs out of
    # iterations on ill-conditioned rows and returns an inaccurate point). ADMM needs many iterations
    # at condition ~1e4: 200k stopped one of four heat systems (condition 8.6e3) at "Solved/Inaccurate"
    # with a 5e-6 error; 1e6 lets it meet eps (same wall time on the well-posed ones, which stop early).
    # Dense derivatives: the default iterative (LSQR) adjoint is only good to ~1e-6.
    args = {"solve_method": "SCS", "eps": SCS_EPS, "max_iters": 1_000_000, "mode": "dense", **(solver_args or {})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (w,) = layer(A.double(), b.double(), solver_args=args)
    notes = [str(c.message) for c in caught if "naccurate" in str(c.message)]
    G = A.double().transpose(-1, -2) @ A.double() + ridge**2 * torch.eye(n, dtype=torch.float64, device=A.device)
    cond = float(torch.linalg.cond(G.detach()).max())
    if notes:
        notes = [f"cvxpylayers/SCS: {notes[0]} (condition {cond:.3g}); loosen eps or use the closed form"]
        warnings.warn(notes[0], RuntimeWarning, stacklevel=4)
    return w, SolveInfo("cvxpylayers", condition=cond, damping=ridge**2, converged=not notes, notes=notes)


def _lm(system: LeastSquares, w0: Tensor, ridge: float, tol: float, max_iter: int) -> tuple[Tensor, SolveInfo]:
    """Batched Levenberg-Marquardt on (1) with the IFT backward (module docstring)."""
    from torch.func import grad, jacrev, vjp, vmap

    fn, data = system.as_function()
    data64 = {k: v.double() for k, v in data.items()}
    n, lam = system.n or 0, ridge**2

    def loss(w: Tensor, d: Mapping[str, Tensor]) -> Tensor:
        r = fn(w, d)
        return 0.5 * (r @ r) + 0.5 * lam * (w @ w)

    def jacobian(w: Tensor, d: Mapping[str, Tensor]) -> Tensor:
        """``(M, n)`` Jacobian of one system's residual, reverse mode only: ``J e_j`` as the vjp of the
        linear map ``u -> J^T u``. The same numbers as ``jacfwd`` (exactly, on these residuals) and as
        fast or faster at many rows; and thread-safe: PyTorch allows one forward-mode AD level per
        process at a time, so ``jacfwd`` cannot run in parallel threads (experts on CPU workers)."""
        r, vjp_r = vjp(lambda w_: fn(w_, d), w)[:2]
        vjp_t = vjp(lambda u: vjp_r(u)[0], torch.zeros_like(r))[1]
        return vmap(lambda e: vjp_t(e)[0], out_dims=1)(torch.eye(n, dtype=w.dtype, device=w.device))

    res = vmap(fn)
    jac = vmap(jacobian)
    with torch.no_grad():
        d = {k: v.detach() for k, v in data64.items()}
        w = w0.double().detach().clone()
        E = w.shape[0]
        eye = torch.eye(n, dtype=torch.float64, device=w.device)
        mu = torch.full((E,), 1e-3, dtype=torch.float64, device=w.device)
        r = res(w, d)
        cost = 0.5 * (r * r).sum(-1) + 0.5 * lam * (w * w).sum(-1)
        done = torch.zeros(E, dtype=torch.bool, device=w.device)
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007  (it: the iteration count reported after the loop)
            J = jac(w, d)
            g = (J.transpose(-1, -2) @ r.unsqueeze(-1)).squeeze(-1) + lam * w
            H = J.transpose(-1, -2) @ J + lam * eye
            diag = H.diagonal(dim1=-2, dim2=-1).clamp_min(1e-12)
            step = torch.linalg.solve(H + mu[:, None, None] * torch.diag_embed(diag), -g.unsqueeze(-1)).squeeze(-1)
            step = torch.where(done[:, None], torch.zeros_like(step), step)
            w_try = w + step
            r_try = res(w_try, d)
            cost_try = 0.5 * (r_try * r_try).sum(-1) + 0.5 * lam * (w_try * w_try).sum(-1)
            ok = torch.isfinite(cost_try) & (cost_try <= cost) & ~done
            w = torch.where(ok[:, None], w_try, w)
            r = torch.where(ok[:, None], r_try, r)
            small = step.norm(dim=-1) <= tol * (1.0 + w.norm(dim=-1))
            flat = (cost - cost_try).abs() <= tol * (1.0 + cost)
            cost = torch.where(ok, cost_try, cost)
            mu = torch.where(ok, (mu / 3.0).clamp_min(1e-12), (mu * 4.0).clamp_max(1e12))
            # optimistix' Cauchy termination: the step AND the cost change are small. A flat cost
            # alone only bounds ||w - w*|| by O(sqrt(tol)) (the cost is quadratic near w*), and the
            # implicit backward needs grad_w L(w*) = 0.
            done = done | (ok & small & flat) | (~ok & small)
            if bool(done.all()):
                break
        converged = bool(done.all())
        Hx = vmap(jacrev(grad(loss)))(w, d)  # the exact Hessian, reverse over reverse (see jacobian)
        if not torch.isfinite(w).all() or not torch.isfinite(Hx).all():
            raise ConstraintSolveError("Levenberg-Marquardt produced non-finite coefficients")
        H_damped, notes = Hx, []
        evals = torch.linalg.eigvalsh(Hx)
        if bool((evals.min(-1).values <= 1e-12 * evals.abs().max(-1).values.clamp_min(1e-300)).any()):
            shift = float((-evals.min() + 1e-8 * evals.abs().max()).clamp_min(1e-12))
            H_damped = Hx + shift * eye
            notes.append(f"Hessian at w* not positive definite; IFT backward damped by {shift:.3g}")
            warnings.warn(
                "Hessian at w* not positive definite; the implicit backward is damped (SolveInfo.notes)",
                RuntimeWarning,
                stacklevel=4,
            )
        cond = float(torch.linalg.cond(H_damped).max())
    # IFT: value w*, derivative -H^{-1} dg/dtheta (one Newton step with H, w* detached)
    g = vmap(grad(loss))(w, data64)
    w_out = (
        w
        - torch.linalg.solve(H_damped, g.unsqueeze(-1)).squeeze(-1)
        + (torch.linalg.solve(H_damped, g.detach().unsqueeze(-1)).squeeze(-1))
    )
    return w_out, SolveInfo("lm", condition=cond, damping=lam, iterations=it, converged=converged, notes=notes)


def _linear(system: LeastSquares, backend: str) -> tuple[Tensor, Tensor]:
    if system.A is None or system.b is None:
        raise ConstraintSolveError(f"backend {backend!r} solves linear systems only (r = A w - b); use 'lm'")
    return system.A, system.b


def _cholesky_backend(system: LeastSquares, *, ridge: float, **_: Any) -> tuple[Tensor, SolveInfo]:
    return _normal_solve(*_linear(system, "cholesky"), ridge)


def _cvxpylayers_backend(
    system: LeastSquares, *, ridge: float, solver_args: Mapping | None = None, **_: Any
) -> tuple[Tensor, SolveInfo]:
    return _cvxpy_solve(*_linear(system, "cvxpylayers"), ridge, solver_args)


def _lm_backend(
    system: LeastSquares, *, ridge: float, w0: Tensor | float = 1.0, tol: float = 1e-4, max_iter: int = 50, **_: Any
) -> tuple[Tensor, SolveInfo]:
    n = system.n or 0
    if not torch.is_tensor(w0):
        w0 = torch.full((system.batch, n), float(w0), dtype=torch.float64, device=system.device)
    if w0.shape != (system.batch, n):
        raise ConstraintSolveError(f"w0 must have shape {(system.batch, n)}, got {tuple(w0.shape)}")
    if w0.device != system.device:
        raise ConstraintSolveError(
            f"w0 is on {w0.device}, the system on {system.device}: give w0 on the system's device"
        )
    return _lm(system, w0, ridge, tol, max_iter)


#: the constraint solvers by name (module docstring): ``BACKENDS[name](system, ridge=, w0=, tol=,
#: max_iter=, solver_args=) -> (w, SolveInfo)``; each reads the keywords it needs
BACKENDS: dict[str, Callable[..., tuple[Tensor, SolveInfo]]] = {
    "cholesky": _cholesky_backend,
    "cvxpylayers": _cvxpylayers_backend,
    "lm": _lm_backend,
}


def solve(
    system: LeastSquares,
    backend: str = "cholesky",
    *,
    ridge: float = 1e-4,
    w0: Tensor | float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 50,
    solver_args: Mapping | None = None,
) -> tuple[Tensor, SolveInfo]:
    """Solve the batch of problems (1) with ``BACKENDS[backend]``; returns ``w`` of shape ``(E, N)``
    (float64) and a :class:`SolveInfo`.

    ``ridge``: the coefficient of ``w`` in the residual (the reference's 1e-4); ``w0``: LM start
    (a scalar fills every entry; the reference starts at 1 for diffusion-sorption, 0 otherwise);
    ``tol``: LM relative step / cost tolerance; ``max_iter``: LM iteration cap.
    Gradients flow from ``w`` into the system's tensors by the implicit function theorem.
    Raises :class:`ConstraintSolveError` on non-finite input or output, never returns NaN.
    """
    if backend not in BACKENDS:
        raise ConstraintSolveError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ConstraintSolveError(f"ridge must be a finite number >= 0, got {ridge}")
    w, info = BACKENDS[backend](system, ridge=ridge, w0=w0, tol=tol, max_iter=max_iter, solver_args=solver_args)
    if not torch.isfinite(w).all():
        raise ConstraintSolveError(f"{backend} returned non-finite coefficients (condition {info.condition:.3g})")
    return w, info

"""AdaSketch-Newton: equality-constrained optimization ``min f(x) s.t. c(x) = 0`` (``al-sketch``).

``al-sketch`` is the adaptive inexact Newton method of Hong, Na, Mahoney & Kolar, "Constrained
Optimization via Exact Augmented Lagrangian and Randomized Iterative Sketching" (ICML 2023),
Algorithm 1. Each iteration:

1. Newton (KKT) system ``[[B, G^T], [G, 0]] (dx, dlam) = -(grad_x L, c)`` with ``B`` the Hessian of
   the Lagrangian, shifted by ``t I`` when the reduced Hessian ``Z^T H Z`` is not positive definite
   (the reference tests ``lambda_min(Z^T H Z) < 1e-6``; see the deviations for ``t``). Between
   ``1e-6`` and ``xi_B`` no shift is made, as in the reference, so the paper's ``Z^T B Z >= xi_B I``
   holds only approximately there.
2. Solved inexactly by a randomized sketching solver (:mod:`.sketch`) until the adaptive accuracy
   condition ``||K|| psi ||r|| <= theta delta ||(grad_x L, c)||`` holds, with
   ``psi = 20 max(||B||^2, 1) / (min(xi_G, 1) min(xi_B, 1))``, ``xi_G = lambda_min(G G^T)`` and
   ``delta <= (1/2 - beta) nu / ((1 + mu + nu) Upsilon^2 psi^2)``, ``Upsilon = max(||G||, ||H||, 1)``.
3. Descent test on the exact augmented Lagrangian (the merit function)
   ``L_{mu,nu}(x, lam) = f + lam.c + mu/2 ||c||^2 + nu/2 ||grad_x L||^2``:
   ``grad L_{mu,nu} . (dx, dlam) <= -nu/2 ||(grad_x L, c)||^2``. If it fails, ``mu <- rho^2 mu``,
   ``nu <- nu / rho``, ``delta <- min(delta / rho^4, delta_trial)`` and the sketching solver resumes
   with the tighter accuracy.
4. Armijo backtracking on ``L_{mu,nu}`` with parameter ``beta``; ``x, lam`` move together.

Constants are the reference implementation's (AdaSketch-Newton, CUTEst runs): ``mu0 = 1``,
``nu0 = 0.1``, ``delta0 = 0.1``, ``xi_B = 0.1``, ``beta = 0.1``, ``rho = 1.5``, ``theta = 1``,
a floor ``delta >= 1e-6`` and at most 1e5 sketch steps per accuracy round. Norms of matrices are
Frobenius norms, as there (an upper bound on the operator norm, so the conditions stay sufficient).

Deviations from the reference code, on purpose:
* the merit gradient uses the Hessian of the **Lagrangian**, ``grad_x = grad_x L + nu H grad_x L +
  mu G^T c`` and ``grad_lam = c + nu G grad_x L``; the reference uses the Hessian of ``f`` (exact only
  for linear constraints);
* when the reduced Hessian fails the reference's test (``lambda_min(Z^T H Z) < 1e-6``) the shift is the
  smallest one meeting the paper's assumption, ``t = xi_B - lambda_min(Z^T H Z)``, not the reference's
  ``xi_B + ||H||``: that larger shift turns Newton steps into short gradient steps on ill-conditioned
  problems (the inverse problem stalled with it);
* a sketch run stops at working precision (:attr:`.sketch.SketchSolver.floor`, normwise backward
  error ``eps``) when the accuracy threshold lies below it, instead of spending the step budget on
  rounding noise: on the Darcy inverse problem the threshold is ~1e-25 of ``||b||`` (``psi ~ 1e13``),
  so the reference's rule made every round run its 1e5 steps (121 s for 6 outer iterations at
  n = 8 with ILU-Kaczmarz; 7 s with the floor). The descent test then decides, as it does after a
  capped round;
* the sketch residual is updated incrementally (see :mod:`.sketch`); the first Kaczmarz step uses
  ``r = K z - b`` with the right sign;
* the descent test is checked before the numerical guard (``mu > 1e8`` or ``nu < 1e-8``), so a
  descent direction is never rejected;
* for large sparse problems (``n > 2000``) the reduced-Hessian test is replaced by the same test on
  the computed step (``dx^T H dx / ||dx||^2 < 1e-6``: shift to curvature ``xi_B`` along ``dx`` and
  re-solve, doubling the shift up to 8 times): forming ``Z`` densely would cost ``O(n^3)``.

``newton-sqp`` is the same algorithm with exact KKT solves (``sketch="exact"``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .derivatives import Derivatives, NonFiniteError
from .kkt import DENSE_LIMIT, armijo, frobenius, hessian_shift, kkt_matrix, shifted
from .minimize_base import MinimizeArgs, OptimizeResult, State, finish, record, stop_reason
from .sketch import SketchSolver


@dataclass(frozen=True)
class ALParams:
    """AdaSketch-Newton constants (reference implementation defaults)."""

    mu0: float = 1.0
    nu0: float = 0.1
    delta0: float = 0.1
    xi_B: float = 0.1
    beta: float = 0.1
    rho: float = 1.5
    theta: float = 1.0
    delta_floor: float = 1e-6
    max_inner: int = 100_000
    max_line_search: int = 60
    #: sharpen the accuracy condition over iterations: ``theta_k = theta min(1, ||(grad_x L, c)||_k)``
    #: -> 0 (a forcing term of the order of the KKT residual; see :func:`accuracy_theta`)
    superlinear: bool = False


def accuracy_theta(P: ALParams, kkt: float) -> float:
    """``theta_k`` of the accuracy condition ``||K|| psi ||r|| <= theta_k delta ||(grad_x L, c)||``.

    Algorithm 1 keeps ``theta_k = theta`` (local linear convergence). With ``P.superlinear`` it is
    ``theta min(1, ||(grad_x L, c)||_k)``: the relative accuracy of the Newton step then goes to zero
    like the KKT residual, the inexact-Newton condition for a local superlinear (here quadratic) rate
    (Dembo, Eisenstat & Steihaug 1982; Eisenstat & Walker's forcing terms ``eta_k = O(||F_k||)``)."""
    return P.theta * min(1.0, kkt) if P.superlinear else P.theta


def accuracy_constants(B, G, H_norm: float, xi_G: float, P: ALParams) -> tuple[float, float]:
    """``(psi, Upsilon)`` of step 2 (module docstring): ``psi = 20 max(||B||^2, 1) / (min(xi_G, 1)
    min(xi_B, 1))`` and ``Upsilon = max(||G||, ||H||, 1)`` (Frobenius norms)."""
    psi = 20.0 * max(frobenius(B) ** 2, 1.0) / (min(xi_G, 1.0) * min(P.xi_B, 1.0))
    return psi, max(frobenius(G), H_norm, 1.0)


def delta_trial(P: ALParams, mu: float, nu: float, psi: float, ups: float) -> float:
    """The bound ``delta <= (1/2 - beta) nu / ((1 + mu + nu) Upsilon^2 psi^2)`` of step 2."""
    return (0.5 - P.beta) * nu / ((1.0 + mu + nu) * ups**2 * psi**2)


def al_sketch(
    args: MinimizeArgs,
    *,
    sketch: str,
    seed: int,
    params: ALParams,
    block_size: int | None = None,
    precondition: str = "none",
    **_: object,
) -> OptimizeResult:
    """AdaSketch-Newton (called by :func:`~.minimize.minimize_eq`, which documents the arguments):
    KKT systems solved by the randomized ``sketch`` solver (:data:`~.sketch.SKETCHES`), on the
    system ``precondition``-ed (:data:`~.sketch.PRECONDITIONERS`), to the adaptive accuracy of
    Algorithm 1; ``seed`` seeds its sampling."""
    return _adasketch(args, "al-sketch", sketch, seed, params, block_size, precondition)


def newton_sqp(args: MinimizeArgs, *, seed: int, params: ALParams, **_: object) -> OptimizeResult:
    """AdaSketch-Newton with exact KKT solves (``sketch="exact"``; a ``sketch`` argument is ignored)."""
    return _adasketch(args, "newton-sqp", "exact", seed, params)


def _merit(d: Derivatives, x, lam, mu, nu) -> float:
    """Exact augmented Lagrangian ``f + lam.c + mu/2 ||c||^2 + nu/2 ||grad_x L||^2``; inf if undefined."""
    try:
        f, c, g, G = d.f(x), d.c(x), d.grad(x), d.jac(x)
    except NonFiniteError:
        return float("inf")
    gL = g + G.T @ lam
    return f + lam @ c + 0.5 * mu * (c @ c) + 0.5 * nu * (gL @ gL)


def _merit_value(s: State, mu, nu) -> float:
    return s.f + s.lam @ s.c + 0.5 * mu * (s.c @ s.c) + 0.5 * nu * (s.gL @ s.gL)


def _merit_grad(s: State, mu, nu) -> np.ndarray:
    """Gradient of the exact augmented Lagrangian in ``(x, lam)``, with ``H`` = Hessian of the Lagrangian."""
    HgL = s.H @ s.gL
    return np.concatenate([s.gL + nu * HgL + mu * (s.G.T @ s.c), s.c + nu * (s.G @ s.gL)])


def _adasketch(
    args: MinimizeArgs,
    method: str,
    sketch: str,
    seed: int,
    P: ALParams,
    block_size: int | None = None,
    precondition: str = "none",
) -> OptimizeResult:
    """Algorithm 1 (see the module docstring) from ``(args.x, args.lam)``; ``method`` only labels the result."""
    d, tol, max_seconds = args.d, args.tol, args.max_seconds
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    mu, nu, delta = P.mu0, P.nu0, P.delta0
    s = State(d, args.x, args.lam)
    history: list[dict] = []
    inner_total, k, message = 0, 0, ""
    dense = d.n <= DENSE_LIMIT
    sparse_shift = 0.0
    while s.kkt > tol:
        message, xi_G = stop_reason(s, k, args.max_iter, t0, max_seconds)
        if message:
            break
        H_norm = frobenius(s.H)
        t_shift = hessian_shift(s.H, s.G, P.xi_B) if dense else 0.0
        b = -np.concatenate([s.gL, s.c])
        bn = float(np.linalg.norm(b))
        for _attempt in range(8):  # sparse path: re-solve with a larger shift while the step shows no curvature
            B = shifted(s.H, t_shift)
            psi, ups = accuracy_constants(B, s.G, H_norm, xi_G, P)
            delta = max(min(delta, delta_trial(P, mu, nu, psi, ups)), P.delta_floor)
            K = kkt_matrix(B, s.G)
            K_norm = frobenius(K)
            deadline = None if max_seconds is None else t0 + max_seconds
            solver = SketchSolver(K, b, sketch, rng, block_size, deadline, precondition)
            theta = accuracy_theta(P, bn)
            solver.run(theta * delta * bn / (K_norm * psi), P.max_inner)
            dx = solver.z[: d.n]
            rayleigh = float(dx @ (s.H @ dx)) / max(float(dx @ dx), 1e-300)
            if dense or rayleigh + t_shift >= 1e-6:  # curvature checked before any penalty update
                break
            inner_total += solver.steps
            # smallest shift giving curvature xi_B on dx; after a failed unshifted try, start from the
            # last shift that worked (unshifted Newton is tried first each iteration: a carried-over
            # shift would damp every later step)
            t_shift = max(P.xi_B - rayleigh, 2.0 * t_shift, sparse_shift)
        sparse_shift = max(sparse_shift, t_shift) if t_shift > 0 else sparse_shift
        while True:  # adaptive accuracy + descent loop (Algorithm 1, inner loop)
            z = solver.z
            q = float(_merit_grad(s, mu, nu) @ z)
            if q <= -0.5 * nu * bn**2:
                break
            if mu > 1e8 or nu < 1e-8:  # reference's numerical guard
                break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
            mu, nu = mu * P.rho**2, nu / P.rho
            delta = max(min(delta / P.rho**4, delta_trial(P, mu, nu, psi, ups)), P.delta_floor)
            solver.run(theta * delta * bn / (K_norm * psi), P.max_inner)
        dx = z[: d.n]
        inner_total += solver.steps
        if q > -0.5 * nu * bn**2 and max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            message = f"time budget of {max_seconds} s used inside the sketching loop; stalled with KKT {s.kkt:.3e}"
            break
        if not q < 0:  # also catches NaN
            message = (
                f"no descent direction for the merit function (mu = {mu:.1e}, nu = {nu:.1e}); "
                f"stalled with KKT {s.kkt:.3e}, ||c|| = {np.linalg.norm(s.c):.3e}"
            )
            break
        dlam = z[d.n :]
        alpha = armijo(
            lambda a: _merit(d, s.x + a * dx, s.lam + a * dlam, mu, nu),
            _merit_value(s, mu, nu),
            q,
            P.beta,
            P.max_line_search,
        )
        if alpha is None:
            message = f"line search failed after {P.max_line_search} halvings; stalled with KKT {s.kkt:.3e}"
            break
        s = State(d, s.x + alpha * dx, s.lam + alpha * dlam)
        k += 1
        ilu = {"ilu_drop_tol": solver.drop_tol, "ilu_defect": solver.ilu_defect} if solver.ilu is not None else {}
        record(history, args.callback, s, k, alpha, solver.steps, t0, mu=mu, nu=nu, shift=t_shift, **ilu)
    return finish(s, method, t0, k, tol, message, inner_total, history)


__all__ = ["ALParams", "accuracy_constants", "accuracy_theta", "al_sketch", "delta_trial", "newton_sqp"]

"""Equality-constrained optimization ``min f(x) s.t. c(x) = 0``: AdaSketch-Newton and baselines.

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
* the sketch residual is updated incrementally (see :mod:`.sketch`); the first Kaczmarz step uses
  ``r = K z - b`` with the right sign;
* the descent test is checked before the numerical guard (``mu > 1e8`` or ``nu < 1e-8``), so a
  descent direction is never rejected;
* for large sparse problems (``n > 2000``) the reduced-Hessian test is replaced by the same test on
  the computed step (``dx^T H dx / ||dx||^2 < 1e-6``: shift to curvature ``xi_B`` along ``dx`` and
  re-solve, doubling the shift up to 8 times): forming ``Z`` densely would cost ``O(n^3)``.

``newton-sqp`` is the same algorithm with exact KKT solves (``sketch="exact"``). ``l1-sqp`` is an
inexact SQP on the l1 merit ``f + pi ||c||_1`` with GMRES solves in the spirit of Byrd, Curtis &
Nocedal (SIAM J. Optim. 2008) -- the reference paper's main baseline. ``slsqp`` and ``trust-constr``
call SciPy. Every method reports the KKT residual ``||(grad_x L, c)||`` and is ``converged`` only when
it is ``<= tol``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .derivatives import AutogradDerivatives, Derivatives, NonFiniteError, kkt_residual, least_squares_multipliers
from .sketch import SKETCHES, SketchSolver

METHODS = ("al-sketch", "newton-sqp", "l1-sqp", "slsqp", "trust-constr")
DENSE_LIMIT = 2000


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


@dataclass
class OptimizeResult:
    """Outcome of :func:`minimize_eq`. ``x`` (n,), ``lam`` (m,) are float64 NumPy arrays; ``kkt`` is
    ``||(grad_x L(x, lam), c(x))||_2``; ``inner_iterations`` counts sketch steps (al-sketch), GMRES
    iterations (l1-sqp), CG iterations (trust-constr) or KKT solves (newton-sqp)."""

    x: np.ndarray
    lam: np.ndarray
    fun: float
    kkt: float
    nit: int
    converged: bool
    seconds: float
    method: str
    message: str = ""
    inner_iterations: int = 0
    constraint_violation: float = float("nan")
    history: list[dict] = field(default_factory=list)


class _State:
    """Function values and derivatives at one point."""

    def __init__(self, d: Derivatives, x: np.ndarray, lam: np.ndarray, with_hessian: bool = True):
        self.x, self.lam = x, lam
        self.f, self.c, self.g, self.G = d.f(x), d.c(x), d.grad(x), d.jac(x)
        self.gL = self.g + self.G.T @ lam
        self.H = d.hess_lag(x, lam) if with_hessian else None

    @property
    def kkt(self) -> float:
        return float(np.sqrt(self.gL @ self.gL + self.c @ self.c))


def _fro(A) -> float:
    return float(sp.linalg.norm(A)) if sp.issparse(A) else float(np.linalg.norm(A))


def _min_eig_GGt(G) -> float:
    if sp.issparse(G):
        GGt = (G @ G.T).tocsc()
        try:
            return float(spla.eigsh(GGt, k=1, sigma=0.0, which="LM", return_eigenvectors=False)[0])
        except RuntimeError:  # exactly singular: the factorization fails
            return 0.0
    return float(np.linalg.eigvalsh(G @ G.T)[0])


def _hessian_shift(H, G, xi_B: float) -> float:
    """Shift ``t`` for ``B = H + t I``: the reference's test ``lambda_min(Z^T H Z) < 1e-6`` (``Z`` an
    orthonormal null-space basis of ``G``), then the smallest ``t`` with ``Z^T B Z >= xi_B I``."""
    m, n = G.shape
    if m >= n:
        return 0.0
    Gd = G.toarray() if sp.issparse(G) else G
    Hd = H.toarray() if sp.issparse(H) else H
    Q, _ = np.linalg.qr(Gd.T, mode="complete")
    Z = Q[:, m:]
    low = float(np.linalg.eigvalsh(Z.T @ Hd @ Z)[0])
    return xi_B - low if low < 1e-6 else 0.0


def _kkt_matrix(B, G):
    m = G.shape[0]
    if sp.issparse(B) or sp.issparse(G):
        return sp.bmat([[sp.csr_matrix(B), sp.csr_matrix(G).T], [sp.csr_matrix(G), None]], format="csr")
    return np.block([[B, G.T], [G, np.zeros((m, m))]])


def _shifted(H, t: float):
    if t == 0.0:
        return H
    return H + t * (sp.identity(H.shape[0], format="csr") if sp.issparse(H) else np.eye(H.shape[0]))


def _merit(d: Derivatives, x, lam, mu, nu) -> float:
    """Exact augmented Lagrangian ``f + lam.c + mu/2 ||c||^2 + nu/2 ||grad_x L||^2``; inf if undefined."""
    try:
        f, c, g, G = d.f(x), d.c(x), d.grad(x), d.jac(x)
    except NonFiniteError:
        return float("inf")
    gL = g + G.T @ lam
    return f + lam @ c + 0.5 * mu * (c @ c) + 0.5 * nu * (gL @ gL)


def _l1_merit(d: Derivatives, x, pi) -> float:
    """``f + pi ||c||_1``; inf where undefined."""
    try:
        return d.f(x) + pi * float(np.abs(d.c(x)).sum())
    except NonFiniteError:
        return float("inf")


def _armijo(merit_at: Callable[[float], float], m0: float, slope: float, c1: float, max_halvings: int) -> float | None:
    """Backtracking from ``alpha = 1`` until ``merit_at(alpha) <= m0 + c1 alpha slope``; None if
    ``max_halvings`` halvings do not get there."""
    alpha = 1.0
    for _ in range(max_halvings):
        if merit_at(alpha) <= m0 + c1 * alpha * slope:
            return alpha
        alpha *= 0.5
    return None


def _merit_value(s: _State, mu, nu) -> float:
    return s.f + s.lam @ s.c + 0.5 * mu * (s.c @ s.c) + 0.5 * nu * (s.gL @ s.gL)


def _merit_grad(s: _State, mu, nu) -> np.ndarray:
    """Gradient of the exact augmented Lagrangian in ``(x, lam)``, with ``H`` = Hessian of the Lagrangian."""
    HgL = s.H @ s.gL
    return np.concatenate([s.gL + nu * HgL + mu * (s.G.T @ s.c), s.c + nu * (s.G @ s.gL)])


def _as_vector(x0) -> np.ndarray:
    x = np.asarray(x0.detach().cpu().numpy() if hasattr(x0, "detach") else x0, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"x0 must be a non-empty 1-D vector, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 contains NaN or inf")
    return x.copy()


def minimize_eq(
    f: Callable | None,
    c: Callable | None,
    x0,
    *,
    method: str = "al-sketch",
    tol: float = 1e-6,
    max_iter: int = 500,
    sketch: str = "kaczmarz",
    seed: int = 0,
    lam0=None,
    derivatives: Derivatives | None = None,
    params: ALParams = ALParams(),
    max_seconds: float | None = None,
    callback: Callable[[dict], None] | None = None,
) -> OptimizeResult:
    """Minimize ``f(x)`` subject to ``c(x) = 0``.

    Args:
        f: torch function ``(n,) float64 -> ()`` (ignored when ``derivatives`` is given).
        c: torch function ``(n,) -> (m,)``, ``m <= n`` (ignored when ``derivatives`` is given).
        x0: start, shape ``(n,)`` (NumPy or torch).
        method: one of :data:`METHODS`.
        tol: stop when the KKT residual ``||(grad_x L, c)||_2 <= tol``.
        max_iter: outer iterations.
        sketch: ``"kaczmarz"``, ``"block"`` or ``"exact"`` (al-sketch only).
        seed: seeds the sketch sampling.
        lam0: starting multipliers ``(m,)`` (default zeros).
        derivatives: a :class:`~.derivatives.Derivatives` for problems with their own (sparse)
            derivatives; default: dense autograd of ``f`` and ``c``.
        max_seconds: wall-clock budget; the result is ``converged=False`` when it runs out.
        callback: called after each outer iteration with a dict (``nit, kkt, fun, alpha, inner,
            seconds``), e.g. for progress logging.

    Returns:
        :class:`OptimizeResult`. ``converged`` is True only when the KKT residual is ``<= tol``.

    Raises:
        ValueError: unknown method/sketch, bad shapes, non-finite input, ``tol <= 0``.
        NonFiniteError: ``f``, ``c`` or a derivative is NaN/inf at an iterate.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if sketch not in SKETCHES:
        raise ValueError(f"sketch must be one of {SKETCHES}, got {sketch!r}")
    if not (tol > 0 and np.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = _as_vector(x0)
    d = derivatives if derivatives is not None else AutogradDerivatives(f, c, x)
    if d.n != x.size:
        raise ValueError(f"x0 has {x.size} entries, the problem has n = {d.n} variables")
    lam = np.zeros(d.m) if lam0 is None else _as_vector(lam0)
    if lam.size != d.m:
        raise ValueError(f"lam0 has {lam.size} entries, c has m = {d.m} components")
    if method in ("slsqp", "trust-constr"):
        return _scipy(d, x, method, tol, int(max_iter), max_seconds)
    if method == "l1-sqp":
        return _l1_sqp(d, x, lam, tol, int(max_iter), max_seconds, callback)
    return _adasketch(d, x, lam, method, "exact" if method == "newton-sqp" else sketch, tol, int(max_iter),
                      seed, params, max_seconds, callback)


def _finish(d, s: _State, method, t0, nit, tol, message, inner, history) -> OptimizeResult:
    kkt = s.kkt
    converged = kkt <= tol
    if converged:
        message = f"KKT residual {kkt:.2e} <= tol {tol:.0e}"
    else:
        message = f"{message} (KKT residual {kkt:.2e} > tol {tol:.0e})"
    return OptimizeResult(x=s.x, lam=s.lam, fun=s.f, kkt=kkt, nit=nit, converged=converged,
                          seconds=time.perf_counter() - t0, method=method, message=message,
                          inner_iterations=inner, constraint_violation=float(np.linalg.norm(s.c)),
                          history=history)


def _stop_reason(s: _State, k: int, max_iter: int, t0: float, max_seconds: float | None) -> tuple[str, float]:
    """Why an outer loop must stop before iteration ``k + 1`` (empty if it may go on), and
    ``lambda_min(G G^T)`` (needed by the step when it goes on)."""
    if k >= max_iter:
        return f"max_iter = {max_iter} reached", 0.0
    if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
        return f"time budget of {max_seconds} s used", 0.0
    xi_G = _min_eig_GGt(s.G)
    if xi_G <= 1e-12 * max(1.0, _fro(s.G) ** 2):
        return _rank_deficient(s, xi_G), xi_G
    return "", xi_G


def _record(history: list, callback, s: _State, k: int, alpha: float, inner: int, t0: float, **extra) -> None:
    """Append iteration ``k``'s summary to ``history`` and pass it to the user's callback."""
    info = {"nit": k, "kkt": s.kkt, "fun": s.f, "alpha": alpha, "inner": inner, **extra,
            "seconds": time.perf_counter() - t0}
    history.append(info)
    if callback is not None:
        callback(info)


def _rank_deficient(s: _State, xi_G: float) -> str:
    return (f"the constraint Jacobian is rank deficient at this point (lambda_min(G G^T) = {xi_G:.2e}): "
            f"the constraints are inconsistent or degenerate; stalled with ||c(x)|| = {np.linalg.norm(s.c):.3e}")


def _adasketch(d, x, lam, method, sketch, tol, max_iter, seed, P: ALParams, max_seconds, callback):
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    mu, nu, delta = P.mu0, P.nu0, P.delta0
    s = _State(d, x, lam)
    history, inner_total, k, message = [], 0, 0, ""
    dense = d.n <= DENSE_LIMIT
    sparse_shift = 0.0
    while s.kkt > tol:
        message, xi_G = _stop_reason(s, k, max_iter, t0, max_seconds)
        if message:
            break
        H_norm = _fro(s.H)
        t_shift = _hessian_shift(s.H, s.G, P.xi_B) if dense else 0.0
        b = -np.concatenate([s.gL, s.c])
        bn = float(np.linalg.norm(b))
        for _attempt in range(8):  # sparse path: re-solve with a larger shift while the step shows no curvature
            B = _shifted(s.H, t_shift)
            psi = 20.0 * max(_fro(B) ** 2, 1.0) / (min(xi_G, 1.0) * min(P.xi_B, 1.0))
            ups = max(_fro(s.G), H_norm, 1.0)

            def delta_trial(mu, nu):
                return (0.5 - P.beta) * nu / ((1.0 + mu + nu) * ups ** 2 * psi ** 2)

            delta = max(min(delta, delta_trial(mu, nu)), P.delta_floor)
            K = _kkt_matrix(B, s.G)
            K_norm = _fro(K)
            solver = SketchSolver(K, b, sketch, rng)
            solver.run(P.theta * delta * bn / (K_norm * psi), P.max_inner)
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
            if q <= -0.5 * nu * bn ** 2:
                break
            if mu > 1e8 or nu < 1e-8:  # reference's numerical guard
                break
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
            mu, nu = mu * P.rho ** 2, nu / P.rho
            delta = max(min(delta / P.rho ** 4, delta_trial(mu, nu)), P.delta_floor)
            solver.run(P.theta * delta * bn / (K_norm * psi), P.max_inner)
        dx = z[: d.n]
        inner_total += solver.steps
        if q > -0.5 * nu * bn ** 2 and max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            message = f"time budget of {max_seconds} s used inside the sketching loop; stalled with KKT {s.kkt:.3e}"
            break
        if not q < 0:  # also catches NaN
            message = (f"no descent direction for the merit function (mu = {mu:.1e}, nu = {nu:.1e}); "
                       f"stalled with KKT {s.kkt:.3e}, ||c|| = {np.linalg.norm(s.c):.3e}")
            break
        dlam = z[d.n:]
        alpha = _armijo(lambda a: _merit(d, s.x + a * dx, s.lam + a * dlam, mu, nu), _merit_value(s, mu, nu), q,
                        P.beta, P.max_line_search)
        if alpha is None:
            message = f"line search failed after {P.max_line_search} halvings; stalled with KKT {s.kkt:.3e}"
            break
        s = _State(d, s.x + alpha * dx, s.lam + alpha * dlam)
        k += 1
        _record(history, callback, s, k, alpha, solver.steps, t0, mu=mu, nu=nu, shift=t_shift)
    return _finish(d, s, method, t0, k, tol, message, inner_total, history)


class _OutOfTime(Exception):
    pass


def _gmres(K, b, rtol: float, deadline: float | None = None):
    """GMRES(200) on ``K z = b`` to relative residual ``rtol``; raises :class:`_OutOfTime` past ``deadline``."""
    it = [0]

    def count(_):
        it[0] += 1
        if deadline is not None and time.perf_counter() > deadline:
            raise _OutOfTime

    N = b.size
    z, _ = spla.gmres(K, b, rtol=rtol, atol=0.0, restart=min(N, 200), maxiter=max(10, N),
                      callback=count, callback_type="pr_norm")
    return z, it[0]


def _l1_sqp(d, x, lam, tol, max_iter, max_seconds, callback, kappa=0.1, tau=0.1, eta=1e-8, xi_B=0.1):
    """Inexact l1-penalty SQP (dense problems get the reduced-Hessian shift; sparse ones none): KKT step by GMRES to relative residual ``kappa`` (tightened by 10x
    while the step gives no model reduction), penalty ``pi >= (g.dx + dx^T B dx / 2) /
    ((1 - tau)(||c||_1 - ||c + G dx||_1))`` (Byrd-Curtis-Nocedal), Armijo on ``f + pi ||c||_1``."""
    t0 = time.perf_counter()
    s = _State(d, x, lam)
    pi, k, inner, history, message = 1.0, 0, 0, [], ""
    dense = d.n <= DENSE_LIMIT
    while s.kkt > tol:
        message, xi_G = _stop_reason(s, k, max_iter, t0, max_seconds)
        if message:
            break
        t_shift = _hessian_shift(s.H, s.G, xi_B) if dense else 0.0
        B = _shifted(s.H, t_shift)
        K = _kkt_matrix(B, s.G)
        b = -np.concatenate([s.gL, s.c])
        c1 = float(np.abs(s.c).sum())
        rtol, mred = kappa, -1.0
        deadline = None if max_seconds is None else t0 + max_seconds
        try:
            while rtol >= 1e-12:
                z, its = _gmres(K, b, rtol, deadline)
                inner += its
                dx, dlam = z[: d.n], z[d.n:]
                lin = c1 - float(np.abs(s.c + s.G @ dx).sum())  # linearized infeasibility reduction
                quad = float(s.g @ dx) + 0.5 * max(float(dx @ (B @ dx)), 0.0)
                if lin > 0:
                    pi = max(pi, quad / ((1.0 - tau) * lin) + 1e-4)
                mred = -quad + pi * lin
                if mred > 0:
                    break
                rtol *= 0.1
        except _OutOfTime:
            message = f"time budget of {max_seconds} s used inside GMRES; stalled with KKT {s.kkt:.3e}"
            break
        if mred <= 0:
            message = f"no model reduction even with exact KKT solves; stalled with KKT {s.kkt:.3e}"
            break
        alpha = _armijo(lambda a: _l1_merit(d, s.x + a * dx, pi), s.f + pi * c1, -mred, eta, 60)
        if alpha is None:
            message = f"line search failed after 60 halvings; stalled with KKT {s.kkt:.3e}"
            break
        s = _State(d, s.x + alpha * dx, s.lam + alpha * dlam)
        k += 1
        _record(history, callback, s, k, alpha, its, t0, pi=pi)
    return _finish(d, s, "l1-sqp", t0, k, tol, message, inner, history)


def _scipy(d, x, method, tol, max_iter, max_seconds):
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
        res = minimize(d.f, x, jac=d.grad, constraints=cons, method="SLSQP", callback=budget,
                       options={"maxiter": max_iter, "ftol": 1e-12})
        inner = 0
    else:
        zero = np.zeros(d.m)
        hess_c = lambda x, v: d.hess_lag(x, v) - d.hess_lag(x, np.zeros_like(v))  # noqa: E731
        con = NonlinearConstraint(d.c, zero, zero, jac=d.jac, hess=hess_c)
        res = minimize(d.f, x, jac=d.grad, hess=lambda x: d.hess_lag(x, np.zeros(d.m)), constraints=[con],
                       method="trust-constr", callback=budget,
                       options={"maxiter": max_iter, "gtol": tol, "xtol": 1e-14})
        inner = int(getattr(res, "cg_niter", 0))
    xs = np.asarray(res.x, dtype=np.float64)
    s = _State(d, xs, least_squares_multipliers(d.grad(xs), d.jac(xs)), with_hessian=False)
    message = f"time budget of {max_seconds} s used" if out_of_time[0] else f"SciPy: {res.message}"
    return _finish(d, s, method, t0, int(getattr(res, "nit", 0)), tol, message, inner, [])


def _dense(A):
    return A.toarray() if sp.issparse(A) else A


__all__ = ["ALParams", "METHODS", "OptimizeResult", "kkt_residual", "minimize_eq"]

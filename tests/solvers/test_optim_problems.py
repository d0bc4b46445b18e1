"""The equality-constrained test set (solvers/optim/problems.py): shapes, published optima, and
that SLSQP (scipy) with autograd derivatives reaches the published f* from the published x0."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from solvers.optim.problems import PROBLEMS, EqProblem, get, hs_set

NAMES = sorted(PROBLEMS)

# SLSQP from the published x0 does not reach f* on these; each definition was checked against the
# CUTEst SIF file, an independent AMPL/Julia transcription, and (where published) x* and f*.
SLSQP_KNOWN_MISSES = {
    # Boggs & Tolle built BT1 to show the Maratos effect: SLSQP (no second-order correction)
    # creeps along the circle and runs out of its 200 iterations at |c| ~ 1e-7 with f off by 5e-6 to
    # 2.4e-5 (f* = -1 at (1, 0)); where it stops depends on the BLAS kernels (OpenBLAS Haswell: 2.4e-5,
    # Prescott: 5.2e-6), 5x or more from the 1e-6 that would turn this strict xfail into a failure.
    "bt1": "Maratos effect: SLSQP stalls at |c| ~ 1e-7, f off by 5e-6 to 2.4e-5",
    # SLSQP lands on the local minimum printed in the paper, x = (-0.79, -1.26, 0, -0.90, 1.14),
    # f = 360.38; the global minimum 306.5 lies in the x1 > 0 half.
    "bt7": "local minimum of the paper (f = 360.38), not the global 306.5",
    # At x0 = 0 the constraint Jacobian [[3, 0, 0], [4, 0, 0]] has rank 1 and the linearized
    # constraints are inconsistent: SLSQP stops at once ("Singular matrix C in LSQ subproblem").
    "hs061": "rank-deficient constraint Jacobian at x0 = 0",
}


def _close(value: float, target: float) -> bool:
    """1e-6 relative, or 1e-8 absolute when the target is 0.

    Solvers stopped at tol 1e-10 have f within ~1e-10; what the bound carries is the published f*'s
    own error. The largest: the optimum of bt6 is 0.277044788768, 4.9e-7 below the printed 0.277044924,
    and bt11's 0.824891778288 is 1.6e-7 above 0.824891647 (Newton-SQP, l1-SQP and trust-constr agree
    to 1e-12), so bt6 passes with a 2x margin, set by the data, not by the machine."""
    if target == 0.0:
        return abs(value) <= 1e-8
    return abs(value - target) <= 1e-6 * abs(target)


def _t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_registry():
    hs = [n for n in NAMES if n.startswith("hs")]
    bt = [n for n in NAMES if n.startswith("bt")]
    assert len(hs) >= 16 and len(bt) >= 4
    assert [p.name for p in hs_set()] == NAMES
    for name, p in PROBLEMS.items():
        assert isinstance(p, EqProblem) and p.name == name and get(name) is p
        assert len(p.x0) == p.n and 1 <= p.m <= p.n
        assert p.x_star is None or len(p.x_star) == p.n
        assert p.source
    with pytest.raises(dataclasses.FrozenInstanceError):
        get("hs006").f_star = 1.0  # type: ignore[misc]


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="hs006") as info:
        get("hs999")
    assert "bt1" in str(info.value) and "hs999" in str(info.value)


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_derivatives(name):
    p = get(name)
    x = _t(p.x0).requires_grad_(True)
    fx, cx = p.f(x), p.c(x)
    assert fx.shape == () and fx.dtype == torch.float64 and torch.isfinite(fx)
    assert cx.shape == (p.m,) and cx.dtype == torch.float64 and torch.isfinite(cx).all()
    (g,) = torch.autograd.grad(fx, x)
    assert g.shape == (p.n,)
    x0 = _t(p.x0)
    assert torch.autograd.functional.jacobian(p.c, x0).shape == (p.m, p.n)
    H = torch.autograd.functional.hessian(p.f, x0)
    assert H.shape == (p.n, p.n) and torch.isfinite(H).all()


@pytest.mark.parametrize("name", [n for n in NAMES if PROBLEMS[n].x_star is not None])
def test_published_solution(name):
    """x* is feasible and f(x*) = f*. HS prints x* rounded to 6-8 digits; the x* carried here are
    16-digit (Seidl's revision) or exact, so 1e-6 relative on f holds. |c| <= 1e-5 leaves room
    for rounded data (BT2 rounds 4 + 3 sqrt(2) to 8.2426407, so HS60's x* violates it by 1e-8)."""
    p = get(name)
    xs = _t(p.x_star)
    assert float(p.c(xs).abs().max()) <= 1e-5
    assert _close(float(p.f(xs)), p.f_star)


def _slsqp(p: EqProblem):
    def fun(z):
        x = _t(z).requires_grad_(True)
        fx = p.f(x)
        (g,) = torch.autograd.grad(fx, x)
        return fx.item(), g.numpy()

    def cons(z):
        return p.c(_t(z)).numpy()

    def cons_jac(z):
        return torch.autograd.functional.jacobian(p.c, _t(z)).numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return minimize(
            fun,
            np.array(p.x0),
            jac=True,
            method="SLSQP",
            tol=1e-10,
            constraints=[{"type": "eq", "fun": cons, "jac": cons_jac}],
            options={"maxiter": 200},
        )


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=SLSQP_KNOWN_MISSES[n]))
        if n in SLSQP_KNOWN_MISSES
        else n
        for n in NAMES
    ],
)
def test_slsqp_reaches_published_optimum(name):
    """SLSQP's convergence flag is not required (on HS7 it runs out of iterations at tol 1e-10
    with f already exact); feasibility and the objective value are."""
    p = get(name)
    res = _slsqp(p)
    assert np.abs(p.c(_t(res.x)).numpy()).max() <= 1e-6, res.message
    assert _close(float(p.f(_t(res.x))), p.f_star), (res.fun, p.f_star, res.message)

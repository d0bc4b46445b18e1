"""LV-HBA (Yao et al., ICLR 2024) and the cvxpylayers implicit baseline on small problems."""

from __future__ import annotations

import cvxpy as cp
import pytest
import torch

from solvers.optim.bilevel import BilevelInputError, CvxpyLowerLevel, bilevel
from solvers.optim.bilevel_problems import llc_problem, solve, svm_accuracy, svm_problem


@pytest.fixture(scope="module")
def llc10():
    return llc_problem(10)  # the reference script's start (-20 1, 10 1)


@pytest.fixture(scope="module")
def svm_small():
    return svm_problem("breast_cancer", seed=0, n_train=60, n_val=40)


def test_lv_hba_reaches_llc_solution(llc10):
    res = solve(llc10, "lv-hba", max_iter=4000, tol=1e-3)
    # the stopping tol (a tol-KKT point; the distance left is the penalty bias ~0.3 / c_k): measured 6.6e-4
    # at k = 2060, the same to 6 digits with 1 thread and with OpenBLAS Prescott / ATen default kernels
    assert llc10.distance(res.x, res.y) <= 1e-3
    assert abs(res.F - 0.05 * 10) <= 1e-2
    # converged means what it says: the stopping rule held at a point this close
    assert res.converged and res.nit < 4000
    assert abs(float(res.lam[0]) / 30**0.5 + 1.0) < 1e-2  # multiplier of the raw sum 1.x + 1.y is -1


def test_implicit_reaches_llc_solution(llc10):
    res = solve(llc10, "implicit")
    assert res.converged
    assert llc10.distance(res.x, res.y) <= 1e-4


def test_max_iter_is_not_converged(llc10):
    res = solve(llc10, "lv-hba", max_iter=5)
    assert not res.converged and "max_iter" in res.message and res.nit == 5
    assert len(res.history) >= 1 and {"F", "step", "ll_gap"} <= set(res.history[0])


def test_divergence_is_reported_not_converged(llc10):
    res = solve(llc10, "lv-hba", alpha=50.0, eta=50.0, max_iter=2000)
    assert not res.converged and "non-finite" in res.message


def test_svm_hyperparameter_moves_and_multiplier_nonnegative(svm_small):
    res = solve(svm_small, "lv-hba", max_iter=150, log_every=50)
    moved = float((res.x - svm_small.x0).abs().max())
    assert moved > 1e-2, f"hyperparameter c did not move ({moved})"
    assert float(res.lam.min()) >= 0.0 and float(res.z.min()) >= 0.0
    assert float(svm_small.g(res.x, res.y).max()) <= 1e-8  # (c, y) stays in C
    assert svm_accuracy(svm_small, res.y, "test") > 0.85


def test_svm_implicit_moves(svm_small):
    res = solve(svm_small, "implicit", max_iter=5)
    assert float((res.x - svm_small.x0).abs().max()) > 0
    assert float(svm_small.g(res.x, res.y).max()) <= 1e-6


def _F(x, y):
    return 0.5 * torch.sum((x - y) ** 2)


def _f(x, y):
    return 0.5 * torch.sum((y - x) ** 2)


def test_bad_shapes_and_values():
    x0, y0 = torch.zeros(3), torch.zeros(3)
    with pytest.raises(BilevelInputError, match="x0 must be a non-empty 1-D"):
        bilevel(_F, _f, None, torch.zeros(3, 1), y0)
    with pytest.raises(BilevelInputError, match="y0 has non-finite"):
        bilevel(_F, _f, None, x0, torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(BilevelInputError, match="F\\(x, y\\) must return a scalar"):
        bilevel(lambda x, y: x * y, _f, None, x0, y0)
    with pytest.raises(BilevelInputError, match="g\\(x, y\\) must return a 1-D"):
        bilevel(_F, _f, lambda x, y: (x - y).reshape(1, 3), x0, y0)
    with pytest.raises(BilevelInputError, match="project\\(x, y\\) must return shapes"):
        bilevel(_F, _f, None, x0, y0, project=lambda x, y: (x[:2], y))
    with pytest.raises(BilevelInputError, match="alpha must be in"):
        bilevel(_F, _f, None, x0, y0, alpha=-1.0)
    with pytest.raises(BilevelInputError, match="method must be one of"):
        bilevel(_F, _f, None, x0, y0, method="newton")
    with pytest.raises(BilevelInputError, match="needs lower="):
        bilevel(_F, _f, None, x0, y0, method="implicit")


def test_unconstrained_quadratic_converges():
    res = bilevel(_F, _f, None, torch.ones(3), torch.zeros(3), alpha=0.2, eta=0.2, c0=10.0, tol=1e-6)
    assert res.converged and res.lam.numel() == 0
    assert float(torch.linalg.vector_norm(res.y - res.x)) <= 1e-4


def test_implicit_rejects_bad_lower_levels():
    n = 3
    x0, y0 = torch.zeros(n), torch.zeros(n)
    p, y = cp.Parameter(n), cp.Variable(n)
    not_dpp = cp.Problem(cp.Minimize(cp.sum_squares(y) + cp.sum(cp.multiply(cp.multiply(p, p), y))))
    with pytest.raises(BilevelInputError, match="not DPP"):
        bilevel(_F, None, None, x0, y0, method="implicit", lower=CvxpyLowerLevel(not_dpp, [p], [y]))
    concave = cp.Problem(cp.Maximize(cp.sum_squares(y - p)))
    with pytest.raises(BilevelInputError, match="not convex"):
        bilevel(_F, None, None, x0, y0, method="implicit", lower=CvxpyLowerLevel(concave, [p], [y]))
    good = cp.Problem(cp.Minimize(cp.sum_squares(y - p)), [cp.sum(y) <= 1])
    with pytest.raises(BilevelInputError, match="entries in all but y0 has 4"):
        bilevel(_F, None, None, x0, torch.zeros(4), method="implicit", lower=CvxpyLowerLevel(good, [p], [y]))
    with pytest.raises(BilevelInputError, match="exactly lower.problem.parameters"):
        bilevel(_F, None, None, x0, y0, method="implicit", lower=CvxpyLowerLevel(good, [], [y]))
    with pytest.raises(BilevelInputError, match="params_of_x\\(x0\\) gives shape"):
        bilevel(
            _F,
            None,
            None,
            x0,
            y0,
            method="implicit",
            lower=CvxpyLowerLevel(good, [p], [y], params_of_x=lambda x: (x[:2],)),
        )
    res = bilevel(
        _F, None, None, x0 + 1.0, y0, method="implicit", lower=CvxpyLowerLevel(good, [p], [y]), lr=0.5, tol=1e-6
    )
    # min_x 1/2|x - y*(x)|^2 with y* = projection onto {sum <= 1}: any x with sum <= 1 is optimal
    assert res.converged and res.F <= 1e-8


def test_bilevel_methods_come_from_one_registry():
    from data.errors import InputError
    from solvers.optim import BILEVEL_METHODS
    from solvers.optim.bilevel import METHODS
    from solvers.optim.implicit import implicit
    from solvers.optim.lv_hba import lv_hba

    assert METHODS == tuple(BILEVEL_METHODS) == ("lv-hba", "implicit")
    assert BILEVEL_METHODS["lv-hba"] is lv_hba and BILEVEL_METHODS["implicit"] is implicit
    assert issubclass(BilevelInputError, InputError) and issubclass(BilevelInputError, ValueError)


def test_a_registry_entry_takes_the_checked_arguments_and_logs_like_the_entry_point(llc10):
    """Every method receives one BilevelArgs; the shared bookkeeping logs every log_every-th
    iteration and the last, and says why the run ended."""
    from dataclasses import replace

    from solvers.optim import BILEVEL_METHODS
    from solvers.optim.bilevel_base import BilevelArgs

    opts = dict(alpha=0.3, eta=0.5, beta=0.5, gamma1=10.0, gamma2=10.0, c0=10.0, p=0.45, multiplier_bound=float("inf"))
    via = solve(llc10, "lv-hba", max_iter=25, tol=1e-3, log_every=10, **opts)
    P = llc10
    common = dict(max_iter=25, tol=1e-3, log_every=10, monitor=None, project=P.project, project_theta=None)
    args = BilevelArgs(P.F, P.f, P.g, P.h, P.x0, P.y0, **common, **opts, lower=None, project_x=None, lr=0.1)
    direct = BILEVEL_METHODS["lv-hba"](args)
    assert torch.equal(direct.x, via.x) and direct.nit == via.nit == 25 and not direct.converged
    assert [row["k"] for row in direct.history] == [0, 10, 20, 24] and direct.message == "max_iter=25 reached"
    with pytest.raises(BilevelInputError, match="needs lower="):
        BILEVEL_METHODS["implicit"](replace(args, lower=None))

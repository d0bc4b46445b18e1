"""The AdaSketch-Newton reference's own experiments (IlgeeHong/AdaSketch-Newton, Hong et al., ICML 2023),
rebuilt from its description: its ``PDE/`` control problem and its ``ConstrainedLogisticRegression/``
problem, as :class:`~.problems.EqProblem` objects for :func:`~.minimize.minimize_eq`.

* :func:`pde_control` (``PDE/*/Eval.jl``): on an ``N x N`` interior grid of ``(-1, 1)^2`` with zero
  Dirichlet boundary (``h = 2 / (N + 1)``), states ``w`` and controls ``z`` in ``R^{N^2}``,
  ``min 1/2 ||w - w*||^2 + 0.05 ||z||^2  s.t.  Delta_h w + z = 0`` (5-point Laplacian over ``h^2``),
  ``w*(i, j) = sin(4 + 0.1/sqrt(15) (i - (N + 1)/2)) + cos(3 + 0.1/sqrt(15) (j - (N + 1)/2))``,
  start at ones. The reference fixes ``N = 3`` (18 variables, 9 constraints). The constraint is
  linear and the objective quadratic, so the optimum is one linear KKT solve (``f_star`` here).
* :func:`logistic` (``ConstrainedLogisticRegression/*``): ``min (1/N) sum_i log(1 + exp(-y_i a_i^T x))
  s.t. A x = b, ||x||^2 = 1`` with ``A (10 x n)`` and ``b (10,)`` standard normal, start at ones.
  The reference reads LIBSVM files (ionosphere, mushrooms, sonar, ...; none is reachable here); we
  use data that ship with scikit-learn, features scaled to ``[-1, 1]`` like LIBSVM's ``_scale``
  sets, labels in ``{-1, 1}``: ``breast_cancer`` (30 features), ``digits`` (64, even vs odd),
  ``wine`` (13, class 0 vs rest; with 10 random equality constraints on 13 unknowns the sphere is
  out of reach, which is refused). ``A`` and ``b`` are drawn from ``seed`` (the reference draws
  them from its global stream after the previous datasets, so its sketching runs saw different
  constraints per method). No published optimum: ``f_star`` is NaN and the problem counts as
  solved on the KKT residual alone, as the reference counts it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from data.errors import InputError

from .problems import EqProblem

#: scikit-learn datasets for the logistic problem: loader name, how labels become +-1
LOGISTIC_DATASETS = ("breast_cancer", "digits", "wine")
#: the ones the benchmark uses: with 13 features, wine's 10 random constraints leave no point with ||x|| = 1
LOGISTIC_FEASIBLE = ("breast_cancer", "digits")


def _laplacian(N: int) -> np.ndarray:
    """5-point Laplacian on the ``N x N`` interior grid of ``(-1, 1)^2``, zero Dirichlet, over ``h^2``."""
    h = 2.0 / (N + 1)
    T = np.diag(-2.0 * np.ones(N)) + np.diag(np.ones(N - 1), 1) + np.diag(np.ones(N - 1), -1)
    return (np.kron(np.eye(N), T) + np.kron(T, np.eye(N))) / h**2


def pde_control(N: int = 3) -> EqProblem:
    """The reference's PDE-constrained control problem on an ``N x N`` grid (``n = 2 N^2``, ``m = N^2``)."""
    if not isinstance(N, int) or N < 2:
        raise InputError(f"N must be an integer >= 2 (grid points per side), got {N!r}")
    k = N * N
    L = _laplacian(N)
    i, j = np.meshgrid(np.arange(1, N + 1), np.arange(1, N + 1), indexing="ij")
    s = 0.1 / math.sqrt(15.0)
    w_star = (np.sin(4 + s * (i - (N + 1) / 2)) + np.cos(3 + s * (j - (N + 1) / 2))).ravel()
    Lt, wt = torch.as_tensor(L), torch.as_tensor(w_star)

    def f(x: torch.Tensor) -> torch.Tensor:
        w, z = x[:k], x[k:]
        return 0.5 * torch.sum((w - wt) ** 2) + 0.05 * torch.sum(z**2)

    def c(x: torch.Tensor) -> torch.Tensor:
        return Lt.to(x) @ x[:k] + x[k:]

    # the optimum: one KKT solve of the quadratic program
    H = np.diag(np.concatenate([np.ones(k), 0.1 * np.ones(k)]))
    G = np.hstack([L, np.eye(k)])
    K = np.block([[H, G.T], [G, np.zeros((k, k))]])
    sol = np.linalg.solve(K, np.concatenate([np.concatenate([w_star, np.zeros(k)]), np.zeros(k)]))
    x_star = sol[: 2 * k]
    f_star = float(f(torch.as_tensor(x_star)))
    return EqProblem(
        f"pde-control-{N}", 2 * k, k, f, c, (1.0,) * (2 * k), f_star, tuple(x_star), "AdaSketch-Newton PDE/"
    )


def _dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    if name not in LOGISTIC_DATASETS:
        raise InputError(f"dataset must be one of {LOGISTIC_DATASETS}, got {name!r}")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    label = {"breast_cancer": y == 1, "digits": y % 2 == 0, "wine": y == 0}[name]
    lo, hi = X.min(0), X.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    X = np.where(hi > lo, 2.0 * (X - lo) / span - 1.0, 0.0)  # LIBSVM-style scaling to [-1, 1]
    return X.astype(np.float64), np.where(label, 1.0, -1.0)


def logistic(dataset: str = "breast_cancer", seed: int = 0, n_constraints: int = 10) -> EqProblem:
    """The reference's constrained logistic regression on a scikit-learn dataset (``n`` = its features,
    ``m = n_constraints + 1``). Refused when the drawn constraints have no feasible point (the
    minimum-norm solution of ``A x = b`` already has norm >= 1)."""
    X, y = _dataset(dataset)
    n = X.shape[1]
    if not 1 <= n_constraints < n:
        raise InputError(f"n_constraints={n_constraints} must be between 1 and {n - 1} ({dataset} has {n} features)")
    rng = np.random.default_rng(seed)
    A, b = rng.standard_normal((n_constraints, n)), rng.standard_normal(n_constraints)
    x_min = np.linalg.lstsq(A, b, rcond=None)[0]
    if np.linalg.norm(x_min) >= 1.0:
        raise InputError(
            f"logistic({dataset!r}, seed={seed}): A x = b has no solution with ||x|| = 1 (its minimum-norm "
            f"solution has norm {np.linalg.norm(x_min):.3f}); choose another seed or fewer constraints"
        )
    Xt, yt, At, bt = (torch.as_tensor(v) for v in (X, y, A, b))

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(-yt * (Xt @ x)).mean()

    def c(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([At @ x - bt, (x @ x - 1.0).reshape(1)])

    return EqProblem(
        f"logistic-{dataset.replace('_', '-')}",
        n,
        n_constraints + 1,
        f,
        c,
        (1.0,) * n,
        float("nan"),
        None,
        "AdaSketch-Newton ConstrainedLogisticRegression/ (scikit-learn data)",
    )


__all__ = ["LOGISTIC_DATASETS", "LOGISTIC_FEASIBLE", "logistic", "pde_control"]

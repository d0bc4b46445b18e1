"""Test problems for :func:`solvers.optim.bilevel.bilevel`.

* :func:`llc_problem`: the "LLC" toy of Yao et al. (ICLR 2024, Sec. 5 / the authors' script
  ``Toy-example/LLC/LV-HBA.py``), a lower level with a constraint coupling x and y, known solution.
* :func:`svm_problem`: bilevel hyperparameter learning for a soft-margin linear SVM (the paper's
  "Linear SVM" experiment, after Xu & Zhu 2023), on a scikit-learn dataset, offline.
* :func:`svm_accuracy`, :func:`svm_grid_search`: evaluation and the grid-search baseline.

Each problem is a :class:`BilevelProblem`; ``solve(problem, method, **overrides)`` runs it with the
problem's recommended options.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data.errors import InputError

from .bilevel import DTYPE, BilevelResult, CvxpyLowerLevel, bilevel


@dataclass
class BilevelProblem:
    """Everything :func:`bilevel` needs, plus what is known about the problem.

    ``options[method]``: recommended keyword arguments of :func:`bilevel` for that method.
    ``x_star``/``y_star``: the known solution (None if unknown). ``data``: problem data
    (for the SVM: the train/val/test split as numpy arrays).
    """

    name: str
    F: Callable
    f: Callable
    g: Callable | None
    x0: torch.Tensor
    y0: torch.Tensor
    h: Callable | None = None
    project: Callable | None = None
    project_theta: Callable | None = None
    lower: CvxpyLowerLevel | None = None
    x_star: torch.Tensor | None = None
    y_star: torch.Tensor | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Relative distance ``|(x, y) - (x*, y*)| / |(x*, y*)|`` to the known solution."""
        if self.x_star is None or self.y_star is None:
            raise InputError(f"{self.name}: no known solution")
        d = torch.cat([x - self.x_star, y - self.y_star])
        return float(torch.linalg.vector_norm(d) / torch.linalg.vector_norm(torch.cat([self.x_star, self.y_star])))


def solve(problem: BilevelProblem, method: str = "lv-hba", **overrides) -> BilevelResult:
    """``bilevel(...)`` on ``problem`` with its recommended options for ``method``, updated by
    ``overrides``."""
    kw = dict(problem.options.get(method, {}))
    kw.update(overrides)
    if method == "lv-hba":
        kw.setdefault("h", problem.h)
        kw.setdefault("project", problem.project)
        kw.setdefault("project_theta", problem.project_theta)
    else:
        kw.setdefault("lower", problem.lower)
    return bilevel(problem.F, problem.f, problem.g, problem.x0, problem.y0, method=method, **kw)


# --------------------------------------------------------------------------- LLC toy


def llc_problem(n: int = 100, *, seed: int | None = None) -> BilevelProblem:
    """The LLC toy (x in R^n, y = (y1, y2) in R^2n):

        min  1/2 |x - y2|^2 + 1/2 |y1 - 1|^2
        s.t. (y1, y2) in argmin_y { 1/2 |y1|^2 - x.y1 + 1.y2 : 1.x + 1.y1 + 1.y2 = 0 }

    The constraint is one scalar equality over all 3n entries, as in the authors' script
    (``g(x, y) = e1'x + e2'y``, multiplier clipped to [-u, u], (x, y) projected onto
    ``{sum = 0}``). LL solutions: y1 = x + 1, any y2 with 1.y2 = -2 (1.x) - n; the optimistic
    solution is x* = -0.3 1, y1* = 0.7 1, y2* = -0.4 1 (F* = 0.05 n).

    Here h = (1.x + 1.y) / sqrt(3n): the same feasible set, scaled so that |grad h| = 1. With the
    raw sum (gradient norm sqrt(2n) in theta) the (theta, lam) steps of Algorithm 1 with the
    script's eta = 0.01 diverge for n = 100 (they are a gradient descent-ascent on a saddle with
    coupling sqrt(2n) and curvature 1/gamma ~ 0.1). C = {1.x + 1.y = 0}; Y = R^2n.

    Start: the script's feasible x0 = -20 1, y0 = 10 1, plus N(0, 1) noise (then projected) if
    ``seed`` is given, to break the symmetry. The implicit baseline's LL adds
    ``1/2 |y2 - mean(y2) 1|^2``, which is 0 on the equal-entry member of the LL solution set and
    so selects it (the LL solution in y2 is not unique; x* is unchanged).
    """
    import cvxpy as cp

    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    one = torch.ones(n, dtype=DTYPE)
    scale = 1.0 / math.sqrt(3 * n)

    def F(x, y):
        return 0.5 * torch.sum((x - y[n:]) ** 2) + 0.5 * torch.sum((y[:n] - 1) ** 2)

    def f(x, y):
        return 0.5 * torch.sum(y[:n] ** 2) - x @ y[:n] + torch.sum(y[n:])

    def h(x, y):
        return ((x.sum() + y.sum()) * scale).reshape(1)

    def project(x, y):
        shift = (x.sum() + y.sum()) / (3 * n)
        return x - shift, y - shift

    x0, y0 = -20.0 * one, 10.0 * torch.ones(2 * n, dtype=DTYPE)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        x0 = x0 + torch.randn(n, generator=gen, dtype=DTYPE)
        y0 = y0 + torch.randn(2 * n, generator=gen, dtype=DTYPE)
        x0, y0 = project(x0, y0)

    xp = cp.Parameter(n, name="x")
    y1, y2 = cp.Variable(n, name="y1"), cp.Variable(n, name="y2")
    objective = 0.5 * cp.sum_squares(y1) - xp @ y1 + cp.sum(y2) + 0.5 * cp.sum_squares(y2 - cp.sum(y2) / n)
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(xp) + cp.sum(y1) + cp.sum(y2) == 0])
    lower = CvxpyLowerLevel(
        problem, [xp], [y1, y2], solver_args=dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    )

    return BilevelProblem(
        name=f"llc-{n}",
        F=F,
        f=f,
        g=None,
        h=h,
        x0=x0,
        y0=y0,
        project=project,
        lower=lower,
        x_star=-0.3 * one,
        y_star=torch.cat([0.7 * one, -0.4 * one]),
        options={
            # alpha, eta, beta larger than the script's (0.008, 0.01, 0.02) and c_k = 10 (k+1)^0.45
            # instead of 0.025 (k+1)^0.3: the distance to x* is ~0.3/c_k (penalty bias), so c_k
            # must reach ~1e3 for 1e-3; p = 0.45 stays inside the paper's (0, 1/2).
            "lv-hba": dict(
                alpha=0.3, eta=0.5, beta=0.5, gamma1=10.0, gamma2=10.0, c0=10.0, p=0.45, tol=1e-3, max_iter=20000
            ),
            # Phi(x) has Hessian eigenvalues 2 and 10: lr = 1/6 contracts both modes by 2/3.
            "implicit": dict(lr=1.0 / 6.0, tol=1e-6, max_iter=500),
        },
    )


# --------------------------------------------------------------------------- SVM hyperparameters


class SVMFeasibleProjection:
    """Exact Euclidean projection of (w0, b0, xi0) onto ``{xi_i >= 1 - l_i (w.z_i + b)}``.

    For fixed q = (w, b) the best xi is ``max(xi0, 1 - M q)`` with ``M = diag(l) [Z, 1]``, so the
    projection is ``min_q 1/2 |q - q0|^2 + 1/2 |max(0, 1 - M q - xi0)|^2``: strongly convex,
    piecewise quadratic, in d + 1 unknowns. Solved by semismooth Newton with backtracking, warm
    started at the previous q; it ends exactly once the active set is right (typically 1-3 steps).
    """

    def __init__(self, Z: np.ndarray, labels: np.ndarray, tol: float = 1e-12, max_iter: int = 100):
        self.M = labels[:, None] * np.hstack([Z, np.ones((len(labels), 1))])
        self.tol, self.max_iter = tol, max_iter
        self.q: np.ndarray | None = None

    def _objective(self, q, q0, xi0):
        r = np.maximum(0.0, 1.0 - self.M @ q - xi0)
        return 0.5 * (q - q0) @ (q - q0) + 0.5 * r @ r, r

    def __call__(self, u: np.ndarray) -> np.ndarray:
        k = self.M.shape[1]
        q0, xi0 = u[:k], u[k:]
        q = q0.copy() if self.q is None else self.q.copy()
        val, r = self._objective(q, q0, xi0)
        for _ in range(self.max_iter):
            act = r > 0
            Ma = self.M[act]
            grad = (q - q0) - Ma.T @ r[act]
            if np.linalg.norm(grad) <= self.tol * (1.0 + np.linalg.norm(q0)):
                break
            step = np.linalg.solve(np.eye(k) + Ma.T @ Ma, grad)
            t = 1.0
            while True:
                cand_val, cand_r = self._objective(q - t * step, q0, xi0)
                if cand_val <= val - 1e-4 * t * (grad @ step) or t < 1e-10:
                    break
                t *= 0.5
            q, val, r = q - t * step, cand_val, cand_r
        self.q = q
        return np.concatenate([q, np.maximum(xi0, 1.0 - self.M @ q)])


def _load_dataset(dataset: str):
    from sklearn.datasets import load_breast_cancer, make_classification

    if dataset == "breast_cancer":
        Z, lab = load_breast_cancer(return_X_y=True)
    elif dataset == "synthetic":
        Z, lab = make_classification(n_samples=600, n_features=20, n_informative=8, flip_y=0.1, random_state=0)
    else:
        raise InputError(f"dataset must be 'breast_cancer' or 'synthetic', got {dataset!r}")
    return Z.astype(float), np.where(lab > 0, 1.0, -1.0)


def svm_problem(
    dataset: str = "breast_cancer",
    *,
    seed: int = 0,
    n_train: int = 200,
    n_val: int = 150,
    c_init: float = -5.0,
    c_box: tuple[float, float] = (-10.0, 2.0),
) -> BilevelProblem:
    """Per-sample hyperparameters c in R^N of a soft-margin linear SVM (paper's "Linear SVM"):

        min_c   F = sum_{j in val} LeakyReLU(2 sigmoid(-5 m_j) - 1),  m_j = l_j (w.z_j + b) / |w|
        s.t.    (w, b, xi) in argmin 1/2 |w|^2 + 1/2 sum_i exp(c_i) xi_i^2
                                s.t. g_i = 1 - xi_i - l_i (w.z_i + b) <= 0,  i = 1..N (train)

    x = c, y = (w, b, xi) (d + 1 + N entries). c couples with the slacks xi through the LL
    objective; g couples w, b and xi (in the authors' script g does not involve c). F is the
    reference code's smooth 0-1 surrogate, summed over the validation set.
    C = {(c, y) : c in c_box, g <= 0}, projected exactly by :class:`SVMFeasibleProjection` (the script
    solves a QP with ECOS each step); Y = R^(d+1+N).

    Data: standardized with train statistics; a seeded shuffle into n_train / n_val / rest (test).
    c starts at ``c_init`` everywhere (the script draws U(-6, -5)); y0 = (1, 0, 1) as in the script.
    The implicit baseline's LL uses p = exp(c / 2) so that it is DPP, and the same box on c.
    The box keeps the LL curvature exp(c) <= exp(2) so the (theta, xi) steps stay stable
    (eta exp(c_max) < 2); without it c can run off and the iteration blows up.
    """
    import cvxpy as cp

    Z, lab = _load_dataset(dataset)
    perm = np.random.default_rng(seed).permutation(len(lab))
    if n_train + n_val >= len(lab):
        raise InputError(f"n_train + n_val must be < {len(lab)} samples")
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    mu, sd = Z[tr].mean(0), Z[tr].std(0) + 1e-12
    Z = (Z - mu) / sd
    d, N = Z.shape[1], n_train
    Zt, lt = torch.as_tensor(Z[tr]), torch.as_tensor(lab[tr])
    Zv, lv = torch.as_tensor(Z[va]), torch.as_tensor(lab[va])

    def split(y):
        return y[:d], y[d], y[d + 1 :]

    def F(c, y):
        w, b, _ = split(y)
        m = lv * (Zv @ w + b) / torch.sqrt(w @ w + 1e-12)
        return torch.nn.functional.leaky_relu(2 * torch.sigmoid(-5.0 * m) - 1).sum()

    def f(c, y):
        w, _, xi = split(y)
        return 0.5 * (w @ w) + 0.5 * torch.sum(torch.exp(c) * xi**2)

    def g(c, y):
        w, b, xi = split(y)
        return 1 - xi - lt * (Zt @ w + b)

    proj = SVMFeasibleProjection(Z[tr], lab[tr])

    def project(c, y):
        c = torch.clamp(c, c_box[0], c_box[1])
        return c, torch.as_tensor(proj(y.detach().numpy()), dtype=DTYPE)

    x0 = torch.full((N,), float(c_init), dtype=DTYPE)
    y0 = torch.cat([torch.ones(d, dtype=DTYPE), torch.zeros(1, dtype=DTYPE), torch.ones(N, dtype=DTYPE)])

    p = cp.Parameter(N, name="sqrt_exp_c", nonneg=True)
    w, b, xi = cp.Variable(d, name="w"), cp.Variable(name="b"), cp.Variable(N, name="xi")
    objective = 0.5 * cp.sum_squares(w) + 0.5 * cp.sum_squares(cp.multiply(p, xi))
    cons = [cp.multiply(lab[tr], Z[tr] @ w + b) >= 1 - xi]
    lower = CvxpyLowerLevel(
        cp.Problem(cp.Minimize(objective), cons), [p], [w, b, xi], params_of_x=lambda c: (torch.exp(c / 2),)
    )

    data = dict(
        Z_train=Z[tr],
        l_train=lab[tr],
        Z_val=Z[va],
        l_val=lab[va],
        Z_test=Z[te],
        l_test=lab[te],
        d=d,
        dataset=dataset,
        seed=seed,
    )
    return BilevelProblem(
        name=f"svm-{dataset}",
        F=F,
        f=f,
        g=g,
        x0=x0,
        y0=y0,
        project=project,
        lower=lower,
        data=data,
        options={
            # Script: alpha = 0.01, beta = 0.1, eta = 0.01, 1/gamma = 0.1, c_k = (k+1)^0.5 (there
            # c never moves: its update is not in place). Larger alpha, eta make c move within
            # 1000 steps; p = 0.3 stays inside (0, 1/2).
            "lv-hba": dict(
                alpha=0.05,
                beta=0.1,
                eta=0.05,
                gamma1=10.0,
                gamma2=10.0,
                c0=1.0,
                p=0.3,
                tol=1e-4,
                max_iter=1000,
                log_every=50,
            ),
            "implicit": dict(
                lr=1.0, tol=1e-4, max_iter=100, log_every=10, project_x=lambda c: torch.clamp(c, c_box[0], c_box[1])
            ),
        },
    )


def svm_accuracy(problem: BilevelProblem, y, split: str = "test") -> float:
    """Fraction of ``split`` ("train", "val", "test") samples with ``l (w.z + b) > 0``, y = (w, b, xi)."""
    y = np.asarray(y.detach() if isinstance(y, torch.Tensor) else y, dtype=float)
    d = problem.data["d"]
    Z, lab = problem.data[f"Z_{split}"], problem.data[f"l_{split}"]
    return float(np.mean(lab * (Z @ y[:d] + y[d]) > 0))


def svm_grid_search(problem: BilevelProblem, grid=None) -> dict[str, Any]:
    """Grid-search baseline: one shared c for all samples, c in ``grid`` (default
    ``linspace(-6, 6, 25)``), LL solved by cvxpy/Clarabel for each; the c with the best validation
    accuracy (ties: lower F) wins. Returns ``c, y, val_acc, test_acc, F, seconds, n_solves``."""
    import cvxpy as cp

    grid = np.linspace(-6.0, 6.0, 25) if grid is None else np.asarray(grid, dtype=float)
    lower = problem.lower
    if lower is None or not grid.size:
        raise InputError(
            f"svm_grid_search needs an SVM problem (svm_problem) and a non-empty grid; got "
            f"problem {problem.name!r} and {grid.size} grid points"
        )
    (param,) = lower.parameters
    t0 = time.perf_counter()
    best: tuple[tuple[float, float], float, torch.Tensor] | None = None
    for c in grid:
        param.value = np.full(param.shape, math.exp(c / 2))
        lower.problem.solve(solver=cp.CLARABEL)
        y = torch.as_tensor(np.concatenate([np.ravel(v.value) for v in lower.variables]), dtype=DTYPE)
        x = torch.full(problem.x0.shape, float(c), dtype=DTYPE)
        key = (-svm_accuracy(problem, y, "val"), float(problem.F(x, y)))
        if best is None or key < best[0]:
            best = (key, c, y)
    seconds = time.perf_counter() - t0
    assert best is not None  # the grid is not empty
    (neg_acc, Fv), c, y = best
    return dict(
        c=float(c),
        y=y,
        val_acc=-neg_acc,
        test_acc=svm_accuracy(problem, y, "test"),
        F=Fv,
        seconds=seconds,
        n_solves=len(grid),
    )

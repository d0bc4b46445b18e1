"""Constrained-optimizer benchmark: AdaSketch-Newton vs SQP baselines and SciPy; LV-HBA vs implicit.

Five parts, one run, same problems and tolerances for every method:

* ``hs``: Hock-Schittkowski + Boggs-Tolle equality problems (:mod:`solvers.optim.problems`).
  Solved at ``tol`` = KKT residual <= tol and objective within tol (relative, absolute below 1) of
  the published optimum, for tol = 1e-4 (the reference's criterion) and 1e-6 (ours); every run
  goes to 1e-6 and counts as solved at 1e-4 from the first iterate that meets it (the SciPy
  methods, which keep no history, from their final point). Per method: solved fraction, median outer / inner iterations over its solved
  problems, the median's ratio to the l1-SQP's, seconds; a performance profile (Dolan & More) on
  seconds.
* ``rates``: AdaSketch-Newton's local rate with the accuracy condition fixed and sharpened
  (the superlinear variant), KKT vs iteration on a few HS/BT problems.
* ``reference``: the AdaSketch-Newton reference's own PDE control and constrained logistic problems.
* ``inverse``: Darcy log-coefficient recovery (:mod:`solvers.optim.darcy_inverse`) on n x n grids:
  seconds, outer iterations, seconds per iteration, peak memory (resident set growth, sampled), KKT, coefficient
  error; ratios to newton-sqp's and trust-constr's seconds. ``al-sketch-block-ilu`` (the sketch on the
  ILU-preconditioned KKT system) runs to ``ilu_max_n`` with its own budget ``ilu_seconds`` (the
  ``budget_s`` column), long enough to converge where it can. A scaling plot of seconds per outer iteration vs n.
* ``bilevel``: the LV-HBA LLC toy (distance to the known solution) and the SVM hyperparameter
  problem (test accuracy, seconds) against the cvxpylayers implicit baseline and a grid search.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..tracking import MethodRuns

HS_METHODS = (
    "al-sketch",
    "al-sketch-block",
    "al-sketch-gaussian",
    "newton-sqp",
    "l1-sqp",
    "l1-sqp-adaptive",
    "al-multipliers",
    "slsqp",
    "trust-constr",
)
#: outer-iteration caps: the reference's 1e4 (its CUTEst runs count a problem solved at KKT 1e-4 within
#: 1e4 iterations) on the HS/BT and reference problems, where the time budget ``hs_seconds`` also
#: applies; 500 on the inverse problem, whose budget is its time
HS_MAX_ITER, INV_MAX_ITER = 10_000, 500
#: the tolerances a problem counts as solved at: the reference's (AdaSketch-Newton's CUTEst runs stop at
#: KKT 1e-4) and ours
TOLERANCES = (1e-4, 1e-6)
#: al-sketch-block-ilu: block sketch-and-project on the KKT system right-preconditioned by its incomplete LU
INV_METHODS = ("al-sketch", "al-sketch-block-ilu", "newton-sqp", "l1-sqp", "trust-constr", "slsqp")
CONFIGS = {
    "smoke": {
        "reference_logistic": 1,
        "rates": ["hs040"],
        "hs": ["hs028", "hs040", "hs048"],
        "hs_seconds": 5.0,
        "inverse": [8],
        "inv_seconds": 3.0,
        "slsqp_max_n": 0,
        "ilu_seconds": 3.0,
        "ilu_max_n": 8,
        "llc_n": 10,
        "svm": dict(n_train=60, n_val=60),
    },
    "small": {
        "reference_logistic": 2,
        "rates": ["hs006", "hs040", "bt4"],
        "hs": None,
        "hs_seconds": 30.0,
        "inverse": [16, 32, 64, 128],
        "inv_seconds": 60.0,
        "slsqp_max_n": 16,
        "ilu_seconds": 3600.0,
        "ilu_max_n": 64,
        "llc_n": 100,
        "svm": {},
    },
    "paper": {
        "reference_logistic": 2,
        "rates": ["hs006", "hs040", "bt4", "hs007", "hs039"],
        "hs": None,
        "hs_seconds": 300.0,
        "inverse": [16, 32, 64, 128, 256],
        "inv_seconds": 600.0,
        "slsqp_max_n": 32,
        "ilu_seconds": 7200.0,
        "ilu_max_n": 128,
        "llc_n": 100,
        "svm": {},
    },
}
META = {
    "targets": "HS: al-sketch solves >= 90%, median outer iterations <= 0.2x l1-sqp's; inverse: al-sketch faster than "
    "trust-constr at n >= 64; LLC distance <= 1e-3; SVM: LV-HBA test accuracy >= implicit's at <= 0.5x its time"
}


def _method(name: str) -> tuple[str, str, str]:
    """``(minimize_eq method, sketch, precondition)`` of a benchmark name: ``al-sketch-<sketch>[-ilu]``;
    plain names use Kaczmarz, unpreconditioned."""
    precondition = "ilu" if name.endswith("-ilu") else "none"
    name = name.removesuffix("-ilu")
    if name.startswith("al-sketch-"):
        return "al-sketch", name.removeprefix("al-sketch-"), precondition
    return name, "kaczmarz", precondition


def _meets(kkt: float, fun: float, f_star: float, tol: float) -> bool:
    return bool(kkt <= tol and abs(fun - f_star) <= tol * max(1.0, abs(f_star)))


def _solved(r, f_star: float, tol: float = 1e-6) -> bool:
    return _meets(r.kkt, r.fun, f_star, tol)


def _solve(
    p, method: str, sketch: str, precondition: str, max_iter: int, max_seconds: float, block_size: int | None = None
):
    """One problem with one method from its start, to KKT 1e-6 (seed 0)."""
    from solvers.optim import minimize_eq

    return minimize_eq(
        p.f,
        p.c,
        np.array(p.x0),
        method=method,
        sketch=sketch,
        precondition=precondition,
        block_size=block_size,
        tol=1e-6,
        max_iter=max_iter,
        seed=0,
        max_seconds=max_seconds,
    )


def _outcome(r, f_star: float) -> dict:
    """Solved at 1e-6 and at 1e-4 (with the outer iterations to it), outer and inner iterations."""
    outer4 = _outer_to(r, f_star, 1e-4)
    return {
        "solved": _solved(r, f_star),
        "solved_1e4": outer4 is not None,
        "outer_1e4": outer4,
        "outer": r.nit,
        "inner": r.inner_iterations,
    }


def _outer_to(r, f_star: float, tol: float) -> int | None:
    """Outer iterations until the first iterate solved at ``tol`` (the final count when only the
    final point is known); ``None`` when none is."""
    for h in r.history:
        if _meets(h["kkt"], h["fun"], f_star, tol):
            return int(h["nit"])
    return r.nit if _solved(r, f_star, tol) else None


def hs_part(scale: str, log) -> tuple[list[dict], dict]:
    from solvers.optim.problems import get, hs_set

    cfg = CONFIGS[scale]
    problems = hs_set() if cfg["hs"] is None else [get(n) for n in cfg["hs"]]
    per: list[dict] = []
    for p in problems:
        for name in HS_METHODS:
            r = _solve(p, *_method(name), HS_MAX_ITER, cfg["hs_seconds"])
            per.append(
                {
                    "method": name,
                    "problem": p.name,
                    "scale": scale,
                    **_outcome(r, p.f_star),
                    "seconds": round(r.seconds, 4),
                    "kkt": float(f"{r.kkt:.3e}"),
                    "f_error": float(f"{abs(r.fun - p.f_star):.3e}"),
                    "message": r.message[:120],
                }
            )
            log(
                f"hs {p.name:6s} {name:16s} {'solved' if per[-1]['solved'] else 'FAILED':6s} outer {r.nit:4d} "
                f"kkt {r.kkt:.1e} {r.seconds:.2f} s"
            )
    return summarize(per, scale) + per, {"hs_performance_profile": _profile(per, problems)}


def summarize(per: list[dict], scale: str) -> list[dict]:
    """One row per method: problems solved, median outer / inner iterations over its solved
    problems, and ``outer_vs_l1sqp``: the median over problems *both* it and l1-sqp solved of the
    per-problem ratio of outer iterations (``common_with_l1sqp`` such problems)."""
    by = {(r["method"], r["problem"]): r for r in per}
    problems = sorted({r["problem"] for r in per})
    summary = []
    for name in HS_METHODS:
        mine = [r for r in per if r["method"] == name]
        solved = [r for r in mine if r["solved"]]
        solved4 = [r for r in mine if r["solved_1e4"]]
        common = [p for p in problems if by[(name, p)]["solved"] and by[("l1-sqp", p)]["solved"]]
        ratios = [by[(name, p)]["outer"] / max(by[("l1-sqp", p)]["outer"], 1) for p in common]
        summary.append(
            {
                "method": name,
                "problem": f"hs+bt ({len(mine)})",
                "scale": scale,
                "n_solved": len(solved),
                "solved_fraction": round(len(solved) / len(mine), 3),
                "solved_fraction_1e4": round(len(solved4) / len(mine), 3),
                "median_outer_1e4": statistics.median(r["outer_1e4"] for r in solved4) if solved4 else None,
                "median_outer": statistics.median(r["outer"] for r in solved) if solved else None,
                "median_inner": statistics.median(r["inner"] for r in solved) if solved else None,
                "outer_vs_l1sqp": round(statistics.median(ratios), 3) if ratios else None,
                "common_with_l1sqp": len(common),
                "seconds": round(sum(r["seconds"] for r in mine), 2),
            }
        )
    return summary


def _profile(per: list[dict], problems) -> object:
    """Dolan-More performance profile on seconds: fraction of problems solved within tau x the best."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    best = {}
    for row in per:
        if row["solved"]:
            best[row["problem"]] = min(best.get(row["problem"], np.inf), max(row["seconds"], 1e-6))
    taus = np.logspace(0, 4, 200)
    for name in HS_METHODS:
        ratios = [
            max(row["seconds"], 1e-6) / best[row["problem"]] for row in per if row["method"] == name and row["solved"]
        ]
        ax.step(taus, [sum(r <= t for r in ratios) / len(problems) for t in taus], where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("tau (seconds / best method's seconds)")
    ax.set_ylabel("fraction of problems solved")
    ax.set_title("HS + BT equality problems: performance profile")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: the reference's experiments (AdaSketch-Newton PDE/ and ConstrainedLogisticRegression/): benchmark name ->
#: (minimize_eq method, sketch, block_size); al-sketch-gv is the reference's Gaussian sketch, one column
REF_METHODS = {
    "al-sketch": ("al-sketch", "kaczmarz", None),
    "al-sketch-gv": ("al-sketch", "gaussian", 1),
    "newton-sqp": ("newton-sqp", "exact", None),
    "l1-sqp": ("l1-sqp", "kaczmarz", None),
    "l1-sqp-adaptive": ("l1-sqp-adaptive", "kaczmarz", None),
    "al-multipliers": ("al-multipliers", "kaczmarz", None),
    "slsqp": ("slsqp", "kaczmarz", None),
    "trust-constr": ("trust-constr", "kaczmarz", None),
}


def reference_part(scale: str, log) -> list[dict]:
    """The reference's own problems (:mod:`solvers.optim.reference_problems`): its 3 x 3 PDE control
    problem and its constrained logistic regression on scikit-learn data, every method to KKT 1e-6
    within the HS time budget; solved at 1e-4 (the reference's criterion) and 1e-6 (ours), on the KKT
    residual and, where the optimum is known (the PDE problem), the objective."""
    from solvers.optim.reference_problems import LOGISTIC_FEASIBLE, logistic, pde_control

    cfg = CONFIGS[scale]
    problems = [pde_control(3)] + [logistic(d, seed=0) for d in LOGISTIC_FEASIBLE[: cfg["reference_logistic"]]]
    rows = []
    for p in problems:
        for name, (method, sketch, block) in REF_METHODS.items():
            r = _solve(p, method, sketch, "none", HS_MAX_ITER, cfg["hs_seconds"], block)
            f_star = p.f_star if np.isfinite(p.f_star) else r.fun  # no published optimum: KKT alone
            rows.append(
                {
                    "method": name,
                    "problem": p.name,
                    "scale": scale,
                    "variables": p.n,
                    "constraints": p.m,
                    **_outcome(r, f_star),
                    "kkt": float(f"{r.kkt:.3e}"),
                    "fun": round(r.fun, 6),
                    "seconds": round(r.seconds, 3),
                    "message": r.message[:120],
                }
            )
            log(f"reference {p.name:24s} {name:13s} solved(1e-6)={rows[-1]['solved']} outer {r.nit} {r.seconds:.1f} s")
    return rows


#: the largest KKT system (n + m rows) whose Kaczmarz condition number the inverse part computes (dense SVD)
KAPPA_MAX_N = 3100

#: accuracy constants theta of the local-rate part: the reference's (1) and a loose one
RATE_THETAS = (1.0, 1e6)


def local_order(kkt: list[float], floor: float = 1e-13) -> float | None:
    """Estimated order of convergence from the last three KKT residuals above ``floor``:
    ``log(e_k / e_{k-1}) / log(e_{k-1} / e_{k-2})`` (1: linear, 2: quadratic); ``None`` with fewer
    than three decreasing values."""
    e = [v for v in kkt if v > floor]
    if len(e) < 3 or not e[-1] < e[-2] < e[-3]:
        return None
    return round(float(np.log(e[-1] / e[-2]) / np.log(e[-2] / e[-3])), 2)


def rates_part(scale: str, log) -> tuple[list[dict], dict]:
    """AdaSketch-Newton's local rate, with the accuracy condition as Algorithm 1 keeps it (``theta``
    fixed) and sharpened over iterations (``ALParams.superlinear``), at the reference's ``theta = 1``
    and a loose ``theta = 1e6``: KKT residual per outer iteration to 1e-10 on a few HS/BT problems,
    the estimated order of the last steps (:func:`local_order`) and a plot."""
    from solvers.optim import ALParams, minimize_eq
    from solvers.optim.problems import get

    rows, curves = [], {}
    for name in CONFIGS[scale]["rates"]:
        p = get(name)
        for theta in RATE_THETAS:
            for superlinear in (False, True):
                label = "al-sketch-superlinear" if superlinear else "al-sketch"
                r = minimize_eq(
                    p.f,
                    p.c,
                    np.array(p.x0),
                    method="al-sketch",
                    tol=1e-10,
                    max_iter=500,
                    seed=0,
                    params=ALParams(theta=theta, superlinear=superlinear),
                    max_seconds=CONFIGS[scale]["hs_seconds"],
                )
                kkt = [float(h["kkt"]) for h in r.history]
                curves[(name, theta, label)] = kkt
                rows.append(
                    {
                        "method": label,
                        "problem": name,
                        "scale": scale,
                        "theta": theta,
                        "converged": r.converged,
                        "outer": r.nit,
                        "inner": r.inner_iterations,
                        "seconds": round(r.seconds, 3),
                        "order": local_order(kkt),
                        "last_kkt": " ".join(f"{v:.1e}" for v in kkt[-4:]),
                    }
                )
                log(f"rates {name:6s} theta {theta:.0e} {label:22s} outer {r.nit:3d} order {rows[-1]['order']}")
    return rows, {"local_rates": _rates_figure(curves)}


def _rates_figure(curves: dict) -> object:
    from matplotlib.figure import Figure

    problems = sorted({k[0] for k in curves})
    fig = Figure(figsize=(4 * len(problems), 3.6))
    for j, name in enumerate(problems):
        ax = fig.add_subplot(1, len(problems), j + 1)
        for (prob, theta, label), kkt in curves.items():
            if prob == name:
                ax.semilogy(range(1, len(kkt) + 1), kkt, marker="o", ms=3, label=f"{label}, theta {theta:.0e}")
        ax.set_xlabel("outer iteration")
        ax.set_ylabel("KKT residual")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.suptitle("AdaSketch-Newton local rate: accuracy condition fixed vs sharpened")
    fig.tight_layout()
    return fig


def inverse_part(scale: str, log) -> tuple[list[dict], dict]:
    from solvers.optim import minimize_eq
    from solvers.optim.darcy_inverse import make_problem
    from solvers.optim.kkt import kaczmarz_condition, kkt_matrix
    from solvers.optim.minimize_base import State

    from . import PeakRSS

    cfg = CONFIGS[scale]
    rows = []
    for n in cfg["inverse"]:
        P = make_problem(n)
        x0 = P.start()
        found = {}
        kappa = None
        s0 = State(P, x0, np.zeros(P.m))
        K0 = kkt_matrix(s0.H, s0.G)
        if P.n + P.m <= KAPPA_MAX_N:  # why Kaczmarz stalls: its rate at the first KKT system
            kappa = float(f"{kaczmarz_condition(K0):.3e}")
            log(f"inverse n={n:4d} first KKT system: ||K||_F^2 / sigma_min^2 = {kappa:.2e}")
        stored = _stored_mib(K0)
        for name in INV_METHODS:
            if name == "slsqp" and n > cfg["slsqp_max_n"]:
                continue
            method, sketch, precondition = _method(name)
            if precondition == "ilu" and n > cfg["ilu_max_n"]:
                continue
            # the preconditioned sketch gets the time it needs to converge (its row says which budget)
            budget = cfg["ilu_seconds"] if precondition == "ilu" else cfg["inv_seconds"]
            with PeakRSS() as mem:
                r = minimize_eq(
                    None,
                    None,
                    x0,
                    method=method,
                    sketch=sketch,
                    precondition=precondition,
                    derivatives=P,
                    tol=1e-6,
                    max_iter=INV_MAX_ITER,
                    seed=0,
                    max_seconds=budget,
                )
            found[name] = {
                "method": name,
                "problem": f"darcy-inverse-{n}x{n}",
                "scale": scale,
                "n": n,
                "variables": P.n,
                "converged": r.converged,
                "kkt": float(f"{r.kkt:.3e}"),
                "outer": r.nit,
                "inner": r.inner_iterations,
                "seconds": round(r.seconds, 3),
                "budget_s": budget,
                "seconds_per_outer": round(r.seconds / max(r.nit, 1), 4),
                "peak_mib": round(mem.peak_mib, 1),
                "stored_mib": stored.get(name),
                "coef_error": round(P.coefficient_error(r.x), 4),
                "misfit": float(f"{P.misfit(r.x):.3e}"),
                "kaczmarz_kappa": kappa,
                "ilu_drop_tol": _tightest_drop_tol(r.history),
                "message": r.message[:120],
            }
            log(
                f"inverse n={n:4d} {name:13s} converged={r.converged} outer {r.nit:4d} kkt {r.kkt:.1e} "
                f"{r.seconds:.1f} s coef err {found[name]['coef_error']}"
            )
        for row in found.values():
            row["time_vs_newton_sqp"] = round(row["seconds"] / found["newton-sqp"]["seconds"], 3)
            row["time_vs_trust_constr"] = round(row["seconds"] / found["trust-constr"]["seconds"], 3)
            rows.append(row)
    return rows, {"inverse_scaling": _scaling(rows)}


def _tightest_drop_tol(history: list[dict]) -> float | None:
    """The smallest ILU drop tolerance the preconditioned sketch used over a run (None without ILU)."""
    tols = [h["ilu_drop_tol"] for h in history if "ilu_drop_tol" in h]
    return float(f"{min(tols):.1e}") if tols else None


#: bytes a stored nonzero costs in a compressed sparse matrix (float64 value + int32 index)
NNZ_BYTES = 12


def _stored_mib(K) -> dict[str, float]:
    """MiB of the operators each inverse method keeps for one outer iteration, counted on the first
    KKT system ``K`` (deterministic, unlike sampled RSS): newton-sqp the sparse LU factors (SuperLU,
    COLAMD); al-sketch ``K`` and the Gram matrix ``K K^T``; al-sketch-block-ilu ``K``, ``K^T`` and
    the incomplete LU's factors (as the solver builds it: :func:`~solvers.optim.sketch.incomplete_lu`); l1-sqp ``K`` and GMRES(200)'s
    Krylov basis. SciPy's methods keep dense or internal objects this does not count (absent)."""
    import scipy.sparse.linalg as spla

    from solvers.optim.sketch import incomplete_lu

    K = K.tocsc()
    N, nnz = K.shape[0], K.nnz
    lu = spla.splu(K)
    mib = {
        "newton-sqp": lu.L.nnz + lu.U.nnz,
        "al-sketch": nnz + (K @ K.T).nnz,
        "l1-sqp": nnz + 200 * N * 8 / NNZ_BYTES,
    }
    ilu = incomplete_lu(K)[0]
    mib["al-sketch-block-ilu"] = 2 * nnz + ilu.L.nnz + ilu.U.nnz
    return {k: round(v * NNZ_BYTES / 2**20, 2) for k, v in mib.items()}


def _scaling(rows: list[dict]) -> object:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4))
    for k, (key, label) in enumerate(
        (
            ("seconds_per_outer", "seconds per outer iteration"),
            ("seconds", "seconds to stop"),
            ("stored_mib", "MiB stored per outer iteration"),
        )
    ):
        ax = fig.add_subplot(1, 3, k + 1)
        for name in INV_METHODS:
            pts = [(r["n"], r[key], r["converged"]) for r in rows if r["method"] == name and r.get(key) is not None]
            if not pts:
                continue
            ns, vs, ok = zip(*pts, strict=False)
            (line,) = ax.plot(ns, vs, marker="o", label=name)
            ax.scatter(
                [n for n, o in zip(ns, ok, strict=False) if not o],
                [v for v, o in zip(vs, ok, strict=False) if not o],
                marker="x",
                s=80,
                color=line.get_color(),
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n (grid is n x n; 3 n^2 KKT unknowns)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("Darcy inverse problem (x: stopped without reaching KKT <= 1e-6)")
    fig.tight_layout()
    return fig


def bilevel_part(scale: str, log) -> list[dict]:
    from solvers.optim.bilevel_problems import llc_problem, solve, svm_accuracy, svm_grid_search, svm_problem

    cfg = CONFIGS[scale]
    rows = []
    P = llc_problem(cfg["llc_n"])
    found = {}
    for method in ("lv-hba", "implicit"):
        r = solve(P, method)
        found[method] = {
            "method": method,
            "problem": f"llc-n{cfg['llc_n']}",
            "scale": scale,
            "distance": float(f"{P.distance(r.x, r.y):.3e}"),
            "iterations": r.nit,
            "seconds": round(r.seconds, 3),
            "converged": r.converged,
        }
        log(f"bilevel llc {method:8s} distance {found[method]['distance']:.2e} {r.seconds:.2f} s")
    S = svm_problem("breast_cancer", seed=0, **cfg["svm"])
    svm = {}
    for method in ("lv-hba", "implicit"):
        r = solve(S, method)
        c = r.x.detach().numpy()
        svm[method] = {
            "method": method,
            "problem": "svm-breast-cancer",
            "scale": scale,
            "test_accuracy": round(svm_accuracy(S, r.y, "test"), 4),
            "val_accuracy": round(svm_accuracy(S, r.y, "val"), 4),
            "iterations": r.nit,
            "seconds": round(r.seconds, 3),
            "converged": r.converged,
            "hyper_moved": round(float(np.abs(c - S.x0.numpy()).max()), 3),
        }
        log(f"bilevel svm {method:8s} test acc {svm[method]['test_accuracy']:.4f} {r.seconds:.2f} s")
    g = svm_grid_search(S)
    svm["grid-search"] = {
        "method": "grid-search",
        "problem": "svm-breast-cancer",
        "scale": scale,
        "test_accuracy": round(g["test_acc"], 4),
        "val_accuracy": round(g["val_acc"], 4),
        "iterations": g["n_solves"],
        "seconds": round(g["seconds"], 3),
        "converged": True,
    }
    for group in (found, svm):
        base = group["implicit"]
        for row in group.values():
            row["time_vs_implicit"] = round(row["seconds"] / base["seconds"], 3)
            if "test_accuracy" in row:
                row["accuracy_vs_implicit"] = round(row["test_accuracy"] - base["test_accuracy"], 4)
            rows.append(row)
    return rows


def method_params(name: str, scale: str) -> dict:
    """A method's configuration as logged to its MLflow child run."""
    cfg = CONFIGS[scale]
    if name in HS_METHODS or name in INV_METHODS:
        method, sketch, precondition = _method(name)
        return {
            "solver": method,
            "sketch": sketch,
            "precondition": precondition,
            "tol": 1e-6,
            "hs.max_iter": HS_MAX_ITER,
            "inverse.max_iter": INV_MAX_ITER,
            "seed": 0,
            "hs.max_seconds": cfg["hs_seconds"],
            "inverse.max_seconds": cfg["inv_seconds"],
        }
    return {"solver": name, "llc_n": cfg["llc_n"], "svm": cfg["svm"]}


def run(scale: str, run_id: str | None = None, methods: MethodRuns | None = None) -> tuple[list[dict], dict]:
    """The three parts at ``scale``. ``methods``: each method's MLflow child run gets its configuration."""
    from . import progress_logger

    log = progress_logger()
    if methods is not None:
        for name in dict.fromkeys((*HS_METHODS, *INV_METHODS, "lv-hba", "implicit", "grid-search")):
            methods.log_params(name, method_params(name, scale))
    t0 = time.perf_counter()
    hs_rows, figs = hs_part(scale, log)
    rate_rows, figs3 = rates_part(scale, log)
    ref_rows = reference_part(scale, log)
    inv_rows, figs2 = inverse_part(scale, log)
    bl_rows = bilevel_part(scale, log)
    parts = (
        ("hs", hs_rows),
        ("rates", rate_rows),
        ("reference", ref_rows),
        ("inverse", inv_rows),
        ("bilevel", bl_rows),
    )
    for part, rows in parts:
        for row in rows:
            row["part"] = part
    log(f"optimizers benchmark done in {time.perf_counter() - t0:.0f} s")
    return hs_rows + rate_rows + ref_rows + inv_rows + bl_rows, {**figs, **figs3, **figs2}

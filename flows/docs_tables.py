"""Render the docs' result tables from the committed benchmark JSON.

    python -m flows.docs_tables            # print every table
    python -m flows.docs_tables --write    # replace the block between <!-- table:NAME --> and
                                           # <!-- /table:NAME --> in docs/NAME.md, for every benchmark,
                                           # and the settings table in docs/configuration.md

One table per benchmark of :data:`flows.benchmarks.BENCHMARKS` (:data:`TABLES`, in registry
order), each rendered from ``results/<name>-small.json`` by the function registered for that name
with :func:`renders`; a benchmark without one fails at import.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from data.errors import InputError

from .benchmarks import BENCHMARKS
from .results import format_table

_RENDERERS: dict[str, Callable[..., str]] = {}


def renders(name: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register the decorated ``fn(path=None) -> str`` as the table of benchmark ``name``."""
    if name not in BENCHMARKS:
        raise InputError(f"renders({name!r}): not a benchmark in flows.benchmarks.BENCHMARKS {list(BENCHMARKS)}")

    def register(fn: Callable[..., str]) -> Callable[..., str]:
        _RENDERERS[name] = fn
        return fn

    return register


DATAGEN_COLS = ["method", "problem", "samples", "seconds", "samples_per_s", "ratio_to_bare"]
GAMG_COLS = [
    "method",
    "problem",
    "unknowns",
    "iterations",
    "seconds",
    "solve_seconds",
    "us_per_unknown",
    "ratio_to_smallest",
]
LINEAR_COLS = [
    "method",
    "problem",
    "rhs",
    "tol",
    "iterations",
    "seconds",
    "converged",
    "iters_vs_icpcg",
    "time_vs_icpcg",
    "time_vs_gamg",
]
ODE_COLS = [
    "method",
    "problem",
    "metric",
    "value",
    "metric_delta",
    "predict_nfe",
    "nfe_ratio",
    "predict_time_ratio",
    "train_seconds",
    "train_time_ratio",
    "train_time_vs_global",
]
ODE_VARIANT_COLS = [
    "method",
    "reference",
    "value",
    "predict_nfe",
    "nfe_vs_reference",
    "metric_vs_reference",
    "train_seconds",
    "train_time_vs_reference",
]


def results_path(name: str, scale: str = "small") -> Path:
    """Where ``sciflow bench NAME --scale SCALE`` results are committed."""
    return Path("results") / f"{name}-{scale}.json"


def _rows(name: str, path: str | Path | None) -> list[dict]:
    return json.loads(Path(path or results_path(name)).read_text())["rows"]


@renders("datagen")
def datagen(path: str | Path | None = None) -> str:
    rows = _rows("datagen", path)
    return (
        format_table([r for r in rows if "ratio_to_bare" in r], DATAGEN_COLS)
        + "\n\n"
        + format_table([r for r in rows if "ratio_to_smallest" in r], GAMG_COLS)
    )


@renders("linear")
def linear(path: str | Path | None = None) -> str:
    rows = _rows("linear", path)
    main = [r for r in rows if not r["problem"].startswith("growth") and r["rhs"] == "grf"]
    other = [
        r
        for r in rows
        if r["method"] in ("dcdm-k2", "icpcg") and r["rhs"] in ("ritz", "divergence") and r["tol"] == 1e-6
    ]
    growth = [r for r in rows if r["problem"].startswith("growth")]
    return "\n\n".join(
        [
            "GRF right-hand sides, both tolerances:\n\n" + format_table(main, LINEAR_COLS),
            "Ritz-sampled and divergence right-hand sides (DCDM k=2 vs ICPCG, tol 1e-6):\n\n"
            + format_table(other, LINEAR_COLS),
            "Iteration growth from the smallest to the largest grid (2D: mean over the three right-hand sides; "
            "3D, `growth3d`: GRF; tol 1e-6):\n\n"
            + format_table(growth, ["method", "problem", "iterations", "growth", "converged"]),
        ]
    )


def _budget_pivot(rows: list[dict]) -> list[dict]:
    """One row per DCDM network and budget: mean iterations to 1e-6 over the right-hand sides at
    each size, with the ratio to ICPCG ("not converged" marks a lower bound), and the growth."""
    sizes = sorted({int(r["problem"].rsplit("-", 1)[1]) for r in rows if r["problem"].startswith("poisson")})
    out = []
    for key in dict.fromkeys((r["method"], r["budget"]) for r in rows if r.get("net")):
        picked = [r for r in rows if (r["method"], r.get("budget")) == key and r["tol"] == 1e-6]
        first = picked[0]
        row = {k: first[k] for k in ("method", "budget", "ritz_m", "n_samples", "epochs", "sample_passes")}
        row.update(train_seconds=first["train_seconds"], final_loss=first["final_loss"])
        for n in sizes:
            at = [r for r in picked if r["problem"] == f"poisson2d-neumann-disks-{n}"]
            its = sum(r["iterations"] for r in at) / len(at)
            ratio = sum(r["iters_vs_icpcg"] for r in at) / len(at)
            if all(r["converged"] for r in at):
                row[f"{n}^2 its (x icpcg)"] = f"{its:.0f} ({ratio:.2f}x)"
            else:  # a stopped run's count is not comparable: say where it stopped
                stops = "/".join(str(r["iterations"]) if r["converged"] else f"{r['iterations']}*" for r in at)
                row[f"{n}^2 its (x icpcg)"] = f"not converged ({stops})"
        growth = next(r for r in picked if r["problem"].startswith("growth"))
        row["growth"] = growth["growth"] if growth["converged"] else "-"
        out.append(row)
    return out


@renders("linear-budget")
def linear_budget(path: str | Path | None = None) -> str:
    rows = _rows("linear-budget", path)
    base = [r for r in rows if r["method"] in ("icpcg", "gamg") and r["tol"] == 1e-6]
    return (
        "DCDM (k=2) per training budget: mean iterations to 1e-6 over the GRF and divergence right-hand sides, "
        "ratio to ICPCG on the same systems; where a run did not converge, the iterations of each "
        "(GRF/divergence; * = stopped: the 300 cap or a fixed point):\n\n"
        + format_table(_budget_pivot(rows))
        + "\n\nThe baselines on the same held-out systems (tol 1e-6):\n\n"
        + format_table(base, ["method", "problem", "rhs", "iterations", "seconds", "converged"])
    )


@renders("linear-diagnosis")
def linear_diagnosis(path: str | Path | None = None) -> str:
    rows = _rows("linear-diagnosis", path)
    return (
        "Network direction against the ideal A^+ r (GRF right-hand side; cos_a: first iteration and median of the "
        "first 20; per-step reductions: geometric mean over the first 20 iterations):\n\n"
        + format_table(
            [r for r in rows if r["part"] == "direction"],
            [
                "method",
                "problem",
                "iterations",
                "reason",
                "cos_a_first",
                "cos_a_median",
                "a_error_step_reduction",
                "residual_step_reduction",
                "a_error_final",
                "a_error_monotone",
            ],
        )
        + "\n\nWhere the error is left at the training size (A-energy per band of the fluid spectrum, fraction "
        "of the initial error's):\n\n"
        + format_table(
            [r for r in rows if r["part"] == "spectrum"],
            [
                "method",
                "problem",
                "iterations",
                "energy_0_1pct",
                "energy_1_10pct",
                "energy_10_100pct",
                "energy_total",
            ],
        )
        + "\n\nOne iteration's wall time (ms, 2 CPU cores; network before = no_grad NCHW, after = inference_mode "
        "channels-last):\n\n"
        + format_table(
            [r for r in rows if r["part"] == "profile"],
            [
                "method",
                "problem",
                "device",
                "network_ms_before",
                "network_ms_after",
                "orthogonalise_ms",
                "sparse_products_ms",
                "network_share_after",
            ],
        )
    )


@renders("neural-odes")
def neural_odes(path: str | Path | None = None) -> str:
    rows = _rows("neural-odes", path)
    main = [r for r in rows if not r.get("reference") and not str(r["problem"]).startswith("sde-")]
    sde = [r for r in rows if str(r["problem"]).startswith("sde-")]
    variants = [r for r in rows if r.get("reference")]
    parts = [format_table(main, ODE_COLS)]
    if variants:
        parts.append(
            "Variants on digits, each against the run it varies (`reference`):\n\n"
            + format_table(variants, ODE_VARIANT_COLS)
        )
    if sde:
        parts.append("Neural SDEs (`operators.node.sde`):\n\n" + format_table(sde, ODE_COLS[:-1]))
    parts.append("![prediction NFE over training](../results/neural-odes-small-nfe_over_training.png)")
    return "\n\n".join(parts)


OPT_HS_COLS = [
    "method",
    "problem",
    "n_solved",
    "solved_fraction",
    "median_outer",
    "solved_fraction_1e4",
    "median_outer_1e4",
    "median_inner",
    "outer_vs_l1sqp",
    "common_with_l1sqp",
    "seconds",
]
OPT_INV_COLS = [
    "method",
    "problem",
    "variables",
    "converged",
    "kkt",
    "outer",
    "inner",
    "seconds",
    "budget_s",
    "seconds_per_outer",
    "time_vs_newton_sqp",
    "time_vs_trust_constr",
    "peak_mib",
    "stored_mib",
    "ilu_drop_tol",
    "coef_error",
    "misfit",
    "kaczmarz_kappa",
]
OPT_RATE_COLS = ["method", "problem", "theta", "converged", "outer", "inner", "seconds", "order", "last_kkt"]
OPT_REF_COLS = [
    "method",
    "problem",
    "variables",
    "constraints",
    "solved_1e4",
    "outer_1e4",
    "solved",
    "outer",
    "inner",
    "kkt",
    "fun",
    "seconds",
]
OPT_BL_COLS = [
    "method",
    "problem",
    "distance",
    "test_accuracy",
    "accuracy_vs_implicit",
    "iterations",
    "seconds",
    "time_vs_implicit",
    "converged",
]


@renders("optimizers")
def optimizers(path: str | Path | None = None) -> str:
    rows = _rows("optimizers", path)
    hs = [r for r in rows if r["part"] == "hs" and "solved_fraction" in r]
    per = [r for r in rows if r["part"] == "hs" and "solved_fraction" not in r]
    failed = sorted({(r["problem"], r["method"]) for r in per if not r["solved"]})
    by_problem: dict[str, list[str]] = {}
    for prob, meth in failed:
        by_problem.setdefault(prob, []).append(meth)
    fails = "; ".join(f"{p}: {', '.join(m)}" for p, m in sorted(by_problem.items()))
    return "\n\n".join(
        [
            "HS + BT equality problems (solved = KKT <= 1e-6 and objective within 1e-6 of the published optimum; "
            "`_1e4`: at 1e-4, the reference's criterion, from the first iterate that meets it; "
            "median iterations over each method's solved problems; outer_vs_l1sqp: median per-problem ratio over the problems both solved):\n\n"
            + format_table(hs, OPT_HS_COLS),
            f"Not solved: {fails}.",
            "![performance profile](../results/optimizers-small-hs_performance_profile.png)",
            "AdaSketch-Newton's local rate (KKT to 1e-10): the accuracy condition fixed (Algorithm 1) and "
            "sharpened (`superlinear`), at the reference's theta = 1 and a loose theta = 1e6; `order`: "
            "log(e_k / e_k-1) / log(e_k-1 / e_k-2) over the last three residuals above 1e-13:\n\n"
            + format_table([r for r in rows if r["part"] == "rates"], OPT_RATE_COLS),
            "![local rates](../results/optimizers-small-local_rates.png)",
            "The reference's own experiments (its 3 x 3 PDE control problem; its constrained logistic regression "
            "on scikit-learn data; `al-sketch-gv`: its one-column Gaussian sketch):\n\n"
            + format_table([r for r in rows if r["part"] == "reference"], OPT_REF_COLS),
            "Darcy inverse problem (3 n^2 KKT unknowns; stop at KKT <= 1e-6 or the time budget; "
            "`al-sketch-block-ilu`: block sketch-and-project on the KKT system right-preconditioned by its "
            "incomplete LU, its drop tolerance tightened tenfold from 1e-5 until ||K M^-1 v - v|| <= 1e-4 ||v|| "
            "(`ilu_drop_tol`: the tightest it used); `stored_mib`: the operators a method keeps per outer iteration, counted on the first KKT "
            "system: LU factors for newton-sqp, K and K K^T for al-sketch, K, K^T and the ILU factors for "
            "al-sketch-block-ilu, K and GMRES's basis for l1-sqp):\n\n"
            + format_table([r for r in rows if r["part"] == "inverse"], OPT_INV_COLS),
            "![inverse problem scaling](../results/optimizers-small-inverse_scaling.png)",
            "Bilevel (LLC toy: relative distance to the known solution; SVM on breast-cancer: test accuracy):\n\n"
            + format_table([r for r in rows if r["part"] == "bilevel"], OPT_BL_COLS),
        ]
    )


OPERATOR_COLS = [
    "method",
    "problem",
    "params",
    "compression_vs_fno",
    "test_l2",
    "l2_vs_fno",
    "test_h1",
    "test_l2_2x",
    "l2_2x_vs_fno",
    "test_h1_2x",
    "sec_per_epoch",
    "time_vs_fno",
    "peak_mib",
    "input_domain",
]


@renders("operators")
def operators(path: str | Path | None = None) -> str:
    return (
        format_table(_rows("operators", path), OPERATOR_COLS)
        + "\n\n![input / truth / prediction / error](../results/operators-small-predictions.png)"
    )


BUDGET_COLS = [
    "method",
    "problem",
    "params",
    "compression_vs_fno",
    "best_epoch",
    "best_test_l2",
    "l2_vs_fno",
    "best_test_h1",
    "final_test_l2",
    "final_test_h1",
    "final_vs_fno",
    "still_improving",
    "sec_per_epoch",
    "input_domain",
]


@renders("operators-budget")
def operators_budget(path: str | Path | None = None) -> str:
    rows = _rows("operators-budget", path)
    for part in ("curves", "pareto"):  # the final epoch's ratio too: the best epoch is picked on the test set
        dense = next((r for r in rows if r["part"] == part and r["model"] == "fno"), None)
        for r in rows:
            if dense is not None and r["part"] == part and "params" in r:
                r["final_vs_fno"] = round(r["final_test_l2"] / dense["final_test_l2"], 3)
    curves = [r for r in rows if r["part"] == "curves"]
    pareto = [r for r in rows if r["part"] == "pareto" and "params" in r]
    refused = [r for r in rows if "refused" in r]
    n = (
        f"{curves[0]['problem']}, {curves[0]['n_train']} training samples, {curves[0]['epochs']} epochs"
        if curves
        else ""
    )
    out = (
        f"Convergence ({n}; l2_vs_fno: best test L2 / the dense FNO's best, final_vs_fno: the same at the last epoch):\n\n"
        + format_table(curves, BUDGET_COLS)
        + "\n\n![test L2 and H1 against epochs](../results/operators-budget-small-curves.png)"
    )
    if pareto:
        m = f"{pareto[0]['problem']}, {pareto[0]['n_train']} training samples, {pareto[0]['epochs']} epochs"
        out += (
            f"\n\nError against parameters ({m}; every rank, per-layer vs joint, without and with multigrid):\n\n"
            + format_table(
                sorted(pareto, key=lambda r: (r["multigrid"], r["factorization"], -r["params"])), BUDGET_COLS
            )
            + "\n\n![best test L2 against parameter count](../results/operators-budget-small-pareto.png)"
        )
    pairs = seed_spread(rows, path)
    if pairs:
        out += (
            "\n\nPer-layer vs joint at about equal size, over seeds (seed 0: the pareto part; final-epoch test L2, "
            "mean +- sample standard deviation):\n\n" + format_table(pairs)
        )
    if refused:
        out += "\n\nRefused: " + "; ".join(f"`{r['method']}`: {r['refused']}" for r in refused)
    return out


def seed_spread(rows: list[dict], path: str | Path | None = None) -> list[dict]:
    """Per (rank, factorization) of the seeds part: parameters, seeds and the final test L2's mean
    and spread, seed 0 taken from the pareto rows. The seeds rows come from ``rows`` and, when it
    exists, ``results/operators-budget-seeds-small.json`` (``--part seeds`` run on its own)."""
    import statistics

    extra = (
        Path(path).with_name("operators-budget-seeds-small.json") if path else results_path("operators-budget-seeds")
    )
    found = [r for r in rows if r["part"] == "seeds"] + (
        _rows("operators-budget-seeds", extra) if extra.exists() else []
    )
    seeds = list({r["method"]: r for r in found}.values())  # one row per model and seed
    out = []
    for rank, fact in sorted({(r["rank"], r["factorization"]) for r in seeds}, key=lambda k: (-k[0], k[1])):
        picked = [
            r
            for r in [r for r in rows if r["part"] == "pareto"] + seeds
            if not r.get("multigrid") and (r.get("rank"), r.get("factorization")) == (rank, fact) and "params" in r
        ]
        l2 = [r["final_test_l2"] for r in picked]
        out.append(
            {
                "rank": rank,
                "factorization": fact,
                "params": picked[0]["params"],
                "seeds": ", ".join(str(r.get("seed", 0)) for r in picked),
                "final_test_l2": f"{statistics.mean(l2):.4f} +- {statistics.stdev(l2) if len(l2) > 1 else 0:.4f}",
                "per_seed": ", ".join(f"{v:.4f}" for v in l2),
            }
        )
    return out


HC_COLS = [
    "method",
    "problem",
    "experts",
    "points_per_expert",
    "seeds",
    "rel_l2",
    "rel_l2_sd",
    "rel_l2_min",
    "rel_l2_max",
    "l2_vs_soft",
    "l2_vs_hc",
    "residual",
    "conditions",
    "jump_mean",
    "jump_max",
    "s_per_step",
    "step_vs_hc",
    "infer_s",
    "infer_vs_hc",
    "lm_iters",
]
HC_PARALLEL_COLS = [
    "method",
    "points",
    "grid",
    "batch",
    "threads",
    "s_per_step",
    "step_vs_k1",
    "step_vs_one_core",
    "network_s",
    "solve_s",
    "solve_vs_k1",
    "lm_iters",
]
HC_BACKEND_COLS = ["points", "w_rel_diff", "grad_rel_diff", "s_cholesky", "s_cvxpylayers", "cvxpylayers_vs_cholesky"]


@renders("hard-constraints")
def hard_constraints(path: str | Path | None = None) -> str:
    rows = _rows("hard-constraints", path)
    scaling = []
    for problem in dict.fromkeys(r["problem"] for r in rows if r["part"] == "scaling"):
        pts = {}
        for r in rows:
            if r["part"] == "scaling" and r["problem"] == problem:
                pts.setdefault(r["points"], {})[r["experts"]] = r["s_per_step"]
        for m, by_k in sorted(pts.items()):
            scaling.append(
                {
                    "problem": problem,
                    "points": m,
                    "s_per_step_k1": by_k.get(1),
                    "s_per_step_k4": by_k.get(4),
                    "k4_vs_k1": round(by_k[4] / by_k[1], 3) if 1 in by_k and 4 in by_k else None,
                }
            )
    return "\n\n".join(
        [
            format_table([r for r in rows if r["part"] == "models"], HC_COLS),
            "Seconds per training step against constraint points (all experts together):\n\n"
            + format_table(scaling, ["problem", "points", "s_per_step_k1", "s_per_step_k4", "k4_vs_k1"]),
            "![step time vs constraint points](../results/hard-constraints-small-step_time_scaling.png)",
            "Experts in parallel on the CPU: K = 2 experts on 2 worker threads against K = 1 (all points in "
            "one expert, on every torch thread and on one core), the total number of constraint points on the paper's axis; "
            "`network_s`: FNO forward and backward and the Adam step, `solve_s`: the constraint solve, "
            "forward and implicit backward:\n\n"
            + format_table([r for r in rows if r["part"] == "parallel"], HC_PARALLEL_COLS),
            "cvxpylayers against the closed-form (Cholesky) layer on the same 2D-heat rows (ridge 1e-2):\n\n"
            + format_table([r for r in rows if r["part"] == "backends"], HC_BACKEND_COLS),
            "![diffusion-sorption: truth, predictions, errors](../results/hard-constraints-small-diffusion-sorption-predictions.png)",
            "![Navier-Stokes: truth, predictions, errors](../results/hard-constraints-small-navier-stokes-2d-predictions.png)",
        ]
    )


if missing := [name for name in BENCHMARKS if name not in _RENDERERS]:
    raise InputError(f"benchmarks {missing} have no docs table in flows.docs_tables; add a @renders(NAME) function")

#: Benchmark name -> its table renderer, in registry order.
TABLES: dict[str, Callable[..., str]] = {name: _RENDERERS[name] for name in BENCHMARKS}


def page(name: str, docs: str | Path = "docs") -> Path:
    """The docs page that holds benchmark ``name``'s table: ``docs/<name>.md``."""
    return Path(docs) / f"{name}.md"


def rendered(text: str, name: str, body: str) -> str:
    """``text`` with the block of table ``name`` replaced by ``body``."""
    pattern = re.compile(rf"(<!-- table:{re.escape(name)} -->\n).*?(<!-- /table:{re.escape(name)} -->)", re.S)
    if not pattern.search(text):
        raise InputError(f"no <!-- table:{name} --> ... <!-- /table:{name} --> block to fill in its docs page")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


#: The settings table's page (rendered from :class:`data.settings.Settings` by :func:`flows.settings.settings_table`).
SETTINGS_PAGE = "configuration.md"


def write_settings(docs: str | Path = "docs") -> Path:
    """Regenerate the table of every ``SCIFLOW_*`` setting in ``docs/configuration.md``."""
    from .settings import settings_table

    path = Path(docs) / SETTINGS_PAGE
    path.write_text(rendered(path.read_text(), "settings", settings_table()))
    return path


def write(docs: str | Path = "docs") -> list[Path]:
    """Regenerate every benchmark's table in its docs page, and the settings table; returns the pages written."""
    written = [write_settings(docs)]
    for name, render in TABLES.items():
        try:
            body = render()
        except FileNotFoundError:  # no committed results yet
            continue
        path = page(name, docs)
        path.write_text(rendered(path.read_text(), name, body))
        written.append(path)
    return written


if __name__ == "__main__":
    if "--write" in sys.argv:
        write()
    else:
        for render in TABLES.values():
            print(render(), end="\n\n")

"""``nightly-benchmark`` flow: every stage of the project at one scale, in one tracked run.

Stages: PETSc data generation for each PDE family, the linear-solver benchmark (DCDM vs
CG / ICPCG / DPCG / GAMG), the neural-ODE regularization benchmark, the constrained-optimizer
benchmark and the hard-constraint benchmark (soft PINN vs PI-HC vs PI-HC-MoE). The flow run is the parent MLflow run; each
stage's flow run is nested under it.

After the stages, every key metric is compared with the previous successful night at the same
scale (:mod:`flows.regression`): the report goes to a Prefect markdown artifact and to the MLflow
run as ``report.md``; a regression beyond ``regression_threshold`` fails the flow run (and ends
the parent MLflow run FAILED with the list) unless ``fail_on_regression`` is off.
"""

from __future__ import annotations

import time
from typing import Literal

from . import settings

settings.configure()

from prefect import flow, get_run_logger  # noqa: E402
from pydantic import Field  # noqa: E402
from typing_extensions import Annotated  # noqa: E402

from data.spec import DarcySpec, HeatSpec, PoissonSpec  # noqa: E402

from . import regression, tracking  # noqa: E402
from .generate import generate_dataset  # noqa: E402
from .results import format_by, publish  # noqa: E402
from .scales import Scale  # noqa: E402

DATASETS = {
    "smoke": [
        PoissonSpec(n=16, n_train=4, n_test=2),
        DarcySpec(n=16, n_train=4, n_test=2),
        HeatSpec(n=16, dim=1, n_train=4, n_test=2, n_times=4),
    ],
    "small": [
        PoissonSpec(n=64, n_train=64, n_test=16, obstacle="disks"),
        DarcySpec(n=64, n_train=256, n_test=64),
        HeatSpec(n=64, dim=2, n_train=32, n_test=8, n_times=10),
    ],
    "paper": [
        PoissonSpec(n=64, dim=3, n_train=1000, n_test=100, obstacle="disks"),
        DarcySpec(n=128, n_train=1000, n_test=100),
        HeatSpec(n=128, dim=2, n_train=1000, n_test=100, n_times=20),
    ],
}


def _linear_stage(scale: str, run_id: str) -> list[dict]:
    """Run benchmark-linear-solvers; summarise it as one row per method (largest grid, GRF
    right-hand side, tightest tolerance) with the iteration growth across grid sizes."""
    from .benchmarks.linear import SIZES, TOLS
    from .dcdm import benchmark_linear_solvers

    rows = benchmark_linear_solvers(scale=scale, parent_run_id=run_id)
    hi = SIZES[scale][-1]
    growth = {r["method"]: r["growth"] for r in rows if r["problem"].startswith("growth-")}
    return [
        {"stage": "benchmark-linear-solvers", "problem": r["problem"], "scale": scale, "method": r["method"],
         "iterations": r["iterations"], "converged": r["converged"], "iters_vs_icpcg": r["iters_vs_icpcg"],
         "iteration_growth": growth.get(r["method"]), "seconds": r["seconds"]}
        for r in rows
        if r["problem"].endswith(f"-{hi}") and r["rhs"] == "grf" and r["tol"] == TOLS[-1]
    ]


def _neural_ode_stage(scale: str, run_id: str) -> list[dict]:
    """Run benchmark-neural-odes; one row per task and regularizer."""
    from .neural_ode import benchmark_neural_odes

    return [
        {"stage": "benchmark-neural-odes", "problem": r["problem"], "scale": scale, "method": r["method"],
         "metric": r["metric"], "value": r["value"], "predict_nfe": r["predict_nfe"], "nfe_ratio": r["nfe_ratio"],
         "seconds": r["train_seconds"]}
        for r in benchmark_neural_odes(scale=scale, parent_run_id=run_id)
    ]


def _optimizer_stage(scale: str, run_id: str) -> list[dict]:
    """Run benchmark-optimizers; one row per method for the HS set (solved fraction, median
    outer iterations), per method and grid for the inverse problem, per method for the bilevel
    problems."""
    from .optimize import benchmark_optimizers

    keep = ("n_solved", "solved_fraction", "median_outer", "outer_vs_l1sqp", "converged", "kkt", "outer", "time_vs_trust_constr",
            "distance", "test_accuracy", "time_vs_implicit", "seconds")
    return [
        {"stage": "benchmark-optimizers", "problem": r["problem"], "scale": scale, "method": r["method"],
         **{k: r[k] for k in keep if k in r}}
        for r in benchmark_optimizers(scale=scale, parent_run_id=run_id)
        if r["part"] != "hs" or "solved_fraction" in r
    ]


def _hard_constraint_stage(scale: str, run_id: str) -> list[dict]:
    """Run benchmark-hard-constraints; one row per problem and model (soft / PI-HC / PI-HC-MoE)."""
    from .hard_constraint import benchmark_hard_constraints

    keep = ("rel_l2", "l2_vs_soft", "l2_vs_hc", "residual", "jump_mean", "s_per_step", "step_vs_hc", "infer_s")
    return [
        {"stage": "benchmark-hard-constraints", "problem": r["problem"], "scale": scale, "method": r["method"],
         **{k: r[k] for k in keep}}
        for r in benchmark_hard_constraints(scale=scale, parent_run_id=run_id) if r["part"] == "models"
    ]


class RegressionError(RuntimeError):
    """A metric got worse than the previous successful night by more than the threshold."""


def _regression_check(scale: str, rows: list[dict], run_id: str, threshold: float) -> list[dict]:
    """Compare ``rows`` with the previous successful nightly run at ``scale``; write the report
    (Prefect markdown artifact ``nightly-<scale>-regressions``, MLflow ``report.md``) and return
    the comparison. Wall-clock metrics are left out at ``smoke`` scale (milliseconds of noise)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    logger = get_run_logger()
    client = tracking.client()
    previous = regression.find_previous_run(client, tracking.experiment_id(), scale, exclude_run_id=run_id)
    prev_rows: list[dict] = []
    if previous is not None:
        try:
            prev_rows = regression.previous_rows(client, previous.info.run_id, scale)
        except Exception as exc:  # an old run without the artifact, or an unreadable one: no baseline
            logger.warning("previous night %s has no readable %s (%s); not comparing", previous.info.run_id,
                           regression.results_artifact(scale), exc)
            previous = None
    metrics = regression.METRICS if scale != "smoke" else regression.without_timings()
    comparison = regression.compare(rows, prev_rows, threshold, metrics) if previous is not None else []
    label = lambda run: f"`{run.info.run_name}` ({run.info.run_id})"  # noqa: E731
    current = client.get_run(run_id)
    report = regression.render_markdown(
        comparison, threshold, title=f"Nightly regression report (scale={scale})", current=label(current),
        previous=label(previous) if previous is not None else None, current_rows=rows, previous_rows=prev_rows)
    if scale == "smoke":
        report += "\nWall-clock metrics are not compared at scale=smoke.\n"
    client.log_text(run_id, report, "report.md")
    bad = regression.regressions(comparison)
    tracking.log_metrics(run_id, {"regressions": len(bad)})
    client.set_tag(run_id, "sciflow.regressions", str(len(bad)))
    if previous is not None:
        client.set_tag(run_id, "sciflow.baseline_run_id", previous.info.run_id)
    if flow_run.id:
        create_markdown_artifact(markdown=report, key=f"nightly-{scale}-regressions",
                                 description=f"nightly-benchmark scale={scale}: tonight vs the previous successful night")
    return comparison


@flow(name="nightly-benchmark", validate_parameters=True)
def nightly_benchmark(
    scale: Scale = "smoke",
    chunk_size: int = 16,
    regression_threshold: Annotated[float, Field(gt=0, le=100, description="relative change that counts as a regression (0.2 = 20%)")] = 0.2,
    fail_on_regression: bool = True,
    datagen_runner: Literal["threads", "dask"] = "threads",
) -> list[dict]:
    """Run every stage at ``scale`` ("smoke": seconds, "small": minutes on 2 CPU cores,
    "paper": the papers' sizes on a GPU worker); returns and publishes the results table.

    Then compares each stage's key metrics with the previous successful night at the same
    scale; with ``fail_on_regression`` a regression beyond ``regression_threshold`` fails the
    run (the report is written either way). ``datagen_runner="dask"`` fans the data-generation
    chunks out through Dask (see ``generate-dataset``).
    """
    logger = get_run_logger()
    for orphan in tracking.reap_orphans():
        logger.warning("ended MLflow run %s left RUNNING by a dead process (status KILLED)", orphan)
    rows: list[dict] = []
    t_start = time.perf_counter()
    params = {"scale": scale, "chunk_size": chunk_size, "regression_threshold": regression_threshold,
              "fail_on_regression": fail_on_regression, "datagen_runner": datagen_runner}
    with tracking.mlflow_run(f"nightly-{scale}", params, {"sciflow.stage": "nightly"}) as run_id:
        for spec in DATASETS[scale]:
            t0 = time.perf_counter()
            ref = generate_dataset(spec=spec, chunk_size=chunk_size, parent_run_id=run_id, runner=datagen_runner)
            seconds = time.perf_counter() - t0
            n = spec.n_train + spec.n_test
            rows.append(
                {
                    "stage": "generate-dataset",
                    "problem": f"{spec.family}-{spec.n}^{getattr(spec, 'dim', 2)}",
                    "scale": scale,
                    "samples": n,
                    "seconds": round(seconds, 3),
                    "samples_per_s": round(n / seconds, 2),
                    "digest": ref.digest[:12],
                }
            )
        rows += _linear_stage(scale, run_id)
        rows += _neural_ode_stage(scale, run_id)
        rows += _optimizer_stage(scale, run_id)
        rows += _hard_constraint_stage(scale, run_id)
        tracking.log_metrics(run_id, {"rows": len(rows), "seconds_total": time.perf_counter() - t_start})
        publish(f"nightly-{scale}", rows, {"scale": scale}, run_id, description=f"nightly benchmark at scale={scale}")
        logger.info("nightly results\n%s", format_by(rows, "stage"))
        comparison = _regression_check(scale, rows, run_id, regression_threshold)
        bad = regression.regressions(comparison)
        if bad:
            message = regression.summary(comparison, regression_threshold)
            if fail_on_regression:
                raise RegressionError(message)  # the parent MLflow run ends FAILED with it in sciflow.error
            logger.warning("%s\n(fail_on_regression is off: the run completes)", message)
        elif comparison:
            logger.info("no regressions against the previous night (%d metrics compared)", len(comparison))
    return rows


if __name__ == "__main__":  # python -m flows.nightly --scale smoke
    import sys

    from .cli import main

    sys.exit(main(["run", "nightly", *sys.argv[1:]]))

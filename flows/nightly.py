"""``nightly-benchmark`` flow: every stage of the project at one scale, in one tracked run.

Stages: PETSc data generation of exactly the datasets the benchmarks will read
(:func:`datasets_for`, from each stage module's ``datasets(scale)``), through the cached
``generate-dataset`` flow, then every benchmark of :data:`flows.benchmarks.BENCHMARKS` marked as
a stage (:data:`STAGES`: the linear solvers, the neural operators, the neural ODEs, the
constrained optimizers and the hard constraints), which find those datasets stored. The flow run
is the parent MLflow run; each stage's flow run is nested under it.

Inline (``dispatch="inline"``) the stages run one after another as subflows of this process
(PETSc and torch's thread pools are per process: stages in threads would share them). With
``dispatch="deployments"`` up to ``stage_concurrency`` stages run at once, each a flow run of its
deployment in its own process, on the pool that deployment names. Every benchmark training
checkpoints under ``$SCIFLOW_HOME/models`` (:mod:`flows.benchmarks.training`), so a night killed
mid-way and run again retrains only what had not finished.

After the stages, every key metric is compared with the previous successful night at the same
scale (:mod:`flows.regression`): the report goes to a Prefect markdown artifact and to the MLflow
run as ``report.md``; a regression beyond ``regression_threshold`` fails the flow run (and ends
the parent MLflow run FAILED with the list) unless ``fail_on_regression`` is off.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from prefect import get_run_logger
from pydantic import Field

import data
from data.errors import InputError, SciflowError
from data.spec import PDESpec

from . import regression, tracking
from .benchmarks import BENCHMARKS, Benchmark
from .generate import generate_dataset, spec_label
from .names import run_name
from .results import format_by, format_table, publish
from .scales import Scale, check_scale
from .settings import flow

#: Stage (= the benchmark's flow name) -> its benchmark, for every benchmark marked ``stage``, in
#: registry order.
STAGES: dict[str, Benchmark] = {b.flow_name: b for b in BENCHMARKS.values() if b.stage and b.flow_name}

#: A stage name, as a flow parameter (a choice list in the Prefect UI form).
Stage = Literal[tuple(STAGES)]  # type: ignore[valid-type]


def datasets_for(scale: str) -> list[PDESpec]:
    """The datasets the night generates first: every spec a stage's benchmark module lists in its
    ``datasets(scale)`` (the ones it reads), once each (by spec hash), in stage order."""
    check_scale(scale)
    specs: dict[str, PDESpec] = {}
    for bench in STAGES.values():
        listed = getattr(bench.load(), "datasets", None)
        for spec in listed(scale) if listed is not None else []:
            specs.setdefault(data.spec_hash(spec), spec)
    return list(specs.values())


#: Deployment name of each stage's flow on the ``gpu`` pool (infra/cluster/prefect.yaml); the
#: ``local`` deployments (infra/prefect.yaml) are named after their flow.
GPU_DEPLOYMENT = "gpu"


class StageError(SciflowError, RuntimeError):
    """A dispatched stage did not complete (failed, crashed, cancelled or timed out)."""


def deployment_for(stage: str, gpu_stages: list[str]) -> str:
    """``<flow>/<deployment>`` that runs ``stage``: ``<flow>/gpu`` for a GPU stage, else ``<flow>/<flow>``."""
    return f"{stage}/{GPU_DEPLOYMENT if stage in gpu_stages else stage}"


def _stage_results_run(client, flow_run_id: str, benchmark: str, run_id: str):
    """The MLflow run a dispatched benchmark flow run logged its table to (tagged with its
    Prefect flow-run id by ``flows.tracking``; nested under the night's run ``run_id``, so in
    the night's experiment)."""
    runs = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`sciflow.stage` = 'bench-{benchmark}'",
        max_results=2,
    )
    if len(runs) != 1:
        raise StageError(
            f"flow run {flow_run_id} completed but {len(runs)} MLflow runs carry its results "
            f"(tag prefect.flow_run_id, stage bench-{benchmark}); expected exactly one"
        )
    return runs[0]


def _dispatch(stage: str, scale: str, run_id: str, deployment: str, timeout_s: float) -> list[dict]:
    """Run ``stage`` as a flow run of ``deployment`` (a child of this flow run, picked up by
    whichever worker serves that deployment's pool), wait for it, and read its result rows
    back from its MLflow run, where every worker writes (the tracking server is the shared
    store: no Prefect result storage needs to be shared between pools).

    A child that has not finished after ``timeout_s`` is cancelled, so nothing keeps running
    unattended; one that ends in any state but COMPLETED raises :class:`StageError` with its
    state and message."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    logger = get_run_logger()
    benchmark = STAGES[stage].name
    logger.info("dispatching %s to deployment %s", stage, deployment)
    child = run_deployment(
        name=deployment,
        parameters={"scale": scale, "parent_run_id": run_id},
        timeout=timeout_s,
        poll_interval=2,
        as_subflow=True,
    )
    state = child.state
    if state is None or not state.is_final():
        with get_client(sync_client=True) as prefect_client:
            prefect_client.set_flow_run_state(
                child.id, Cancelling(message=f"stage timeout ({timeout_s:.0f} s) in nightly-benchmark"), force=True
            )
        raise StageError(
            f"{stage}: flow run {child.name} ({child.id}) of {deployment} was still "
            f"{state.name if state else 'unscheduled'} after {timeout_s:.0f} s (is a worker serving its "
            f"pool?); cancelled it"
        )
    if not state.is_completed():
        raise StageError(
            f"{stage}: flow run {child.name} ({child.id}) of {deployment} ended {state.name}: {state.message}"
        )
    client = tracking.client()
    run = _stage_results_run(client, str(child.id), benchmark, run_id)
    rows = regression.run_rows(client, run.info.run_id, f"results/bench-{benchmark}-{scale}.json")
    logger.info("%s: flow run %s completed, %d rows (MLflow run %s)", stage, child.name, len(rows), run.info.run_id)
    return rows


def _stage_rows(
    stage: str, scale: str, run_id: str, dispatch: str, gpu_stages: list[str], timeout_s: float
) -> list[dict]:
    """The stage's full result rows: from the flow called in this process (a subflow) or from a
    flow run of its deployment."""
    if dispatch == "deployments":
        return _dispatch(stage, scale, run_id, deployment_for(stage, gpu_stages), timeout_s)
    return STAGES[stage].load_flow()(scale=scale, parent_run_id=run_id)


def _run_stages(
    scale: str, run_id: str, dispatch: str, gpu_stages: list[str], timeout_s: float, concurrency: int
) -> dict[str, list[dict]]:
    """Every stage's full rows, by stage in :data:`STAGES` order.

    Inline, one after another (the first failure stops the night). Dispatched, up to
    ``concurrency`` stage flow runs at once, each started by a ``dispatch-<stage>`` task of this
    flow run (so each child flow run stays linked to it); every stage runs to its end, and the
    night then fails naming each stage that did not complete."""
    if dispatch != "deployments":
        return {stage: _stage_rows(stage, scale, run_id, dispatch, gpu_stages, timeout_s) for stage in STAGES}
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner

    dispatch_stage = task(
        _stage_rows,
        name="dispatch-stage",
        task_run_name="dispatch-{stage}",
        cache_policy=NO_CACHE,
        persist_result=False,
    )
    with ThreadPoolTaskRunner(max_workers=concurrency) as runner:
        futures = {
            stage: runner.submit(
                dispatch_stage,
                {
                    "stage": stage,
                    "scale": scale,
                    "run_id": run_id,
                    "dispatch": dispatch,
                    "gpu_stages": gpu_stages,
                    "timeout_s": timeout_s,
                },
            )
            for stage in STAGES
        }
        for future in futures.values():
            future.wait()
    out, failed = {}, []
    for stage, future in futures.items():
        try:
            out[stage] = future.result()
        except Exception as exc:  # noqa: BLE001 (each failed stage is named below)
            failed.append(f"{stage}: {exc}")
    if failed:
        raise StageError(f"{len(failed)} of {len(STAGES)} stages did not complete:\n" + "\n".join(failed))
    return out


def _linear_summary(rows: list[dict], scale: str) -> list[dict]:
    """One row per method (largest grid, GRF right-hand side, tightest tolerance) with the
    iteration growth across grid sizes."""
    from .benchmarks.linear import SIZES, TOLS

    hi = SIZES[scale][-1]
    growth = {r["method"]: r["growth"] for r in rows if r["problem"].startswith("growth-")}
    return [
        {
            "problem": r["problem"],
            "scale": scale,
            "method": r["method"],
            "iterations": r["iterations"],
            "converged": r["converged"],
            "iters_vs_icpcg": r["iters_vs_icpcg"],
            "iteration_growth": growth.get(r["method"]),
            "seconds": r["seconds"],
        }
        for r in rows
        if r["problem"].endswith(f"-{hi}") and r["rhs"] == "grf" and r["tol"] == TOLS[-1]
    ]


def _operator_summary(rows: list[dict], scale: str) -> list[dict]:
    """One row per model (dense FNO, TFNO, MG-TFNO): error, compression and speed vs FNO."""
    keep = ("params", "test_l2", "test_l2_2x", "compression_vs_fno", "l2_vs_fno", "input_domain", "sec_per_epoch")
    return [
        {"problem": r["problem"], "scale": scale, "method": r["method"], **{k: r[k] for k in keep if k in r}}
        for r in rows
    ]


def _neural_ode_summary(rows: list[dict], scale: str) -> list[dict]:
    """One row per task and regularizer."""
    return [
        {
            "problem": r["problem"],
            "scale": scale,
            "method": r["method"],
            "metric": r["metric"],
            "value": r["value"],
            "predict_nfe": r["predict_nfe"],
            "nfe_ratio": r["nfe_ratio"],
            "seconds": r["train_seconds"],
        }
        for r in rows
    ]


def _optimizer_summary(rows: list[dict], scale: str) -> list[dict]:
    """One row per method for the HS set (solved fraction, median outer iterations), per method
    and grid for the inverse problem, per method for the bilevel problems."""
    keep = (
        "n_solved",
        "solved_fraction",
        "median_outer",
        "outer_vs_l1sqp",
        "converged",
        "kkt",
        "outer",
        "time_vs_trust_constr",
        "distance",
        "test_accuracy",
        "time_vs_implicit",
        "seconds",
    )
    return [
        {"problem": r["problem"], "scale": scale, "method": r["method"], **{k: r[k] for k in keep if k in r}}
        for r in rows
        if r["part"] != "hs" or "solved_fraction" in r
    ]


def _hard_constraint_summary(rows: list[dict], scale: str) -> list[dict]:
    """One row per problem and model (soft / PI-HC / PI-HC-MoE)."""
    keep = ("rel_l2", "l2_vs_soft", "l2_vs_hc", "residual", "jump_mean", "s_per_step", "step_vs_hc", "infer_s")
    return [
        {"problem": r["problem"], "scale": scale, "method": r["method"], **{k: r[k] for k in keep}}
        for r in rows
        if r["part"] == "models"
    ]


#: Benchmark name -> the function that turns its full rows into the night's summary rows (the
#: night adds each row's ``stage``).
SUMMARIES = {
    "linear": _linear_summary,
    "operators": _operator_summary,
    "neural-odes": _neural_ode_summary,
    "optimizers": _optimizer_summary,
    "hard-constraints": _hard_constraint_summary,
}
if missing := [b.name for b in STAGES.values() if b.name not in SUMMARIES]:
    raise InputError(
        f"nightly stages {missing} (flows.benchmarks.BENCHMARKS, stage=True) have no summary in "
        "flows.nightly.SUMMARIES; add one"
    )


def _results_section(client, rows: list[dict], scale: str, run_id: str) -> tuple[str, str]:
    """The report's second half: the overview figure (logged beside ``report.md`` as
    ``nightly-<scale>.png``), every stage's table, and where each stage's own plots are.

    Returned twice: for ``report.md`` in MLflow (the figure by its relative artifact path) and
    for the Prefect markdown artifact, whose UI cannot resolve a relative path: there the figure
    is inline, a small PNG (dpi 60) as a base64 ``data:`` URI, which Prefect's markdown renderer
    shows as an ``<img>`` with no server and no credentials in between (with a tracking server,
    a link to the full-size artifact follows it)."""
    import base64
    import io

    from .plots import nightly_overview

    head = ["", f"# Results (scale={scale})", ""]
    inline = list(head)
    fig = nightly_overview(rows, title=f"nightly-benchmark, scale={scale}")
    if fig is not None:
        tracking.log_figure(run_id, fig, f"nightly-{scale}.png")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=60)
        fig.clf()
        alt = "overview: one headline metric per stage"
        head += [f"![{alt}](nightly-{scale}.png)", ""]
        inline += [f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})", ""]
        if url := tracking.artifact_url(run_id, f"nightly-{scale}.png"):
            inline += [f"[full-size figure in MLflow]({url})", ""]
    lines = []
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["stage"], []).append(row)
    for stage, group in groups.items():
        lines += [
            f"## {stage}",
            "",
            format_table([{k: v for k, v in r.items() if k not in ("stage", "scale")} for r in group]),
            "",
        ]
    plots = []
    experiment = client.get_run(run_id).info.experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    for child in sorted(children, key=lambda r: r.info.start_time or 0):
        pngs = [a.path for a in client.list_artifacts(child.info.run_id) if a.path.endswith(".png")]
        if pngs:
            plots.append(
                f"- {child.info.run_name} (MLflow run `{child.info.run_id}`): " + ", ".join(f"`{p}`" for p in pngs)
            )
    if plots:
        lines += ["## Plots of each stage", "", *plots, ""]
    return "\n".join(head + lines), "\n".join(inline + lines)


#: A night's stages as they read in its metric names (``operators/<method>/<problem>/<field>``):
#: the benchmark's name, ``data`` for dataset generation.
STAGE_NAMES: dict[str, str] = {"generate-dataset": "data", **{stage: b.name for stage, b in STAGES.items()}}

#: The alias the nightly moves to every model version it trained.
ALIAS = "nightly"


def _log_night(run_id: str, rows: list[dict]) -> None:
    """The night's rows as MLflow data on its run: every number as a metric
    ``<stage>/<method>/<problem>/<field>`` (:func:`flows.regression.flatten_rows`), digests as
    tags of the same names, and the rows as the table ``comparison.json``."""
    metrics, tags = regression.flatten_rows(rows, STAGE_NAMES)
    tracking.log_metrics(run_id, metrics)
    tracking.log_tags(run_id, tags)
    tracking.log_table(run_id, rows)


def _night_models(client, run_id: str) -> list:
    """The model versions registered by the runs of this night (any run nested under ``run_id``:
    the method runs of each benchmark, ``train-dcdm``), the newest per name, sorted by name."""
    experiment = client.get_run(run_id).info.experiment_id
    ids, frontier = [], [run_id]
    while frontier:  # the night's tree, level by level
        level = []
        for parent in frontier:
            level += [
                r.info.run_id
                for r in client.search_runs(
                    [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000
                )
            ]
        ids += level
        frontier = level
    newest: dict[str, object] = {}
    for i in range(0, len(ids), 50):
        quoted = ", ".join(f"'{r}'" for r in ids[i : i + 50])
        for version in client.search_model_versions(f"run_id IN ({quoted})"):
            if version.name not in newest or int(version.version) > int(newest[version.name].version):  # type: ignore[attr-defined]
                newest[version.name] = version
    return [newest[n] for n in sorted(newest)]


class RegressionError(SciflowError, RuntimeError):
    """A metric got worse than the previous successful night by more than the threshold."""


def _regression_check(
    scale: str, rows: list[dict], run_id: str, threshold: float, models: list | None = None
) -> list[dict]:
    """Compare ``rows`` with the previous successful nightly run at ``scale`` (its metrics, read
    back into rows); write the report (Prefect markdown artifact ``nightly-<scale>-regressions``,
    MLflow ``report.md``), listing the ``models`` aliased tonight, and return the comparison.
    Wall-clock metrics are left out at ``smoke`` scale (milliseconds of noise)."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.runtime import flow_run

    logger = get_run_logger()
    client = tracking.client()
    experiment = client.get_run(run_id).info.experiment_id
    previous = regression.find_previous_run(client, experiment, scale, exclude_run_id=run_id)
    prev_rows: list[dict] = []
    if previous is not None:
        prev_rows = regression.rows_from_run(previous, STAGE_NAMES)
        if not prev_rows:  # a night from before its rows were metrics: no baseline
            logger.warning("previous night %s has no row metrics; not comparing", previous.info.run_id)
            previous = None
    metrics = regression.METRICS if scale != "smoke" else regression.without_timings()
    comparison = regression.compare(rows, prev_rows, threshold, metrics) if previous is not None else []
    label = lambda run: f"`{run.info.run_name}` ({run.info.run_id})"  # noqa: E731
    current = client.get_run(run_id)
    report = regression.render_markdown(
        comparison,
        threshold,
        title=f"Nightly regression report (scale={scale})",
        current=label(current),
        previous=label(previous) if previous is not None else None,
        current_rows=rows,
        previous_rows=prev_rows,
    )
    if scale == "smoke":
        report += "\nWall-clock metrics are not compared at scale=smoke.\n"
    if models:
        report += (
            f"\n## Models trained tonight\n\n`@{ALIAS}` moves to these versions when the night passes "
            f'(load one with `mlflow.pytorch.load_model("models:/NAME@{ALIAS}")`):\n\n'
            + "".join(f"- `{v.name}` version {v.version}\n" for v in models)
        )
    results, results_inline = _results_section(client, rows, scale, run_id)
    client.log_text(run_id, report + results, "report.md")
    bad = regression.regressions(comparison)
    tracking.log_metrics(run_id, {"regressions": len(bad)})
    client.set_tag(run_id, "sciflow.regressions", str(len(bad)))
    if previous is not None:
        client.set_tag(run_id, "sciflow.baseline_run_id", previous.info.run_id)
    if flow_run.id:
        create_markdown_artifact(
            markdown=report + results_inline,
            key=f"nightly-{scale}-regressions",
            description=f"nightly-benchmark scale={scale}: tonight vs the previous successful night",
        )
    return comparison


@flow(name="nightly-benchmark", validate_parameters=True, flow_run_name=run_name("nightly-{scale}-{date}"))
def nightly_benchmark(
    scale: Scale = "smoke",
    chunk_size: int = 16,
    regression_threshold: Annotated[
        float, Field(gt=0, le=100, description="relative change that counts as a regression (0.2 = 20%)")
    ] = 0.2,
    fail_on_regression: bool = True,
    datagen_runner: Literal["threads", "dask"] = "threads",
    dispatch: Annotated[
        Literal["inline", "deployments"],
        Field(
            description="inline: each benchmark runs as a subflow in this process; deployments: each runs as a flow "
            "run of its deployment, on the pool that deployment names"
        ),
    ] = "inline",
    gpu_stages: Annotated[
        list[Stage],
        Field(
            description="stages sent to their `gpu` deployment (pool `gpu`, infra/cluster/prefect.yaml); needs "
            "dispatch=deployments"
        ),
    ] = [],  # noqa: B006 (pydantic copies defaults)
    stage_timeout_minutes: Annotated[
        float, Field(gt=0, description="a dispatched stage still running after this is cancelled and fails the run")
    ] = 720,
    stage_concurrency: Annotated[
        int,
        Field(
            ge=1,
            le=16,
            description="dispatch=deployments: stage flow runs started at once (each in its own process; "
            "inline stages run one after another)",
        ),
    ] = 2,
) -> list[dict]:
    """Run every stage at ``scale`` ("smoke": seconds, "small": minutes on 2 CPU cores,
    "paper": the papers' sizes on a GPU worker); returns and publishes the results table.

    Data generation runs in this flow run, for exactly the datasets the stages read
    (:func:`datasets_for`; ``datagen_runner="dask"`` fans its chunks out through Dask, see
    ``generate-dataset``). Each benchmark stage (:data:`STAGES`) runs either inline, as a subflow,
    one after another, or with ``dispatch="deployments"`` as a flow run of its deployment, up to
    ``stage_concurrency`` at once: the ``local`` pool's ``<flow>/<flow>``, or ``<flow>/gpu`` on the
    ``gpu`` pool for the stages listed in ``gpu_stages``; this run waits for each and reads its
    table back from MLflow.

    Then compares each stage's key metrics with the previous successful night at the same
    scale; with ``fail_on_regression`` a regression beyond ``regression_threshold`` fails the
    run (the report is written either way).
    """
    if gpu_stages and dispatch != "deployments":
        raise InputError(
            f"gpu_stages={gpu_stages} need dispatch='deployments' (inline stages run in this process): "
            "set dispatch='deployments' or leave gpu_stages empty"
        )
    logger = get_run_logger()
    for orphan in tracking.reap_orphans():
        logger.warning("ended MLflow run %s left RUNNING by a dead process (status KILLED)", orphan)
    rows: list[dict] = []
    t_start = time.perf_counter()
    params = {
        "scale": scale,
        "chunk_size": chunk_size,
        "regression_threshold": regression_threshold,
        "fail_on_regression": fail_on_regression,
        "datagen_runner": datagen_runner,
        "dispatch": dispatch,
        "gpu_stages": ",".join(gpu_stages) or "none",
        "stage_concurrency": stage_concurrency,
    }
    with tracking.mlflow_run(f"nightly-{scale}", params, {"sciflow.stage": "nightly"}) as run_id:
        labels: set[str] = set()
        for spec in datasets_for(scale):
            label = spec_label(spec)
            label = label if label not in labels else f"{label}-{data.spec_hash(spec)[:8]}"  # two specs, one grid
            labels.add(label)
            t0 = time.perf_counter()
            ref = generate_dataset(spec=spec, chunk_size=chunk_size, parent_run_id=run_id, runner=datagen_runner)
            seconds = time.perf_counter() - t0
            n = spec.n_train + spec.n_test
            rows.append(
                {
                    "stage": "generate-dataset",
                    "problem": label,
                    "scale": scale,
                    "samples": n,
                    "seconds": round(seconds, 3),
                    "samples_per_s": round(n / seconds, 2),
                    "digest": ref.digest[:12],
                }
            )
        t_stages = time.perf_counter()
        by_stage = _run_stages(scale, run_id, dispatch, gpu_stages, 60 * stage_timeout_minutes, stage_concurrency)
        logger.info("stages done in %.1f s (%s)", time.perf_counter() - t_stages, dispatch)
        for stage, stage_rows in by_stage.items():
            rows += [{"stage": stage, **row} for row in SUMMARIES[STAGES[stage].name](stage_rows, scale)]
        tracking.log_metrics(run_id, {"rows": len(rows), "seconds_total": time.perf_counter() - t_start})
        _log_night(run_id, rows)
        publish(f"nightly-{scale}", rows, {"scale": scale}, run_id, description=f"nightly benchmark at scale={scale}")
        logger.info("nightly results\n%s", format_by(rows, "stage"))
        models = _night_models(tracking.client(), run_id)
        comparison = _regression_check(scale, rows, run_id, regression_threshold, models)
        bad = regression.regressions(comparison)
        if bad:
            message = regression.summary(comparison, regression_threshold)
            if fail_on_regression:
                raise RegressionError(message)  # the parent MLflow run ends FAILED with it in sciflow.error
            logger.warning("%s\n(fail_on_regression is off: the run completes)", message)
        elif comparison:
            logger.info("no regressions against the previous night (%d metrics compared)", len(comparison))
        for version in models:  # a night that passes moves @nightly to what it trained
            tracking.set_alias(version.name, ALIAS, version.version)
        if models:
            logger.info("@%s now points at %s", ALIAS, ", ".join(f"{v.name}/{v.version}" for v in models))
            tracking.log_tags(run_id, {"sciflow.models": ", ".join(f"{v.name}/{v.version}" for v in models)[:5000]})
    return rows

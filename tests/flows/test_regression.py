"""Night-over-night regression check (flows/regression.py) and its use in the nightly flow.

The comparison is a plain function; the "previous successful night" query runs against a
throwaway MLflow SQLite store; the nightly flow's verdict (Failed state, FAILED MLflow parent
with the reason, report.md) is checked with its stages replaced by canned rows."""

import math
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from flows import regression
from flows.regression import compare, find_previous_run, previous_rows, render_markdown, summary

#: as the nightly shortens its stages in metric names (flows.nightly.STAGE_NAMES)
STAGE_NAMES = {"benchmark-linear-solvers": "linear", "generate-dataset": "data"}


def _row(method="cg", problem="poisson-64", stage="benchmark-linear-solvers", **metrics):
    return {"stage": stage, "problem": problem, "scale": "small", "method": method, **metrics}


def _status(comparison, metric, method="cg"):
    return next(c["status"] for c in comparison if c["metric"] == metric and c["method"] == method)


# ---------------------------------------------------------------------------------------------
# compare


def test_regression_beyond_the_threshold_is_flagged():
    cmp = compare([_row(iterations=15, converged=True)], [_row(iterations=10, converged=True)], threshold=0.2)
    entry = next(c for c in cmp if c["metric"] == "iterations")
    assert entry["status"] == "regression" and entry["change"] == pytest.approx(0.5)
    assert (entry["previous"], entry["current"], entry["direction"]) == (10, 15, "lower")
    assert _status(cmp, "converged") == "ok"
    assert regression.regressions(cmp) == [entry]


def test_higher_is_better_metrics_regress_when_they_fall():
    prev = [
        _row("local", "digits", "benchmark-neural-odes", metric="accuracy", value=0.90),
        _row("al-sketch", "hs", "benchmark-optimizers", solved_fraction=1.0, test_accuracy=0.8),
    ]
    cur = [
        _row("local", "digits", "benchmark-neural-odes", metric="accuracy", value=0.60),
        _row("al-sketch", "hs", "benchmark-optimizers", solved_fraction=0.95, test_accuracy=0.85),
    ]
    cmp = compare(cur, prev, threshold=0.2)
    assert _status(cmp, "accuracy", "local") == "regression"  # {"metric": "accuracy", "value": ...} pair
    assert _status(cmp, "solved_fraction", "al-sketch") == "regression"  # strict: one more unsolved problem counts
    assert _status(cmp, "test_accuracy", "al-sketch") == "ok"  # +6 %: better, but within the threshold


def test_an_improvement_is_not_flagged():
    cmp = compare([_row(iterations=5, rel_l2=0.01)], [_row(iterations=10, rel_l2=0.05)], threshold=0.2)
    assert {c["status"] for c in cmp} == {"improvement"}
    assert not regression.regressions(cmp)


def test_noise_below_the_threshold_or_the_floor_is_not_flagged():
    prev = [_row(iterations=100, kkt=1e-12, seconds=0.02), _row("gamg", iterations=3)]
    cur = [_row(iterations=115, kkt=5e-12, seconds=0.06), _row("gamg", iterations=4)]
    cmp = compare(cur, prev, threshold=0.2)
    assert _status(cmp, "iterations") == "ok"  # +15 % < 20 %
    assert _status(cmp, "kkt") == "ok"  # x5, but 4e-12 is below the residual's noise floor
    assert _status(cmp, "seconds") == "ok"  # x3, but 40 ms is below the wall-clock floor
    assert _status(cmp, "iterations", "gamg") == "ok"  # +33 %, one iteration: the floor


def test_missing_and_new_metrics_and_rows_are_reported():
    prev = [_row(iterations=10, iters_vs_icpcg=1.0), _row("dpcg", iterations=7)]
    cur = [_row(iterations=10, rel_l2=0.1), _row("dcdm-k2", iterations=4)]
    cmp = compare(cur, prev, threshold=0.2)
    assert _status(cmp, "rel_l2") == "new" and _status(cmp, "iters_vs_icpcg") == "missing"
    assert _status(cmp, "iterations", "dcdm-k2") == "new" and _status(cmp, "iterations", "dpcg") == "missing"
    new = next(c for c in cmp if c["method"] == "dcdm-k2")
    assert new["previous"] is None and new["current"] == 4 and new["change"] is None
    assert not regression.regressions(cmp)


def test_nan_zero_and_context_fields():
    prev = [
        _row(rel_l2=0.1, n_solved=0, digest="abc", message="ok"),
        _row("x", "poisson-16^2", "generate-dataset", seconds=0.1, samples_per_s=50.0),
    ]
    cur = [
        _row(rel_l2=math.nan, n_solved=2, digest="def", message="ok"),
        _row("x", "poisson-16^2", "generate-dataset", seconds=30.0, samples_per_s=0.2),
    ]
    cmp = compare(cur, prev, threshold=0.2)
    assert _status(cmp, "rel_l2") == "regression"  # became NaN
    assert _status(cmp, "n_solved") == "improvement"  # from zero: change is +inf
    assert {c["metric"] for c in cmp} == {
        "rel_l2",
        "n_solved",
    }  # digests, messages, cached datagen timings: not compared
    with pytest.raises(ValueError, match="threshold"):
        compare(cur, prev, threshold=0)


def test_the_threshold_is_a_parameter():
    cur, prev = [_row(iterations=23)], [_row(iterations=20)]  # +15 %
    assert _status(compare(cur, prev, threshold=0.2), "iterations") == "ok"
    assert _status(compare(cur, prev, threshold=0.1), "iterations") == "regression"


def test_markdown_report_and_summary():
    prev = [_row(iterations=10, rel_l2=0.05)]
    cur = [_row(iterations=20, rel_l2=0.01)]
    cmp = compare(cur, prev, threshold=0.2)
    md = render_markdown(cmp, 0.2, current="tonight", previous="last night", current_rows=cur, previous_rows=prev)
    assert "**1 regression(s)**" in md and "| stage | problem | method | metric |" in md
    bold = next(line for line in md.splitlines() if line.startswith("| **benchmark"))
    assert "**iterations**" in bold and "**+100.0%**" in bold and "**regression**" in bold
    plain = next(line for line in md.splitlines() if "| rel_l2 |" in line)
    assert "**" not in plain and "improvement" in plain and "-80.0%" in plain
    msg = summary(cmp, 0.2)
    assert msg.startswith("1 metric(s) regressed by more than 20%") and "iterations: 10 -> 20 (+100.0%" in msg
    assert "No previous successful night" in render_markdown([], 0.2, current="tonight", previous=None)


# ---------------------------------------------------------------------------------------------
# a night's rows as MLflow metrics, and back


def test_rows_flatten_to_metric_names_and_read_back():
    rows = [
        _row(iterations=12, converged=True, iters_vs_icpcg=float("nan"), message="ok"),
        _row("al-sketch", "hs+bt (3)", "benchmark-optimizers", solved_fraction=1.0, median_outer=None),
        {"stage": "generate-dataset", "problem": "poisson-16^2", "scale": "smoke", "seconds": 0.5, "digest": "abc"},
        _row("local", "digits", "benchmark-neural-odes", metric="accuracy", value=0.9),
    ]
    metrics, tags = regression.flatten_rows(rows, STAGE_NAMES)
    assert metrics["linear/cg/poisson-64/iterations"] == 12.0 and metrics["linear/cg/poisson-64/converged"] == 1.0
    assert math.isnan(metrics["linear/cg/poisson-64/iters_vs_icpcg"])
    assert metrics["benchmark-optimizers/al-sketch/hs-bt-3/solved_fraction"] == 1.0  # no short name: as is
    assert metrics["data/_/poisson-16-2/seconds"] == 0.5 and tags == {"data/_/poisson-16-2/digest": "abc"}
    assert metrics["benchmark-neural-odes/local/digits/accuracy"] == 0.9  # the {"metric", "value"} pair
    assert not any("message" in k or "median_outer" in k or "scale" in k for k in metrics)

    run = SimpleNamespace(data=SimpleNamespace(metrics={**metrics, "rows": 4.0}, tags={**tags, "mlflow.user": "x"}))
    back = regression.rows_from_run(
        run,
        {
            **STAGE_NAMES,
            "benchmark-optimizers": "benchmark-optimizers",
            "benchmark-neural-odes": "benchmark-neural-odes",
        },
    )
    by = {(r["stage"], r["problem"], r.get("method")): r for r in back}
    assert by[("generate-dataset", "poisson-16-2", None)] == {
        "stage": "generate-dataset",
        "problem": "poisson-16-2",
        "seconds": 0.5,
        "digest": "abc",
    }
    # matched against tonight's rows although the name differs from MLflow's ("hs+bt (3)"); shown as tonight's
    cmp = compare(rows, back, threshold=0.2)
    assert {c["status"] for c in cmp} == {"ok"} and {c["problem"] for c in cmp} == {"poisson-64", "hs+bt (3)", "digits"}


# ---------------------------------------------------------------------------------------------
# the previous successful night, in a throwaway MLflow store


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("nightly-test", artifact_location=(tmp_path / "artifacts").as_uri())
    return client, exp


def _night(client, exp, scale, status, start, rows=None, stage="nightly", parent=None):
    tags = {"sciflow.stage": stage, **({"mlflow.parentRunId": parent} if parent else {})}
    run = client.create_run(exp, start_time=start, tags=tags, run_name=f"nightly-{scale}")
    client.log_param(run.info.run_id, "scale", scale)
    if rows is not None:  # as the nightly logs them: flattened metrics
        metrics, texts = regression.flatten_rows(rows, STAGE_NAMES)
        for key, value in metrics.items():
            client.log_metric(run.info.run_id, key, value)
        for key, value in texts.items():
            client.set_tag(run.info.run_id, key, value)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time=start + 1000)
    return run.info.run_id


def test_find_previous_successful_night_at_the_same_scale(store):
    client, exp = store
    older = _night(client, exp, "smoke", "FINISHED", 1_000_000, rows=[_row(iterations=10)])
    newer = _night(client, exp, "smoke", "FINISHED", 2_000_000, rows=[_row(iterations=12)])
    _night(client, exp, "smoke", "FAILED", 3_000_000, rows=[_row(iterations=99)])  # a failed night is no baseline
    _night(client, exp, "small", "FINISHED", 4_000_000, rows=[_row(iterations=50)])  # another scale
    _night(client, exp, "smoke", "FINISHED", 5_000_000, stage="bench-linear", parent=newer)  # a child run
    current = _night(client, exp, "smoke", "RUNNING", 6_000_000)

    found = find_previous_run(client, exp, "smoke", exclude_run_id=current)
    assert found.info.run_id == newer
    back = {"stage": "benchmark-linear-solvers", "problem": "poisson-64", "method": "cg", "iterations": 12.0}
    assert previous_rows(client, newer, STAGE_NAMES) == [back]
    assert find_previous_run(client, exp, "smoke", exclude_run_id=newer).info.run_id == older
    assert find_previous_run(client, exp, "paper") is None


# ---------------------------------------------------------------------------------------------
# the nightly flow's verdict, stages replaced by canned rows (the real stages run in test_flows)


@pytest.mark.slow
def test_nightly_fails_on_a_regression_and_records_why(monkeypatch, tmp_path):
    from prefect.artifacts import Artifact

    from flows import nightly, tracking

    client = tracking.client()
    exp = client.create_experiment(
        f"nightly-regression-{tmp_path.name}", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    monkeypatch.setattr(tracking, "experiment_id", lambda name=None: exp)
    monkeypatch.setattr(nightly, "datasets_for", lambda scale: [])
    tonight = {"rows": []}
    monkeypatch.setattr(nightly, "_stage_rows", lambda stage, *args: [])
    monkeypatch.setitem(nightly.SUMMARIES, "linear", lambda rows, scale: [dict(r) for r in tonight["rows"]])

    def night(iterations, **params):
        tonight["rows"] = [
            _row(iterations=iterations, converged=True, scale="smoke"),
            _row("gamg", iterations=3, scale="smoke"),
        ]
        state = nightly.nightly_benchmark(scale="smoke", return_state=True, **params)
        flow_run_id = str(state.state_details.flow_run_id)
        run = client.search_runs([exp], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")[0]
        report = client.download_artifacts(run.info.run_id, "report.md")
        return state, run, open(report).read()

    state, run, report = night(10)  # first night: the baseline
    assert state.is_completed() and "No previous successful night" in report
    # the night's rows as metrics (what the next night compares with) and as a table
    assert (
        run.data.metrics["linear/cg/poisson-64/iterations"] == 10
        and run.data.metrics["linear/gamg/poisson-64/iterations"] == 3
    )
    assert "comparison.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the overview figure: by its artifact path in report.md, inline in the Prefect artifact (which cannot resolve it)
    assert "](nightly-smoke.png)" in report and "data:image" not in report
    md = Artifact.get("nightly-smoke-regressions")
    assert "](data:image/png;base64,iVBOR" in md.data and "](nightly-smoke.png)" not in md.data
    state, run, report = night(11)  # +10 %: noise
    assert state.is_completed() and run.data.tags["sciflow.regressions"] == "0" and "No regressions" in report

    state, run, report = night(20)  # +82 % against the 11 of the previous successful night
    assert state.is_failed()
    assert "regressed by more than 20%" in state.message and "iterations: 11 -> 20" in state.message
    assert run.info.status == "FAILED" and "RegressionError" in run.data.tags["sciflow.error"]
    assert "iterations: 11 -> 20" in run.data.tags["sciflow.error"] and "**iterations**" in report
    md = Artifact.get("nightly-smoke-regressions")
    assert md is not None and "**iterations**" in md.data

    # the failed night is not a baseline; switched off, the same regression is reported but does not fail
    state, run, report = night(20, fail_on_regression=False)
    assert state.is_completed() and run.data.tags["sciflow.regressions"] == "1" and "11 -> 20" in report


# ---------------------------------------------------------------------------------------------
# dispatch="deployments": a stage no worker picks up is cancelled at the timeout and fails the night


def test_a_dispatched_stage_nobody_runs_is_cancelled_at_the_timeout(monkeypatch, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows import nightly, tracking

    client = tracking.client()
    exp = client.create_experiment(
        f"nightly-dispatch-{tmp_path.name}", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    monkeypatch.setattr(tracking, "experiment_id", lambda name=None: exp)
    monkeypatch.setattr(nightly, "datasets_for", lambda scale: [])
    monkeypatch.setattr(nightly, "STAGES", {"benchmark-operators": nightly.STAGES["benchmark-operators"]})
    with get_client(sync_client=True) as prefect:
        prefect.create_work_pool(WorkPoolCreate(name=f"idle-{tmp_path.name}"[:50], type="process"))
        flow_id = prefect.create_flow_from_name("benchmark-operators")
        prefect.create_deployment(
            flow_id=flow_id,
            name="benchmark-operators",
            work_pool_name=f"idle-{tmp_path.name}"[:50],
            entrypoint="flows/operator.py:benchmark_operators",
        )
        state = nightly.nightly_benchmark(
            scale="smoke", dispatch="deployments", stage_timeout_minutes=0.05, return_state=True
        )
        assert state.is_failed()
        assert "benchmark-operators/benchmark-operators was still Scheduled after 3 s" in state.message
        assert "is a worker serving its pool?" in state.message
        child_id = state.message.split("(")[1].split(")")[0]
        child = prefect.read_flow_run(child_id)
        assert child.state.type.value in ("CANCELLED", "CANCELLING")  # nothing is left queued
        assert child.parent_task_run_id is not None  # it was this night's child
    run = client.search_runs([exp], filter_string=f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'")[
        0
    ]
    assert run.info.status == "FAILED" and "StageError" in run.data.tags["sciflow.error"]


def test_gpu_stages_need_dispatch_to_deployments():
    from flows.nightly import nightly_benchmark

    state = nightly_benchmark(scale="smoke", gpu_stages=["benchmark-operators"], return_state=True)
    assert state.is_failed() and "need dispatch='deployments'" in state.message
    state = nightly_benchmark(scale="smoke", gpu_stages=["benchmark-everything"], return_state=True)
    assert state.is_failed() and "gpu_stages" in state.message


# ---------------------------------------------------------------------------------------------
# dispatch="deployments": stages run concurrently, up to stage_concurrency at once


def _timed_night(monkeypatch, tmp_path, seconds: dict[str, float], concurrency: int, fail: str | None = None):
    """A dispatched smoke night whose stages are stand-ins that sleep ``seconds[stage]`` (a flow run
    in another process, as far as this one is concerned); returns its state and each stage's
    (start, end)."""
    import threading
    import time

    from flows import nightly, tracking
    from flows.benchmarks import BENCHMARKS

    client = tracking.client()
    exp = client.create_experiment(f"nightly-conc-{tmp_path.name}", artifact_location=(tmp_path / "a").as_uri())
    monkeypatch.setattr(tracking, "experiment_id", lambda name=None: exp)
    monkeypatch.setattr(nightly, "datasets_for", lambda scale: [])
    every = {b.flow_name: b for b in BENCHMARKS.values() if b.stage}  # (STAGES may be a previous night's stand-in)
    monkeypatch.setattr(nightly, "STAGES", {stage: every[stage] for stage in seconds})
    for stage in seconds:
        monkeypatch.setitem(nightly.SUMMARIES, every[stage].name, lambda rows, scale: [])
    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()

    def dispatch(stage, scale, run_id, deployment, timeout_s):
        assert deployment == f"{stage}/{stage}"
        t0 = time.perf_counter()
        time.sleep(seconds[stage])
        with lock:
            spans[stage] = (t0, time.perf_counter())
        if stage == fail:
            raise nightly.StageError(f"{stage}: flow run x (y) ended Failed: boom")
        return []

    monkeypatch.setattr(nightly, "_dispatch", dispatch)
    state = nightly.nightly_benchmark(
        scale="smoke", dispatch="deployments", stage_concurrency=concurrency, return_state=True
    )
    return state, spans


def _most_at_once(spans) -> int:
    edges = sorted([(t0, 1) for t0, _ in spans.values()] + [(t1, -1) for _, t1 in spans.values()])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_dispatched_stages_run_concurrently(monkeypatch, tmp_path):
    """Two stages at once take <= 1.2x the slowest of them (sequentially: the sum); four stages
    with stage_concurrency=2 never run more than two at once and take <= 1.2x two rounds."""
    from flows.nightly import STAGES

    stages = list(STAGES)  # (before the stand-in nights replace STAGES)
    assert len(stages) >= 4
    two = {"benchmark-linear-solvers": 3.0, "benchmark-operators": 2.0}
    state, spans = _timed_night(monkeypatch, tmp_path, two, concurrency=2)
    assert state.is_completed(), state.message
    wall = max(t1 for _, t1 in spans.values()) - min(t0 for t0, _ in spans.values())
    assert _most_at_once(spans) == 2 and wall <= 1.2 * max(two.values()), (wall, spans)

    four = dict.fromkeys(stages[:4], 2.0)
    state, spans = _timed_night(monkeypatch, tmp_path / "four", four, concurrency=2)
    assert state.is_completed(), state.message
    wall = max(t1 for _, t1 in spans.values()) - min(t0 for t0, _ in spans.values())
    assert len(spans) == 4 and _most_at_once(spans) == 2 and wall <= 1.2 * 2 * 2.0, (wall, spans)


def test_a_failed_dispatched_stage_fails_the_night_after_the_others_finish(monkeypatch, tmp_path):
    stages = {"benchmark-linear-solvers": 0.5, "benchmark-operators": 2.0}
    state, spans = _timed_night(monkeypatch, tmp_path, stages, concurrency=2, fail="benchmark-linear-solvers")
    assert state.is_failed() and set(spans) == set(stages)  # the other stage ran to its end
    assert "1 of 2 stages did not complete" in state.message and "benchmark-linear-solvers" in state.message
    assert "benchmark-operators:" not in state.message

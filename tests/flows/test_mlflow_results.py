"""Results as MLflow data, end to end on the embedded stack (ephemeral Prefect API, SQLite MLflow):
a benchmark flow run is one MLflow run with one child run per compared method (config as params,
every row number as a metric, the training history per epoch, the trained model registered), the
comparison as a table artifact, standard source tags, a link from the Prefect flow run; and a
registered model loads by alias in a fresh process outside the repository."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows import tracking

from helpers import LOAD_OUTSIDE_REPO

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

#: the operators benchmark's smoke table, shrunk for a test (two models, 16^2, tiny networks)
TINY = dict(
    n=16,
    n_train=8,
    n_test=2,
    n_test_2x=2,
    epochs=2,
    step_size=1,
    batch_size=4,
    hidden=8,
    modes=4,
    models=["fno", "mg-tfno-r0.05"],
)


async def _artifacts_of(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


@pytest.fixture(scope="module")
def bench_run():
    from flows.benchmarks import operators
    from flows.operator import benchmark_operators

    mp = pytest.MonkeyPatch()
    mp.setitem(operators.CONFIGS, "smoke", TINY)
    try:
        state = benchmark_operators(scale="smoke", return_state=True)
    finally:
        mp.undo()
    assert state.is_completed(), state
    flow_run_id = str(state.state_details.flow_run_id)
    [run] = tracking.find_runs(
        f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`sciflow.stage` = 'bench-operators'"
    )
    return state.result(), run, flow_run_id


def test_each_method_is_a_child_run_with_params_metrics_and_history(bench_run):
    rows, run, _ = bench_run
    client = MlflowClient()
    assert run.info.experiment_id == client.get_experiment_by_name(tracking.experiment_name("benchmarks")).experiment_id
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    by = {c.info.run_name: c for c in children}
    assert set(by) == {"fno", "mg-tfno-r0.05"} == {r["method"] for r in rows}
    for row in rows:
        child = by[row["method"]]
        assert child.info.status == "FINISHED"
        tags, params, metrics = child.data.tags, child.data.params, child.data.metrics
        assert tags["sciflow.stage"] == "method" and tags["sciflow.method"] == row["method"]
        assert (
            tags["sciflow.benchmark"] == "operators"
            and tags["prefect.flow_run_id"] == run.data.tags["prefect.flow_run_id"]
        )
        # its config as params
        assert params["method"] == row["method"] and params["scale"] == "smoke" and params["epochs"] == "2"
        assert params["model.name"] == {"fno": "fno", "mg-tfno-r0.05": "mg-tfno"}[row["method"]]
        # every number of its row as <problem>/<field>: error, parameter count, seconds, ratios to the baseline
        for field in ("test_l2", "test_l2_2x", "params", "sec_per_epoch", "l2_vs_fno", "compression_vs_fno"):
            assert metrics[f"navier-stokes-16/{field}"] == pytest.approx(row[field]), field
        # the training history, per epoch
        history = client.get_metric_history(child.info.run_id, "navier-stokes-16/train/loss")
        assert [m.step for m in history] == [1, 2] and all(m.value > 0 for m in history)
        assert [m.step for m in client.get_metric_history(child.info.run_id, "navier-stokes-16/train/test_l2")] == [
            1,
            2,
        ]
        # the trained model, registered from this run
        [version] = client.search_model_versions(
            f"name = 'operator-{row['method']}' and run_id = '{child.info.run_id}'"
        )
        assert version.status == "READY"


def test_benchmark_run_has_the_comparison_table_and_standard_tags(bench_run):
    rows, run, _ = bench_run
    client = MlflowClient()
    assert {"comparison.json", "results", "predictions.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "comparison.json", "type": "table"}]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "comparison.json")).read_text())
    assert table["columns"][:2] == ["method", "problem"] and len(table["data"]) == len(rows)
    assert run.data.metrics["methods"] == 2 and run.data.metrics["rows"] == 2
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "flows/operator.py:benchmark_operators"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    if tags["git.commit"] != "unknown":  # MLflow's Version column
        assert tags["mlflow.source.git.commit"] == tags["git.commit"].removesuffix("-dirty")
    assert {m.split("/")[0] for m in tags["sciflow.models"].split(", ")} == {"operator-fno", "operator-mg-tfno-r0.05"}


def test_the_flow_run_links_to_its_mlflow_run(bench_run):
    _, run, flow_run_id = bench_run
    arts = asyncio.run(_artifacts_of(flow_run_id))
    notes = [a for a in arts if a.type == "markdown" and run.info.run_id in str(a.data)]
    assert notes and "sciflow ui" in notes[0].data  # no tracking server here: how to open the local store
    assert tracking.run_url("1", "abc") is None
    os.environ["MLFLOW_TRACKING_URI"], uri = (
        "http://alice:secret@mlflow.example:5000/",
        os.environ["MLFLOW_TRACKING_URI"],
    )
    try:
        assert tracking.run_url("7", "abc") == "http://mlflow.example:5000/#/experiments/7/runs/abc"
        assert (
            tracking.artifact_url("abc", "a b.png")
            == "http://mlflow.example:5000/get-artifact?path=a+b.png&run_uuid=abc"
        )
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = uri


def test_registered_model_loads_by_alias_outside_the_repository(bench_run, tmp_path):
    from flows.nightly import _night_models

    _, run, _ = bench_run
    client = MlflowClient()
    versions = _night_models(client, run.info.run_id)  # every version registered in the run's tree
    assert [v.name for v in versions] == ["operator-fno", "operator-mg-tfno-r0.05"]
    tracking.set_alias("operator-mg-tfno-r0.05", "tested", versions[1].version)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_OUTSIDE_REPO, "models:/operator-mg-tfno-r0.05@tested", str(ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["shape"] == [2, 1, 24, 24] and out["finite"]
    assert "/code/operators/" in out["operators"] and not out["operators"].startswith(str(ROOT))


def test_an_unknown_alias_names_what_exists(bench_run):
    with pytest.raises(tracking.ModelNotFoundError) as err:
        tracking.load_registered("operator-fno@no-such-alias")
    msg = str(err.value)
    assert "no-such-alias" in msg and "operator-fno has aliases" in msg and "operator-mg-tfno-r0.05" in msg
    with pytest.raises(tracking.ModelNotFoundError, match="registered models: .*operator-fno"):
        tracking.load_registered("models:/no-such-model@nightly")


def test_experiments_per_kind_come_from_one_place(monkeypatch):
    assert {k: tracking.experiment_name(k) for k in tracking.KINDS} == {
        "data": "sciflow-data",
        "training": "sciflow-training",
        "benchmarks": "sciflow-benchmarks",
        "nightly": "sciflow-nightly",
    }
    monkeypatch.setenv("SCIFLOW_EXPERIMENT", "team")
    assert tracking.experiment_name("data") == "team-data" and tracking.experiment_name("nightly") == "team-nightly"
    assert [tracking.kind_of(s) for s in ("generate-dataset", "train-dcdm", "optimize", "bench-linear", "nightly")] == [
        "data",
        "training",
        "training",
        "benchmarks",
        "nightly",
    ]
    with pytest.raises(Exception, match="choose one of"):
        tracking.experiment_name("misc")

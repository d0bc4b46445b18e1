"""Flows end to end on the embedded stack: a real (ephemeral) Prefect API and a real MLflow
SQLite store, both under the session's temporary state folder."""

import asyncio
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

import data
from data.pdes import darcy
from data.spec import DarcySpec, HeatSpec
from flows import tracking
from flows.generate import generate_dataset

pytestmark = pytest.mark.slow


def _mlflow_run_for(flow_run_id: str):
    runs = tracking.find_runs(f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    assert len(runs) == 1, f"expected one MLflow run for flow run {flow_run_id}, got {len(runs)}"
    return runs[0]


def _run(coro):
    return asyncio.run(coro)


def _child_env() -> dict:
    """The environment for a flow-run subprocess that talks to this session's ephemeral Prefect
    API (instead of starting its own temporary server, ~10 s)."""
    import os

    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()  # a no-op once running
    return {**os.environ, "PREFECT_API_URL": server.api_url}


async def _flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _task_states(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state.name for r in runs}


async def _task_run_counts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.run_count for r in runs}


async def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        arts = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return arts


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowstore")
    spec = DarcySpec(n=12, n_train=6, n_test=2, seed=42)
    state = generate_dataset(spec=spec, chunk_size=3, root=str(root), return_state=True)
    assert state.is_completed(), state
    return spec, root, state


def test_flow_run_is_one_tracked_mlflow_run(first_run):
    spec, root, state = first_run
    ref = state.result()
    run = _mlflow_run_for(str(state.state_details.flow_run_id))
    assert run.info.status == "FINISHED"
    assert run.data.params["spec.n"] == "12" and run.data.params["spec.family"] == "darcy"
    assert run.data.tags["git.commit"] != "" and run.data.tags["version.petsc"].startswith("3.")
    assert run.data.tags["sciflow.dataset.sha256"] == ref.digest
    assert run.data.metrics["samples"] == 8 and run.data.metrics["samples_per_second"] > 0
    chunks = MlflowClient().get_metric_history(run.info.run_id, "chunk_seconds_train")  # logged by the tasks
    assert sorted(m.step for m in chunks) == [0, 3]
    assert run.inputs.dataset_inputs[0].dataset.digest == ref.digest[:32]
    names = {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert {"samples.png", "results"} <= names
    assert data.load(ref).arrays["u"].shape == (6, 12, 12)


def test_chunk_tasks_and_table_artifact(first_run):
    spec, root, state = first_run
    states = _run(_task_states(state.state_details.flow_run_id))
    assert sum(name.startswith("darcy-train") for name in states) == 2
    assert all(s == "Completed" for s in states.values()), states
    arts = _run(_artifact("dataset-darcy"))
    assert arts and arts[0].type == "table"


def test_second_run_hits_the_task_cache(first_run, monkeypatch):
    spec, root, state = first_run
    ref = state.result()
    for f in Path(ref.path).iterdir():  # the assembled dataset is gone, the task cache is not
        f.unlink()

    def boom(*a, **k):
        raise AssertionError("PETSc work on a cached spec")

    monkeypatch.setattr(darcy, "sample_arrays", boom)
    state2 = generate_dataset(spec=spec, chunk_size=3, root=str(root), return_state=True)
    assert state2.is_completed(), state2
    assert state2.result().digest == ref.digest
    states = _run(_task_states(state2.state_details.flow_run_id))
    chunk_states = [s for name, s in states.items() if name.startswith("darcy-")]
    assert len(chunk_states) == 3 and set(chunk_states) == {"Cached"}, states


def test_failed_solve_fails_the_run_and_writes_nothing(tmp_path):
    spec = HeatSpec(
        n=8,
        n_train=2,
        n_test=0,
        petsc_options={
            "ts_type": "beuler",
            "ksp_type": "cg",
            "pc_type": "none",
            "ksp_max_it": "1",
            "ksp_rtol": "1e-14",
        },
    )
    state = generate_dataset(spec=spec, chunk_size=2, root=str(tmp_path), return_state=True)
    assert state.is_failed()
    run = _mlflow_run_for(str(state.state_details.flow_run_id))
    assert run.info.status == "FAILED"
    assert "TS" in run.data.tags["sciflow.error"] or "DIVERGED" in run.data.tags["sciflow.error"]
    assert data.find(spec, root=tmp_path) is None
    assert not list(tmp_path.rglob("*.h5"))
    runs = _run(_task_run_counts(state.state_details.flow_run_id))
    assert runs and all(count == 1 for count in runs.values()), runs  # permanent failure: not retried


def test_bad_parameters_fail_at_the_boundary():
    with pytest.raises(Exception, match="n"):
        generate_dataset(spec={"family": "darcy", "n": -3})
    with pytest.raises(Exception, match="family"):
        generate_dataset(spec={"family": "navier-stokes", "n": 8})


def test_parameters_render_as_a_typed_form():
    from prefect.utilities.callables import parameter_schema

    schema = json.dumps(parameter_schema(generate_dataset.fn).model_dump())
    for name in ("PoissonSpec", "DarcySpec", "HeatSpec", "petsc_options", "chunk_size"):
        assert name in schema


def test_nightly_stages_resolve_to_their_flows():
    """Inline dispatch calls each stage's flow function: the names are wired to real flows (the
    whole night runs end to end, dispatched, in tests/system/test_stack_command.py)."""
    import importlib

    from prefect import Flow

    from flows.benchmarks import BENCHMARKS
    from flows.nightly import STAGES, SUMMARIES

    assert list(STAGES) == [b.flow_name for b in BENCHMARKS.values() if b.stage]
    assert set(SUMMARIES) == {b.name for b in STAGES.values()}
    for stage, bench in STAGES.items():
        module, function = bench.flow.split(":")
        fn = getattr(importlib.import_module(module), function)
        assert fn is bench.load_flow()
        assert isinstance(fn, Flow) and fn.name == stage and {"scale", "parent_run_id"} <= set(fn.parameters.properties)


def test_train_dcdm_registers_and_resumes():
    from flows.dcdm import checkpoint_path, train_dcdm
    from operators import load_checkpoint
    from operators.dcdm import DCDMTrainConfig

    cfg = DCDMTrainConfig(n=8, ritz_m=20, n_samples=16, epochs=2, batch_size=8, seed=7)
    state = train_dcdm(config=cfg, return_state=True)
    assert state.is_completed(), state
    path = state.result()
    assert path == str(checkpoint_path(cfg)) and load_checkpoint(path)["epoch"] == 2
    run = _mlflow_run_for(str(state.state_details.flow_run_id))
    assert run.data.metrics["loss"] > 0
    assert {"loss.png", "checkpoint"} <= {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    versions = MlflowClient().search_model_versions("name = 'dcdm-2d'")
    assert versions and any(v.run_id == run.info.run_id for v in versions)
    # a finished config is reused, not retrained
    again = train_dcdm(config=cfg, return_state=True)
    assert again.result() == path
    assert (
        MlflowClient().search_runs(
            [run.info.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{again.state_details.flow_run_id}'"
        )
        == []
    )


def test_cli(tmp_path, capsys):
    from flows.cli import main

    assert main(["generate", "darcy", "--n", "-3", "--no-flow"]) == 2  # a bad value: status 2, as argparse's own errors
    assert "n: Input should be greater than or equal to 4" in capsys.readouterr().err
    out = tmp_path / "bench.json"
    assert main(["bench", "datagen", "--scale", "smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"bare-petsc4py", "prefect-flow", "petsc-cg-gamg"}
    assert all(r["ratio_to_bare"] > 0 for r in result["rows"] if "ratio_to_bare" in r)
    assert result["meta"]["scale"] == "smoke"


def test_train_neural_ode_logs_nfe_per_epoch():
    from flows.neural_ode import train_neural_ode
    from operators.node import ODETrainConfig

    cfg = ODETrainConfig(
        task="spiral", regularizer="local-biased", epochs=2, batch_size=500, hidden=8, rtol=1e-4, atol=1e-4
    )
    state = train_neural_ode(config=cfg, return_state=True)
    assert state.is_completed(), state
    run = _mlflow_run_for(str(state.state_details.flow_run_id))
    history = MlflowClient().get_metric_history(run.info.run_id, "predict_nfe")
    assert [m.step for m in history] == [1, 2] and all(m.value > 0 for m in history)
    assert "checkpoint" in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert run.data.params["config.regularizer"] == "local-biased"
    versions = MlflowClient().search_model_versions("name = 'node-spiral-local-biased'")
    assert any(v.run_id == run.info.run_id for v in versions)


def test_optimize_flow_logs_iterations_and_the_recovered_coefficient():
    from flows.optimize import optimize
    from solvers.optim.config import OptimizeConfig

    cfg = OptimizeConfig(problem="darcy-inverse", n=8, method="newton-sqp", noise=0.0, beta=1e-3)
    state = optimize(config=cfg, return_state=True)
    assert state.is_completed(), state
    row = state.result()
    assert row["converged"] and row["kkt"] <= 1e-6 and row["coef_error"] < 0.05
    run = _mlflow_run_for(str(state.state_details.flow_run_id))
    kkt = MlflowClient().get_metric_history(run.info.run_id, "kkt")
    assert len(kkt) == row["nit"] + 1 and kkt[-1].value <= 1e-6  # one per iteration, plus the final value
    assert {"solution.json", "coefficient.png"} <= {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    assert run.data.params["config.method"] == "newton-sqp"


def test_train_operator_flow_logs_epochs_registers_and_reuses():
    from data.spec import NavierStokesSpec
    from flows.operator import train_operator
    from operators.fno import OperatorModelConfig, OperatorTrainConfig

    spec = NavierStokesSpec(n=16, n_train=8, n_test=2, horizon=0.2)
    cfg = OperatorTrainConfig(
        model=OperatorModelConfig(name="mg-tfno", n_modes=4, hidden_channels=8, n_layers=2, rank=0.2),
        epochs=2,
        batch_size=4,
    )
    state = train_operator(dataset=spec, config=cfg, return_state=True)
    assert state.is_completed(), state
    row = state.result()
    assert row["epoch"] == 2 and row["test_l2"] > 0
    run = _mlflow_run_for(str(state.state_details.flow_run_id))
    history = MlflowClient().get_metric_history(run.info.run_id, "test_l2")
    assert [m.step for m in history] == [1, 2]
    assert "predictions.png" in {a.path for a in MlflowClient().list_artifacts(run.info.run_id)}
    versions = MlflowClient().search_model_versions("name = 'operator-mg-tfno'")
    assert versions and any(v.run_id == run.info.run_id for v in versions)
    again = train_operator(dataset=spec, config=cfg)  # finished checkpoint: no training, same answer
    assert again["checkpoint"] == row["checkpoint"] and again["test_l2"] == row["test_l2"]


def test_train_hard_constraint_flow_logs_steps_and_reuses():
    from data.spec import DiffusionSorptionSpec
    from flows.hard_constraint import train_hard_constraint
    from operators.hard import HardModelConfig, HardTrainConfig

    spec = DiffusionSorptionSpec(n=16, n_times=8, n_train=4, n_test=2)
    cfg = HardTrainConfig(
        model=HardModelConfig(experts=(1, 2), points=20, hidden=8, n_layers=2, modes=(4, 4), n_basis=6),
        steps=4,
        batch_size=2,
        checkpoint_every=2,
    )
    state = train_hard_constraint(dataset=spec, config=cfg, return_state=True)
    assert state.is_completed(), state
    row = state.result()
    assert 0 < row["rel_l2"] < 10 and row["jump_max"] >= 0
    run = _mlflow_run_for(str(state.state_details.flow_run_id))
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]
    assert client.get_metric_history(run.info.run_id, "lm_iterations")
    assert {"predictions.png", "checkpoint"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    again = train_hard_constraint(dataset=spec, config=cfg)  # finished checkpoint: no training
    assert again["checkpoint"] == row["checkpoint"]
    with pytest.raises(Exception, match="2D one"):
        train_hard_constraint(dataset={"family": "heat", "dim": 1, "n": 8, "n_train": 2, "n_test": 1}, config=cfg)


def test_optimize_flow_rejects_unknown_problem_before_running():
    from flows.optimize import optimize

    with pytest.raises(Exception, match="unknown problem 'hs999'"):
        optimize(config={"problem": "hs999"})


def test_killed_run_resumes_from_cached_chunks_and_is_marked_killed(tmp_path):
    """SIGKILL the process mid-generation: no partial file under a real name; the rerun reuses
    the finished chunks and ends the orphaned MLflow run as KILLED."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import h5py

    root = tmp_path / "store"
    spec = DarcySpec(n=128, n_train=96, n_test=0, seed=77)
    code = (
        "from flows.generate import generate_dataset; from data.spec import DarcySpec; "
        f"generate_dataset(spec=DarcySpec(n=128, n_train=96, n_test=0, seed=77), chunk_size=8, root={str(root)!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        start_new_session=True,
        env=_child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    chunk_dir = root / "chunks"
    deadline = time.time() + 180
    while time.time() < deadline and not (chunk_dir.exists() and len(list(chunk_dir.rglob("*.h5"))) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(chunk_dir.rglob("train-*.h5"))
    assert 2 <= len(done) < 12, "the kill did not land mid-generation"
    assert not (root / "datasets").exists() or not list((root / "datasets").rglob("manifest.json"))
    for f in done:  # everything under a real name is whole
        with h5py.File(f) as fh:
            assert fh["u"].shape[0] == 8
    killed = tracking.find_runs("attributes.status = 'RUNNING' and tags.`sciflow.stage` = 'generate-dataset'")
    assert len(killed) == 1

    state = generate_dataset(spec=spec, chunk_size=8, root=str(root), return_state=True)
    assert state.is_completed(), state
    states = _run(_task_states(state.state_details.flow_run_id))
    assert sum(s == "Cached" for s in states.values()) >= len(done) - 1  # finished chunks reused
    assert data.load(state.result()).arrays["u"].shape == (96, 128, 128)
    after = MlflowClient().get_run(killed[0].info.run_id)
    assert after.info.status == "KILLED" and "gone" in after.data.tags["sciflow.error"]
    crashed = _run(_flow_run(killed[0].data.tags["prefect.flow_run_id"]))  # and not RUNNING forever in Prefect
    assert crashed.state.type.value == "CRASHED" and "is gone" in crashed.state.message


def test_killed_training_flow_resumes_from_its_checkpoint_and_is_marked_crashed(tmp_path):
    """SIGKILL a train-operator flow-run process mid-training (what a dying worker does to its
    flow runs): the rerun of the same flow resumes from the last checkpoint, loses no finished
    epoch, and ends the orphaned MLflow run KILLED and its Prefect flow run CRASHED."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from data.spec import DarcySpec
    from flows.operator import train_operator
    from operators import load_checkpoint
    from operators.fno import OperatorModelConfig, OperatorTrainConfig

    spec = DarcySpec(n=16, n_train=32, n_test=4, seed=5)
    cfg = OperatorTrainConfig(
        model=OperatorModelConfig(name="fno", n_modes=4, hidden_channels=8, n_layers=2), epochs=60, batch_size=4, seed=3
    )
    code = (
        "from flows.operator import train_operator; from data.spec import DarcySpec; "
        "from operators.fno import OperatorTrainConfig; "
        f"train_operator(dataset=DarcySpec.model_validate_json({spec.model_dump_json()!r}), "
        f"config=OperatorTrainConfig.model_validate_json({cfg.model_dump_json()!r}), register_model=False)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        start_new_session=True,
        env=_child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    models = Path(os.environ["SCIFLOW_HOME"]) / "models"
    deadline, epoch = time.time() + 180, 0
    while time.time() < deadline and proc.poll() is None and epoch < 3:
        for ckpt in models.glob(f"operator-{cfg.key()}-*/checkpoint.pt"):
            try:
                epoch = load_checkpoint(ckpt)["epoch"]
            except Exception:  # noqa: BLE001 (being replaced right now)
                pass
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [ckpt] = models.glob(f"operator-{cfg.key()}-*/checkpoint.pt")
    at_kill = load_checkpoint(ckpt)["epoch"]
    assert 3 <= at_kill < cfg.epochs, "the kill did not land mid-training"
    killed = [
        r
        for r in tracking.find_runs("attributes.status = 'RUNNING' and tags.`sciflow.stage` = 'train-operator'")
        if r.data.params.get("config_key") == cfg.key()
    ]
    assert len(killed) == 1

    state = train_operator(dataset=spec, config=cfg, register_model=False, return_state=True)
    assert state.is_completed(), state
    resumed = _mlflow_run_for(str(state.state_details.flow_run_id))
    steps = [m.step for m in MlflowClient().get_metric_history(resumed.info.run_id, "loss")]
    assert steps == list(range(at_kill + 1, cfg.epochs + 1))  # only the epochs after the checkpoint
    assert len(load_checkpoint(ckpt)["history"]) == cfg.epochs  # no finished epoch lost
    after = MlflowClient().get_run(killed[0].info.run_id)
    assert after.info.status == "KILLED" and "gone" in after.data.tags["sciflow.error"]
    crashed = _run(_flow_run(killed[0].data.tags["prefect.flow_run_id"]))
    assert crashed.state.type.value == "CRASHED"


@pytest.mark.parametrize("exc, status", [("value", "FAILED"), ("interrupt", "KILLED"), ("sigterm", "KILLED")])
def test_mlflow_run_never_stays_running(exc, status):
    from prefect.exceptions import TerminationSignal

    from flows.tracking import mlflow_run

    errors = {"value": ValueError("bad"), "interrupt": KeyboardInterrupt(), "sigterm": TerminationSignal(signal=15)}
    holder = {}
    with pytest.raises(type(errors[exc])), mlflow_run("doomed", {"a": 1}) as run_id:
        holder["id"] = run_id
        raise errors[exc]
    run = MlflowClient().get_run(holder["id"])
    assert run.info.status == status and run.data.tags["sciflow.error"]


def test_dead_tracking_server_is_a_clear_error(monkeypatch):
    import socket

    import mlflow

    from flows import tracking

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: f"http://127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingUnavailableError, match=f"127.0.0.1:{port} is not reachable"):
        with tracking.mlflow_run("never", {}):
            pass

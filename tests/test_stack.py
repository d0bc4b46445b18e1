"""A real Prefect server and process worker on 127.0.0.1: deploy infra/prefect.yaml and run a
deployment end to end, as a user would with `prefect deployment run`."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from procs import free_port, stop

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent




@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "SCIFLOW_HOME": str(tmp / "sciflow"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "SCIFLOW_MLFLOW_ARTIFACTS": (tmp / "mlartifacts").as_uri(), "COLUMNS": "250"}
    env.pop("PREFECT_LOCAL_STORAGE_PATH", None)
    server = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=open(tmp / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"Prefect server did not come up: {(tmp / 'server.log').read_text()[-2000:]}")
        env.update(PREFECT_API_URL=url, SCIFLOW_REPO=str(ROOT))
        yield env, tmp
    finally:
        stop(server)


def _prefect(env, *args, timeout=120) -> str:
    out = subprocess.run([BIN / "prefect", "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_deploy_and_run_through_a_worker(stack):
    env, tmp = stack
    _prefect(env, "work-pool", "create", "local", "--type", "process")
    _prefect(env, "deploy", "--all", "--prefect-file", "infra/prefect.yaml")
    listing = _prefect(env, "deployment", "ls")
    assert "nightly-benchmark/nightly" in listing and "generate-dataset/generate-dataset" in listing
    # the cluster file on top: its `gpu` pool (Kubernetes type, the committed base job template)
    _prefect(env, "work-pool", "create", "gpu", "--type", "kubernetes", "--base-job-template",
             "infra/cluster/k8s-gpu-job-template.json")
    _prefect(env, "deploy", "--all", "--prefect-file", "infra/cluster/prefect.yaml")
    listing = _prefect(env, "deployment", "ls")
    for stage in ("benchmark-linear-solvers", "benchmark-operators", "benchmark-neural-odes", "benchmark-hard-constraints"):
        assert f"{stage}/gpu" in listing
    assert "nightly-benchmark/nightly-paper" in listing
    worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", "local"], env=env, cwd=ROOT,
                              stdout=open(tmp / "worker.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        spec = json.dumps({"family": "darcy", "n": 8, "n_train": 3, "n_test": 0})
        out = _prefect(env, "deployment", "run", "generate-dataset/generate-dataset", "-p", f"spec={spec}",
                       "-p", "chunk_size=2", "--watch", "--watch-timeout", "240", timeout=300)
        assert "Completed" in out, out[-2000:]
    finally:
        stop(worker)
    datasets = list((tmp / "sciflow" / "datasets").glob("darcy-*/manifest.json"))
    assert len(datasets) == 1

"""Servers going away mid-run (issue #22), against real servers on 127.0.0.1 stopped by PID.

MLflow down for 60 s in the middle of a ``train-operator`` run: the run's tracking calls are
spooled (flows.spool) while the training goes on, delivered when the server is back; the run
FINISHES with every per-epoch metric exactly once."""

from __future__ import annotations

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
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 12
DOWN_S = 60.0


def _mlflow(port: int, store: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination",
            str(store / "artifacts"),
        ],
        stdout=open(log, "a"),  # noqa: SIM115 (the server's log, closed with the process)
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    t0 = time.time()
    while time.time() - t0 < 120:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"mlflow server did not answer: {log.read_text()[-3000:]}")


def _get(url: str, **params) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"{url}?{query}", timeout=10) as resp:
        return json.load(resp)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _training_runs(api: str) -> list[dict]:
    exp = _get(f"{api}/experiments/get-by-name", experiment_name="sciflow-training")["experiment"]
    found = _post(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 10})
    return found.get("runs", [])


def test_mlflow_down_for_60_s_mid_training_loses_nothing(tmp_path):
    port, store = free_port(), tmp_path / "mlflow"
    store.mkdir()
    log = tmp_path / "mlflow.log"
    server = _mlflow(port, store, log)
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))},
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "SCIFLOW_HOME": str(tmp_path / "home"),
        "OMP_NUM_THREADS": "1",
    }
    params = {
        "dataset": {"family": "darcy", "n": 32, "n_train": 96, "n_test": 8},
        "config": {"model": {"name": "fno", "n_modes": 8, "hidden_channels": 16, "n_layers": 2}, "epochs": EPOCHS},
    }
    train = subprocess.Popen(
        [str(BIN / "sciflow"), "run", "train-operator", "--params", json.dumps(params)],
        cwd=ROOT,
        env=env,
        stdout=open(tmp_path / "train.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    down = up = None
    try:
        t0 = time.time()
        while down is None and time.time() - t0 < 600:  # kill the server once epoch 2 is in MLflow
            assert train.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            try:
                runs = [r for r in _training_runs(api) if r["info"]["run_name"].startswith("train-operator")]
            except (OSError, KeyError):
                runs = []
            steps = [m["step"] for r in runs for m in r["data"].get("metrics", []) if m["key"] == "loss"]
            if runs and max(steps, default=0) >= 2:
                stop(server)
                down = time.time()
            time.sleep(0.2)
        assert down is not None, "the training never logged epoch 2"
        time.sleep(max(0.0, DOWN_S - (time.time() - down)))
        assert train.poll() is None or train.returncode == 0, (tmp_path / "train.log").read_text()[-3000:]
        server = _mlflow(port, store, log)  # the same store, the same port
        up = time.time()
        assert train.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        stop(train)
        stop(server)
    out = (tmp_path / "train.log").read_text()
    server = _mlflow(port, store, log)
    try:
        [run] = [r for r in _training_runs(api) if r["info"]["run_name"].startswith("train-operator")]
        history = _get(f"{api}/metrics/get-history", run_id=run["info"]["run_id"], metric_key="loss")["metrics"]
        arts = _get(f"{api}/artifacts/list", run_id=run["info"]["run_id"])
        model = _get(f"{api}/registered-models/get", name="operator-fno")["registered_model"]
    finally:
        stop(server)
    assert run["info"]["status"] == "FINISHED"
    assert sorted(m["step"] for m in history) == list(range(1, EPOCHS + 1))  # every epoch, none twice
    assert "predictions.png" in {f["path"] for f in arts.get("files", [])}  # spooled during the outage
    assert model["latest_versions"][0]["run_id"] == run["info"]["run_id"]  # registered once it was back
    assert "is unreachable" in out and "delivered" in out  # said in the flow run's logs
    print(f"\nMLflow down {up - down:.0f} s mid-training: run FINISHED, {len(history)}/{EPOCHS} epochs' loss logged")

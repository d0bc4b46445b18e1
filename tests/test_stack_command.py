"""`sciflow stack up|status|down`: real servers on 127.0.0.1, stopped by PID."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_stack_up_run_down(tmp_path):
    env = {**os.environ, "SCIFLOW_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "home" / "prefect"),
           "COLUMNS": "200"}
    for var in ("MLFLOW_TRACKING_URI", "SCIFLOW_MLFLOW_ARTIFACTS", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(var, None)
    sciflow = [str(BIN / "sciflow"), "stack"]
    up = subprocess.run([*sciflow, "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Prefect UI: http://127.0.0.1:" in up.stdout and "MLflow UI:  http://127.0.0.1:" in up.stdout
        stack_env = dict(line.removeprefix("export ").split("=", 1)
                         for line in (tmp_path / "home" / "stack" / "stack.env").read_text().splitlines())
        run_env = {**env, **stack_env}
        spec = '{"family": "heat", "n": 8, "n_train": 2, "n_test": 0, "n_times": 2}'
        out = subprocess.run([str(BIN / "prefect"), "deployment", "run", "generate-dataset/generate-dataset",
                              "-p", f"spec={spec}", "--watch", "--watch-timeout", "240"],
                             env=run_env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert "Completed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
        from mlflow import MlflowClient

        c = MlflowClient(tracking_uri=stack_env["MLFLOW_TRACKING_URI"])  # through the tracking server
        runs = c.search_runs([c.get_experiment_by_name("sciflow").experiment_id])
        assert any(r.data.tags.get("prefect.deployment") == "generate-dataset" and r.info.status == "FINISHED" for r in runs)
        pids = [int((tmp_path / "home" / "stack" / f"{n}.pid").read_text()) for n in ("prefect", "mlflow", "worker")]
    finally:
        down = subprocess.run([*sciflow, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped: worker, mlflow, prefect" in down.stdout, down.stdout + down.stderr
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

"""Concurrent load (docs/reliability.md "Concurrent load"): `sciflow stack up --backend postgres` starts
Debian's PostgreSQL, a Prefect server and an MLflow server on it, and a process worker, all on
127.0.0.1; `sciflow loadtest --runs 16` runs 16 `optimize` flow runs at once through them; every run
must complete with exactly the expected MLflow run and metric histories, and no log may show
"database is locked" or an error. Then `stack down` stops exactly what `up` started, by PID."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNS = 16


def _descendants(pids: list[int]) -> set[int]:
    """``pids`` and every process below them (postgres backends, flow-run processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _sql(stack: Path, db: str, query: str) -> list[tuple]:
    import psycopg2

    port = json.loads((stack / "ports.json").read_text())["postgres"]
    with (
        psycopg2.connect(
            host="127.0.0.1", port=port, user="sciflow", dbname=db, password=(stack / "pg.secret").read_text().strip()
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(query)
        return cur.fetchall()


def test_16_concurrent_flow_runs_on_postgres_backends():
    # PostgreSQL runs as the unprivileged `postgres` user when the tests run as root: it must be able
    # to reach the state folder, and pytest's own tmp_path sits under a private (0700) folder.
    tmp = Path(tempfile.mkdtemp(prefix="sciflow-load-"))
    tmp.chmod(0o711)
    home, stack = tmp / "home", tmp / "home" / "stack"
    env = {
        **os.environ,
        "SCIFLOW_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "COLUMNS": "200",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }  # the worker polls every 2 s, not 10 s
    for var in ("MLFLOW_TRACKING_URI", "SCIFLOW_MLFLOW_ARTIFACTS", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL"):
        env.pop(var, None)
    sciflow = [str(BIN / "sciflow"), "stack"]
    pids, t0 = [], time.perf_counter()
    up = subprocess.run(
        [*sciflow, "up", "--backend", "postgres"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "backend: postgres" in up.stdout
        pids = [int((stack / f"{n}.pid").read_text()) for n in ("postgres", "prefect", "mlflow", "worker")]
        t_up = time.perf_counter() - t0
        stack_env = dict(
            line.removeprefix("export ").split("=", 1) for line in (stack / "stack.env").read_text().splitlines()
        )
        password = (stack / "pg.secret").read_text().strip()
        assert (
            oct((stack / "pg.secret").stat().st_mode)[-3:] == "600"
            and password not in (stack / "stack.env").read_text()
        )
        for pid in pids:  # the database password is in no command line
            assert password not in Path(f"/proc/{pid}/cmdline").read_text()

        load = subprocess.run(
            [str(BIN / "sciflow"), "loadtest", "--runs", str(RUNS), "--out", str(tmp / "report.json")],
            env={**env, **stack_env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        print(f"\nstack up (postgres) {t_up:.0f} s\n{load.stdout}")
        assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]
        report = json.loads((tmp / "report.json").read_text())
        assert report["completed"] == RUNS and report["failed"] == 0 and report["lost"] == 0
        assert report["mlflow_runs_matched"] == RUNS and report["mlflow_unexpected_runs"] == 0
        assert report["database_is_locked"] == 0 and report["log_errors"] == 0, report["log_error_samples"]
        assert report["peak_running"] >= RUNS // 2  # they really ran side by side

        # What the servers wrote is in PostgreSQL: MLflow's runs and Prefect's flow runs.
        [(n_runs,)] = _sql(stack, "mlflow", "SELECT count(*) FROM runs WHERE status = 'FINISHED'")
        [(n_flow_runs,)] = _sql(
            stack,
            "prefect",
            "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED' AND tags::jsonb ? 'loadtest'",
        )
        assert n_runs == RUNS and n_flow_runs == RUNS
        assert not (home / "mlflow.db").exists() and not (home / "prefect" / "prefect.db").exists()
        everything = _descendants(pids)
    finally:
        down = subprocess.run([*sciflow, "down"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        logs = {p.name: p.read_text()[-1500:] for p in stack.glob("*.log")} if down.returncode else {}
        shutil.rmtree(tmp, ignore_errors=True)
    assert down.returncode == 0 and "stopped: worker, mlflow, prefect, postgres" in down.stdout, (
        down.stdout + down.stderr + str(logs)
    )
    deadline = time.time() + 10  # postgres backends exit right after the postmaster
    while any(map(_alive, everything)) and time.time() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in everything if _alive(pid)]


def test_log_scan_counts_locks_and_errors_but_not_the_handled_experiment_race(tmp_path):
    from flows.loadtest import _errors, _peak

    (tmp_path / "old.log").write_text("ERROR: before the load\n")
    since = {tmp_path / "old.log": (tmp_path / "old.log").stat().st_size}
    (tmp_path / "old.log").write_text("ERROR: before the load\nINFO fine\n")
    (tmp_path / "prefect.log").write_text("sqlite3.OperationalError: database is locked\n12:00 | ERROR | x\nINFO ok\n")
    (tmp_path / "postgres.log").write_text(
        'ERROR:  duplicate key value violates unique constraint "uq_experiments_workspace_name"\n'
    )
    (tmp_path / "worker.log").write_text(
        "Traceback (most recent call last):\n  File \"a.py\", line 1\n    x()\nKeyError: 'a'\n\n"
        "During handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n"
        '  File "b.py", line 2\nTimeoutError: connect\n12:01 | INFO | next\n'
    )
    locked, errors, handled = _errors(tmp_path, since)
    assert (locked, len(errors), handled) == (1, 4, 1)  # each of the chained tracebacks is a line
    assert errors[-2] == "worker.log: Traceback (most recent call last): ... TimeoutError: connect"
    assert _peak([(0, 10), (1, 4), (3, 11), (10.5, 12)]) == 3  # at t = 3.5


def test_loadtest_refuses_bad_arguments_and_a_dead_stack(monkeypatch):
    from flows.loadtest import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # port 9 (discard): nothing listens
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(SystemExit, match="--runs must be >= 1"):
        main(0, None, 60)
    with pytest.raises(SystemExit, match="Prefect server at http://127.0.0.1:9/api/health does not answer"):
        main(2, None, 60)

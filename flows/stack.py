"""A local stack on 127.0.0.1: Prefect server, MLflow tracking server and a process worker.

    sciflow stack up       # start all three, create the `local` pool, deploy infra/prefect.yaml
    sciflow stack status   # which are running, and their addresses
    sciflow stack down     # stop exactly what `up` started (by PID)

State lives in ``$SCIFLOW_HOME/stack/``: one ``<name>.pid`` and ``<name>.log`` per process,
``ports.json``, and ``stack.env`` (``source`` it to point the CLI and Python at the stack). The
MLflow server uses the same SQLite store and artifact folder as the embedded mode, so runs made
by ``make run`` appear in its UI too. Everything binds to 127.0.0.1; exposing the servers needs
authentication (the reliability/security issue).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .settings import configure

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVICES = ("prefect", "mlflow", "worker")


def _dir() -> Path:
    d = configure() / "stack"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _pid(name: str) -> int | None:
    try:
        pid = int((_dir() / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _wait_http(url: str, seconds: float, name: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{name} did not answer at {url} within {seconds:.0f} s; see {_dir() / (name + '.log')}")


def _start(name: str, args: list, env: dict) -> int:
    log = open(_dir() / f"{name}.log", "ab")
    proc = subprocess.Popen([str(a) for a in args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    (_dir() / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def env_for(ports: dict) -> dict[str, str]:
    """The variables that point clients at the stack."""
    return {
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "SCIFLOW_REPO": str(ROOT),
    }


def up(prefect_port: int = 4200, mlflow_port: int = 5000, timeout: float = 120) -> dict:
    """Start what is not running yet; returns the addresses."""
    home = configure()
    d = _dir()
    ports = json.loads((d / "ports.json").read_text()) if (d / "ports.json").exists() and any(map(_pid, SERVICES)) else {
        "prefect": _free_port(prefect_port), "mlflow": _free_port(mlflow_port)}
    (d / "ports.json").write_text(json.dumps(ports))
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    stack_env = {**base, **env_for(ports)}
    if not _pid("prefect"):
        _start("prefect", [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", ports["prefect"]], base)
    if not _pid("mlflow"):
        _start("mlflow", [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", ports["mlflow"], "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                          "--default-artifact-root", (home / "mlartifacts").as_uri()], base)
    _wait_http(f"{stack_env['PREFECT_API_URL']}/health", timeout, "prefect")
    _wait_http(f"{stack_env['MLFLOW_TRACKING_URI']}/health", timeout, "mlflow")
    prefect = [BIN / "prefect", "--no-prompt"]
    pools = subprocess.run([*map(str, prefect), "work-pool", "ls"], env=stack_env, capture_output=True, text=True, cwd=ROOT)
    if " local " not in pools.stdout:
        subprocess.run([*map(str, prefect), "work-pool", "create", "local", "--type", "process"], env=stack_env, check=True,
                       capture_output=True, cwd=ROOT)
    deploy = subprocess.run([*map(str, prefect), "deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
                            env={**stack_env, "COLUMNS": "200"}, capture_output=True, text=True, cwd=ROOT)
    if deploy.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{deploy.stdout[-2000:]}{deploy.stderr[-2000:]}")
    if not _pid("worker"):
        _start("worker", [BIN / "prefect", "worker", "start", "--pool", "local"], stack_env)
    (d / "stack.env").write_text("".join(f"export {k}={v}\n" for k, v in env_for(ports).items()))
    return status()


def status() -> dict:
    d = _dir()
    ports = json.loads((d / "ports.json").read_text()) if (d / "ports.json").exists() else {}
    out = {name: {"pid": _pid(name), "log": str(d / f"{name}.log")} for name in SERVICES}
    if ports:
        out["prefect"]["ui"] = f"http://127.0.0.1:{ports['prefect']}"
        out["mlflow"]["ui"] = f"http://127.0.0.1:{ports['mlflow']}"
        out["env"] = str(d / "stack.env")
    return out


def down(timeout: float = 20) -> list[str]:
    """Stop what ``up`` started (worker first), by PID; returns the names stopped."""
    stopped = []
    for name in reversed(SERVICES):
        pid = _pid(name)
        if pid:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.time() + timeout
            while _alive(pid) and time.time() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
        (_dir() / f"{name}.pid").unlink(missing_ok=True)
    return stopped


def main(action: str) -> int:
    if action == "up":
        info = up()
        print(f"Prefect UI: {info['prefect']['ui']}\nMLflow UI:  {info['mlflow']['ui']}\n"
              f"worker pid {info['worker']['pid']} on pool 'local'; deployments from infra/prefect.yaml\n"
              f"point clients at it:  source {info['env']}\n"
              f"then e.g.: prefect deployment run nightly-benchmark/nightly -p scale=smoke")
    elif action == "status":
        print(json.dumps(status(), indent=2))
    elif action == "down":
        print("stopped: " + (", ".join(down()) or "nothing was running"))
    return 0

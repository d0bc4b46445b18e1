"""Security (issue #9): servers bind to 127.0.0.1 and, when exposed, refuse unauthenticated
requests (Prefect's API auth string, MLflow's basic-auth app); secrets never reach MLflow params;
datasets are numeric HDF5, never pickles. The server tests start real servers on a free port of
127.0.0.1 with their state in a temporary folder and stop them by PID (marked ``slow``)."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest

import data
from data import hdf5, store
from data.spec import DarcySpec, canonical_json

from procs import free_port, stop

BIN = Path(sys.executable).parent


def _start(args: list, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(a) for a in args],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait(url: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> float:
    t0 = time.time()
    while time.time() - t0 < seconds:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return time.time() - t0
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"server did not answer at {url}: {log.read_text()[-3000:]}")


def _status(url: str, auth: str | None = None, body: dict | None = None, scheme: str = "Basic") -> int:
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    if auth is not None:
        req.add_header("Authorization", f"{scheme} {base64.b64encode(auth.encode()).decode()}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                out.add(addr)
    return out


LOOPBACK = "0100007F"  # 127.0.0.1, little-endian hex


def _base_env(tmp: Path) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for var in (
        "PREFECT_API_URL",
        "PREFECT_API_KEY",
        "PREFECT_API_AUTH_STRING",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "PREFECT_LOCAL_STORAGE_PATH",
    ):
        env.pop(var, None)
    return env


def test_servers_bind_to_loopback_by_default():
    from mlflow.cli import server
    from prefect.settings.models.server.api import ServerAPISettings

    assert ServerAPISettings.model_fields["host"].default == "127.0.0.1"
    assert next(p.default for p in server.params if p.name == "host") == "127.0.0.1"
    stack = (Path(__file__).resolve().parents[2] / "flows" / "stack.py").read_text()
    assert len(re.findall(r'"--host",\s*"127\.0\.0\.1"', stack)) == 2 and "0.0.0.0" not in stack  # sciflow stack up


@pytest.mark.slow
def test_prefect_server_with_an_auth_string_refuses_unauthenticated_requests(tmp_path):
    auth = f"admin:{secrets.token_urlsafe(16)}"
    port = free_port()
    env = {**_base_env(tmp_path), "PREFECT_SERVER_API_AUTH_STRING": auth}
    log = tmp_path / "prefect.log"
    proc = _start([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port], env, log)
    api = f"http://127.0.0.1:{port}/api"
    try:
        startup = _wait(f"{api}/health", proc, log)  # health / ready stay open for probes, by Prefect's design
        assert _listeners(port) == {LOOPBACK}
        flows = f"{api}/flows/filter"
        assert _status(flows, body={}) == 401  # no credentials
        assert _status(flows, auth="admin:wrong", body={}) == 401
        assert _status(flows, auth=auth, body={}, scheme="Bearer") == 401
        assert _status(f"{api}/deployments/filter", body={}) == 401
        assert _status(flows, auth=auth, body={}) == 200

        # the Prefect client authenticates with PREFECT_API_AUTH_STRING, and fails without it
        from prefect.client.orchestration import get_client
        from prefect.settings import (
            PREFECT_API_AUTH_STRING,
            PREFECT_API_URL,
            temporary_settings,
        )

        with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: auth}):
            with get_client(sync_client=True) as client:
                client.create_flow_from_name("sciflow-auth-check")
                assert [f.name for f in client.read_flows()] == ["sciflow-auth-check"]
        with temporary_settings({PREFECT_API_URL: api}, restore_defaults={PREFECT_API_AUTH_STRING}):
            with get_client(sync_client=True) as client:
                with pytest.raises(Exception, match="401"):
                    client.read_flows()
        print(f"\n[security] Prefect server with auth string up in {startup:.1f} s; anonymous 401, authenticated 200")
    finally:
        stop(proc)
    assert proc.poll() is not None
    assert auth.split(":", 1)[1] not in log.read_text()  # the password is not in the server log


MLFLOW_AUTH_INI = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///{db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@pytest.mark.slow
def test_mlflow_basic_auth_app_refuses_unauthenticated_requests(tmp_path, monkeypatch):
    password = secrets.token_urlsafe(16)
    (tmp_path / "auth.ini").write_text(MLFLOW_AUTH_INI.format(db=tmp_path / "auth.db"))
    port = free_port()
    env = {
        **_base_env(tmp_path),
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),
    }  # the auth app's CSRF key: required
    log = tmp_path / "mlflow.log"
    proc = _start(
        [
            BIN / "mlflow",
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            "127.0.0.1",
            "--port",
            port,
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
        ],
        env,
        log,
    )
    url = f"http://127.0.0.1:{port}"
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
    try:
        startup = _wait(f"{url}/health", proc, log)
        assert _listeners(port) == {LOOPBACK}
        assert _status(search) == 401
        assert _status(search, auth="admin:wrong") == 401
        assert _status(search, auth=f"nobody:{password}") == 401
        assert _status(search, auth=f"admin:{password}") == 200

        # the MLflow client authenticates with MLFLOW_TRACKING_USERNAME / _PASSWORD
        from mlflow import MlflowClient

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        client = MlflowClient(tracking_uri=url)
        exp = client.create_experiment("secured")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "x", 1.0)
        assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}
        # a user created by the admin gets default_permission (NO_PERMISSIONS) on the admin's experiment
        user_pw = secrets.token_urlsafe(16)
        assert (
            _status(
                f"{url}/api/2.0/mlflow/users/create",
                auth=f"admin:{password}",
                body={"username": "alice", "password": user_pw},
            )
            == 200
        )
        assert _status(f"{url}/api/2.0/mlflow/experiments/get?experiment_id={exp}", auth=f"alice:{user_pw}") == 403
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(Exception, match="401|Unauthorized|credentials"):
            MlflowClient(tracking_uri=url).get_experiment(exp)
        print(
            f"\n[security] MLflow basic-auth server up in {startup:.1f} s; anonymous 401, admin 200, "
            "other user 403 on the admin's experiment"
        )
    finally:
        stop(proc)
    assert proc.poll() is not None


# ---------------------------------------------------------------------------------------------
# secrets never reach MLflow params


@pytest.mark.parametrize(
    "name, secret",
    [
        ("password", True),
        ("db.password", True),
        ("api_key", True),
        ("apiKey", True),
        ("authToken", True),
        ("auth", True),
        ("aws.secret_access_key", True),
        ("PREFECT_API_AUTH_STRING", True),
        ("key", True),
        ("credentials.user", True),
        ("config_key", False),
        ("spec_hash", False),
        ("k", False),
        ("ksp_type", False),
        ("n_train", False),
        ("spec.petsc_options.pc_type", False),
        ("monkey", False),
        ("keys", False),
    ],
)
def test_secret_looking_names_are_recognised(name, secret):
    from flows.tracking import is_secret

    assert is_secret(name) is secret


def test_secrets_never_reach_mlflow_params_or_tags():
    from mlflow import MlflowClient

    from flows.tracking import flatten, mlflow_run

    params = {
        "spec": {"n": 8, "petsc_options": {"pc_type": "gamg"}},
        "config_key": "abc123",
        "db": {"password": "hunter2-db", "host": "db.local"},
        "api_key": "hunter2-key",
        "auth": {"user": "admin", "pass": "hunter2-auth"},
        "tracking_uri": "postgresql://bob:hunter2-url@db/x",
        "servers": [{"token": "hunter2-list"}, "http://u:hunter2-list2@h"],
    }
    flat = flatten(params)
    assert flat["db.password"] == flat["api_key"] == flat["auth"] == "***"
    assert flat["tracking_uri"] == "postgresql://bob:***@db/x"
    assert (
        flat["config_key"] == "abc123"
        and flat["spec.petsc_options.pc_type"] == "gamg"
        and flat["db.host"] == "db.local"
    )
    holder = {}
    with pytest.raises(ConnectionError), mlflow_run("secrets", params) as run_id:
        holder["id"] = run_id
        raise ConnectionError("cannot reach postgresql://bob:hunter2-err@db/x")
    run = MlflowClient().get_run(holder["id"])
    logged = json.dumps({"params": run.data.params, "tags": run.data.tags})
    assert "hunter2" not in logged, logged
    assert run.data.params["config_key"] == "abc123" and run.data.params["spec.n"] == "8"
    assert "postgresql://bob:***@db/x" in run.data.tags["sciflow.error"]


# ---------------------------------------------------------------------------------------------
# datasets are numeric HDF5, never pickles


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file if anyone unpickles this


def _crafted(kind: str, payload: bytes):
    if kind == "pickle-in-vlen-bytes":
        return np.array([payload], dtype=object), h5py.vlen_dtype(bytes)
    if kind == "pickle-in-opaque":
        return np.frombuffer(payload, dtype=f"V{len(payload)}"), None
    if kind == "compound":
        return np.zeros(3, dtype=[("x", "<f8"), ("y", "<i4")]), None
    return np.array([b"abc", b"de"]), None  # fixed-length strings


@pytest.mark.parametrize("kind", ["pickle-in-vlen-bytes", "pickle-in-opaque", "compound", "strings"])
def test_a_dataset_with_non_numeric_arrays_is_refused_and_nothing_is_unpickled(tmp_path, kind):
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Evil(marker), protocol=0)
    arr, dtype = _crafted(kind, payload)
    spec = DarcySpec(n=8, n_train=1, n_test=0)
    with h5py.File(tmp_path / "train.h5", "w") as fh:
        fh.create_dataset("u", data=np.zeros((1, 8, 8)))
        fh.create_dataset("a", data=arr, dtype=dtype)
        fh.attrs["spec"] = canonical_json(spec)
    manifest = {
        "spec": json.loads(canonical_json(spec)),
        "digest": "0" * 64,
        "files": {"train.h5": {"sha256": "0" * 64}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(data.DatasetError, match="array 'a' has non-numeric dtype.*numeric arrays only"):
        data.load(tmp_path)
    with pytest.raises(data.DatasetError, match="non-numeric"):
        hdf5.read_h5(tmp_path / "train.h5")
    assert not marker.exists()


def test_object_arrays_cannot_be_written_and_the_store_never_unpickles(tmp_path):
    with pytest.raises(
        data.InputError, match="array 'a' has non-numeric dtype object; datasets hold numeric arrays only"
    ):
        hdf5.write_h5(tmp_path / "x.h5", {"a": np.array([{"b": 1}], dtype=object)}, {})
    assert list(tmp_path.iterdir()) == []
    for module in (store, hdf5):  # the store and its file format
        source = Path(module.__file__).read_text()
        assert "pickle" not in source and "allow_pickle" not in source and "np.load" not in source

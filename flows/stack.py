"""A local stack on 127.0.0.1: Prefect server, MLflow tracking server and a process worker.

    sciflow stack up       # start all three, create the `local` pool, deploy infra/prefect.yaml,
                           # apply the automations of infra/automations.yaml
    sciflow stack up --backend postgres   # the same on a PostgreSQL server it starts (see below)
    sciflow stack status   # which are running, and their addresses
    sciflow stack down     # stop exactly what `up` started (by PID)

State lives in ``$SCIFLOW_HOME/stack/``: one ``<name>.pid`` and ``<name>.log`` per process,
``ports.json``, and ``stack.env`` (``source`` it to point the CLI and Python at the stack). The
MLflow server uses the same SQLite store and artifact folder as the embedded mode, so runs made
by ``make run`` appear in its UI too. Everything binds to 127.0.0.1; exposing the servers needs
authentication (the reliability/security issue).

``--backend postgres`` runs Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``, newest
version found) with its cluster in ``stack/pg/``: 127.0.0.1 on a free port, Unix socket in the same
folder, password authentication (a random password in ``stack/pg.secret``, mode 0600), databases
``prefect`` and ``mlflow``. The database URLs reach the two servers through environment variables,
never a command line (``ps`` would show the password). PostgreSQL refuses to run as root, so as
root initdb and postgres run as the ``postgres`` system user that Debian's package creates
(``$SCIFLOW_PG_USER`` to choose another) through ``setpriv`` (util-linux), which execs in place: the
PID in ``postgres.pid`` is the postmaster's. That user needs search permission on the folders
above ``$SCIFLOW_HOME``; ``up`` checks it and says so. Postgres is for concurrency (many workers,
many flow runs at once): see docs/reliability.md "Concurrent load".
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from data.settings import current

from .settings import applied, configure, database_url, prefect_user_settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SERVICES = ("postgres", "prefect", "mlflow", "worker")  # started in this order, stopped in reverse
BACKENDS = ("sqlite", "postgres")


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


def _pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with a server (``$SCIFLOW_PG_BIN`` wins)."""
    if (named := current().pg_bin) is not None:
        return named
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: [int(x) for x in p.parts[-3].split(".") if x.isdigit()],
    )
    if not found:
        raise RuntimeError(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: install Debian's postgresql "
            "(infra/setup.sh does), or set SCIFLOW_PG_BIN"
        )
    return found[-1].parent


def _pg_user() -> pwd.struct_passwd | None:
    """The user PostgreSQL runs as when we are root (it refuses root); None when we are not."""
    if os.geteuid() != 0:
        return None
    name = current().pg_user
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL will not run as root and there is no user {name!r} to run it as: install "
            "Debian's postgresql (it creates 'postgres') or set SCIFLOW_PG_USER"
        ) from None


def _as(user: pwd.struct_passwd | None) -> list[str]:
    """Command prefix that runs as ``user`` (setpriv execs in place, so the PID stays the server's)."""
    return (
        [] if user is None else ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
    )


def _pg_url(ports: dict, db: str, driver: str = "") -> str:
    password = (_dir() / "pg.secret").read_text().strip()
    return f"postgresql{driver}://sciflow:{password}@127.0.0.1:{ports['postgres']}/{db}"


def _start_postgres(port: int, timeout: float) -> None:
    """initdb once (user ``sciflow``, password auth on 127.0.0.1), start postgres, create the databases."""
    d, pg, user, bin_ = _dir(), _dir() / "pg", _pg_user(), _pg_bin()
    prefix = _as(user)
    fresh = not (pg / "data" / "PG_VERSION").exists()
    if fresh:
        pg.mkdir(mode=0o700, exist_ok=True)
        secret = d / "pg.secret"
        if not secret.exists():
            secret.touch(mode=0o600)
            secret.write_text(secrets.token_urlsafe(24))
        if user is not None:
            os.chown(pg, user.pw_uid, user.pw_gid)
            if subprocess.run([*prefix, "test", "-w", str(pg)], capture_output=True).returncode != 0:
                raise RuntimeError(
                    f"user {user.pw_name!r} (PostgreSQL does not run as root) cannot reach {pg}: a folder "
                    "above it is private; give it search permission (chmod o+x) or set SCIFLOW_HOME elsewhere"
                )
        pwfile = pg / "initdb.pw"  # readable by the server user for initdb only
        pwfile.touch(mode=0o600)
        pwfile.write_text(secret.read_text())
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        try:
            init = subprocess.run(
                [
                    *prefix,
                    bin_ / "initdb",
                    "-D",
                    pg / "data",
                    "-U",
                    "sciflow",
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                capture_output=True,
                text=True,
            )
        finally:
            pwfile.unlink()
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout[-2000:]}{init.stderr[-2000:]}")
    sockets = str(pg) if len(str(pg)) < 90 else ""  # a Unix socket path is limited to 107 bytes
    _start(
        "postgres",
        [
            *prefix,
            bin_ / "postgres",
            "-D",
            pg / "data",
            "-p",
            port,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={sockets}",
        ],
        dict(os.environ),
    )
    env = {**os.environ, "PGPASSWORD": (d / "pg.secret").read_text().strip()}
    where = ["-h", "127.0.0.1", "-p", str(port), "-U", "sciflow"]
    deadline = time.time() + timeout
    while subprocess.run([bin_ / "pg_isready", *where, "-d", "postgres", "-q"], env=env).returncode != 0:
        if time.time() > deadline or not _pid("postgres"):
            raise RuntimeError(f"postgres did not start; see {d / 'postgres.log'}")
        time.sleep(0.3)
    if fresh:
        for db in ("prefect", "mlflow"):
            made = subprocess.run([bin_ / "createdb", *where, db], env=env, capture_output=True, text=True)
            if made.returncode != 0:
                raise RuntimeError(f"createdb {db} failed: {made.stderr.strip()}")


def _start(name: str, args: list, env: dict) -> int:
    log = open(_dir() / f"{name}.log", "ab")  # noqa: SIM115  (handed to the server process; closed below)
    proc = subprocess.Popen(
        [str(a) for a in args],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (_dir() / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def env_for(ports: dict) -> dict[str, str]:
    """The variables that point clients at the stack."""
    return {
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "SCIFLOW_REPO": str(ROOT),
    }


def up(prefect_port: int = 4200, mlflow_port: int = 5000, timeout: float = 120, backend: str = "sqlite") -> dict:
    """Start what is not running yet; returns the addresses. ``backend``: where Prefect and MLflow
    keep their state, ``sqlite`` (files under $SCIFLOW_HOME) or ``postgres`` (a server started here)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    home = configure()
    d = _dir()
    running = (d / "ports.json").exists() and any(map(_pid, SERVICES))
    ports = (
        json.loads((d / "ports.json").read_text())
        if running
        else {"prefect": _free_port(prefect_port), "mlflow": _free_port(mlflow_port)}
    )
    if ports.setdefault("backend", "sqlite") != backend and running:
        raise RuntimeError(
            f"the stack is running on {ports['backend']}; `sciflow stack down` first to switch to {backend}"
        )
    ports["backend"] = backend
    if backend == "postgres" and "postgres" not in ports:
        ports["postgres"] = _free_port(5432)
    (d / "ports.json").write_text(json.dumps(ports))
    base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    stack_env = {**base, **env_for(ports)}
    prefect_env, mlflow_env = dict(base), {**base, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{home / 'mlflow.db'}"}
    if "PREFECT_SERVER_DATABASE_CONNECTION_URL" in applied() or not (
        {"server.database.connection_url"} & prefect_user_settings()
    ):  # the server's database is under $SCIFLOW_HOME unless the user configured one
        prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url()
    if backend == "postgres":
        if not _pid("postgres"):
            _start_postgres(ports["postgres"], timeout)
        prefect_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = _pg_url(ports, "prefect", "+asyncpg")
        # Prefect's defaults (5 s to connect, 10 s per statement) are for a quiet server. Under 16 flow runs
        # on 2 cores a new PostgreSQL backend took over 5 s to start, and the scheduler service logged the
        # timeout (CI, 2026-12-02). A user's own values win.
        for key, seconds in (("CONNECTION_TIMEOUT", "30"), ("TIMEOUT", "30")):
            prefect_env.setdefault(f"PREFECT_SERVER_DATABASE_{key}", seconds)
        mlflow_env["MLFLOW_BACKEND_STORE_URI"] = _pg_url(ports, "mlflow", "+psycopg2")
    if not _pid("prefect"):
        _start(
            "prefect",
            [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", ports["prefect"]],
            prefect_env,
        )
    if not _pid("mlflow"):  # the store URI comes from MLFLOW_BACKEND_STORE_URI: a password stays off the command line
        _start(
            "mlflow",
            [
                BIN / "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                ports["mlflow"],
                "--workers",
                "1",
                "--default-artifact-root",
                (home / "mlartifacts").as_uri(),
            ],
            mlflow_env,
        )
    _wait_http(f"{stack_env['PREFECT_API_URL']}/health", timeout, "prefect")
    _wait_http(f"{stack_env['MLFLOW_TRACKING_URI']}/health", timeout, "mlflow")
    prefect = [BIN / "prefect", "--no-prompt"]
    pools = subprocess.run(
        [*map(str, prefect), "work-pool", "ls"], env=stack_env, capture_output=True, text=True, cwd=ROOT
    )
    if " local " not in pools.stdout:
        subprocess.run(
            [*map(str, prefect), "work-pool", "create", "local", "--type", "process"],
            env=stack_env,
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
    deploy = subprocess.run(
        [*map(str, prefect), "deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
        env={**stack_env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if deploy.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{deploy.stdout[-2000:]}{deploy.stderr[-2000:]}")
    try:
        apply_automations(stack_env["PREFECT_API_URL"])
    except (OSError, ValueError) as exc:  # HTTPError is an OSError; a bad file a ValueError
        detail = exc.read().decode(errors="replace")[:2000] if hasattr(exc, "read") else ""
        raise RuntimeError(f"applying {AUTOMATIONS.relative_to(ROOT)} failed: {exc} {detail}") from exc
    if not _pid("worker"):
        _start("worker", [BIN / "prefect", "worker", "start", "--pool", "local"], stack_env)
    (d / "stack.env").write_text("".join(f"export {k}={v}\n" for k, v in env_for(ports).items()))
    return status()


AUTOMATIONS = ROOT / "infra" / "automations.yaml"


def prefect_api(base: str, method: str, path: str, body: object = None, attempts: int = 6) -> object:
    """One Prefect REST call; a 503 (the server's "retry me": its database was busy) or 429 is
    retried with back-off 1, 2, 4, ... s, as Prefect's own client does."""
    for attempt in range(attempts):
        req = urllib.request.Request(
            base.rstrip("/") + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            if err.code not in (429, 503) or attempt == attempts - 1:
                raise
            time.sleep(2**attempt)
    raise AssertionError("unreachable")


def _alerts_block(api_url: str, ref: str) -> str:
    """The id of the block document ``<block-type-slug>/<name>``; a clear error when there is none."""
    import urllib.error

    slug, _, name = ref.partition("/")
    try:
        doc = prefect_api(api_url, "GET", f"/block_types/slug/{slug}/block_documents/name/{name}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(
            f"$SCIFLOW_ALERTS_BLOCK={ref!r}: no block {name!r} of type {slug!r} on {api_url} ({exc.code}); create it "
            "(e.g. in the UI: Blocks > Slack Webhook) or unset the variable"
        ) from None
    return str(doc["id"])  # type: ignore[index]


def automation_specs(path: Path = AUTOMATIONS, alerts_block_id: str | None = None) -> list[dict]:
    """The automations of ``path`` validated by Prefect's own model (as JSON), with a
    ``send-notification`` action through ``alerts_block_id`` added to those listed under ``notify``."""
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    doc = yaml.safe_load(path.read_text())
    notify = set(doc.get("notify", []))
    names = [a["name"] for a in doc["automations"]]
    if unknown := notify - set(names):
        raise ValueError(f"{path}: notify lists {sorted(unknown)}, which are not automations here")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: automation names must be unique, got {names}")
    specs = []
    for raw in doc["automations"]:
        spec = AutomationCore.model_validate(raw).model_dump(mode="json", exclude={"owner_resource"})
        if alerts_block_id and raw["name"] in notify:
            spec["actions"] = [a for a in spec["actions"] if a["type"] != "do-nothing"]
            spec["actions"].append(
                {
                    "type": "send-notification",
                    "block_document_id": alerts_block_id,
                    "subject": f"[sciflow] {raw['name']}",
                    "body": "{{ flow.name }} / {{ flow_run.name }} is {{ flow_run.state.name }}: "
                    "{{ flow_run.state.message }}\nflow run {{ flow_run.id }}",
                }
            )
        specs.append(spec)
    return specs


def apply_automations(api_url: str, path: Path = AUTOMATIONS) -> list[str]:
    """Make the server's automations tagged ``sciflow`` exactly those of ``path``: create the new
    ones, update those of the same name, delete the ones the file no longer lists. Returns their
    names. With the ``alerts_block`` setting (``$SCIFLOW_ALERTS_BLOCK``), the ``notify`` ones also send through that block."""
    from data.settings import current

    ref = current().alerts_block
    specs = automation_specs(path, _alerts_block(api_url, ref) if ref else None)
    existing: list[dict] = prefect_api(api_url, "POST", "/automations/filter", {})  # type: ignore[assignment]
    ours: dict[str, list[str]] = {}
    for a in existing:
        if "sciflow" in a.get("tags", []):
            ours.setdefault(a["name"], []).append(a["id"])
    for spec in specs:
        ids = ours.pop(spec["name"], [])
        if ids:
            prefect_api(api_url, "PUT", f"/automations/{ids[0]}", spec)
            ours["duplicates of " + spec["name"]] = ids[1:]  # (one created twice by hand: removed below)
        else:
            prefect_api(api_url, "POST", "/automations/", spec)
    for stale in ours.values():
        for automation_id in stale:
            prefect_api(api_url, "DELETE", f"/automations/{automation_id}")
    return [spec["name"] for spec in specs]


def status() -> dict:
    d = _dir()
    ports = json.loads((d / "ports.json").read_text()) if (d / "ports.json").exists() else {}
    names = SERVICES if ports.get("backend") == "postgres" or _pid("postgres") else SERVICES[1:]
    out = {name: {"pid": _pid(name), "log": str(d / f"{name}.log")} for name in names}
    if ports:
        out["backend"] = ports.get("backend", "sqlite")
        out["prefect"]["ui"] = f"http://127.0.0.1:{ports['prefect']}"
        out["mlflow"]["ui"] = f"http://127.0.0.1:{ports['mlflow']}"
        out["env"] = str(d / "stack.env")
    return out


def stop_service(name: str, timeout: float = 20) -> bool:
    """Stop one service of the stack (``postgres``, ``prefect``, ``mlflow`` or ``worker``) by PID;
    True if it was running. ``up`` starts it again (what a restart is)."""
    if name not in SERVICES:
        raise ValueError(f"service must be one of {SERVICES}, got {name!r}")
    pid = _pid(name)
    if pid:
        if name == "postgres":  # SIGINT to the postmaster: its "fast" shutdown, it stops its own backends
            os.kill(pid, signal.SIGINT)
        else:
            os.killpg(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    (_dir() / f"{name}.pid").unlink(missing_ok=True)
    return pid is not None


def down(timeout: float = 20) -> list[str]:
    """Stop what ``up`` started (worker first), by PID; returns the names stopped."""
    return [name for name in reversed(SERVICES) if stop_service(name, timeout)]


def main(action: str, backend: str = "sqlite") -> int:
    if action == "up":
        try:
            info = up(backend=backend)
        except RuntimeError as exc:  # a clear message, no traceback; `sciflow stack down` cleans up
            print(f"sciflow stack up: {exc}", file=sys.stderr)
            return 1
        print(
            f"Prefect UI: {info['prefect']['ui']}\nMLflow UI:  {info['mlflow']['ui']}\n"
            f"backend: {info['backend']}"
            + (
                f" (postgres pid {info['postgres']['pid']}, data in {_dir() / 'pg'})\n"
                if backend == "postgres"
                else "\n"
            )
            + f"worker pid {info['worker']['pid']} on pool 'local'; deployments from infra/prefect.yaml\n"
            f"point clients at it:  source {info['env']}\n"
            f"then e.g.: prefect deployment run nightly-benchmark/nightly -p scale=smoke"
        )
    elif action == "status":
        print(json.dumps(status(), indent=2))
    elif action == "down":
        print("stopped: " + (", ".join(down()) or "nothing was running"))
    return 0

"""MLflow tracking by run id: one MLflow run per Prefect flow run.

Everything goes through ``MlflowClient`` with an explicit ``run_id`` (MLflow's active run is
thread-local, and Prefect tasks run in worker threads). A run that raises is ended FAILED
(KILLED on interrupt) with the error in a tag, never left RUNNING.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from data.errors import SciflowError

from . import settings

EXPERIMENT = os.environ.get("SCIFLOW_EXPERIMENT", "sciflow")
_MAX_PARAM = 6000


class TrackingUnavailableError(SciflowError, RuntimeError):
    """The MLflow tracking server does not answer."""


_checked: set[str] = set()


def client() -> MlflowClient:
    """An MlflowClient for the configured tracking URI. A tracking *server* is probed once per
    process (``/health``, 5 s): a dead server is a clear error at once, not minutes of retries.
    The first call in a process applies the settings (:func:`flows.settings.configure`)."""
    settings.configure()
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")) and uri not in _checked:
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
        except OSError as exc:
            raise TrackingUnavailableError(
                f"MLflow tracking server at {redact_text(uri)} is not reachable ({exc}); "
                "start it (sciflow stack up) or unset MLFLOW_TRACKING_URI for the local store"
            ) from exc
        _checked.add(uri)
    return MlflowClient()


def experiment_id(name: str = EXPERIMENT) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=settings.mlflow_artifact_location())
    except mlflow.exceptions.MlflowException:  # created concurrently
        return c.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        commit = out.stdout.strip()
        if out.returncode == 0 and commit:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def prefect_tags() -> dict[str, str]:
    """Tags naming the current Prefect flow run and deployment (empty outside a flow)."""
    from prefect.runtime import deployment, flow_run

    tags = {}
    if flow_run.id:
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
        tags["prefect.flow_name"] = str(flow_run.flow_name)
    tags["prefect.deployment"] = str(deployment.name) if deployment.name else "none"
    return tags


def standard_tags() -> dict[str, str]:
    from data.provenance import lock_digest, package_versions

    tags = {"git.commit": git_commit(), **prefect_tags(), "sciflow.process": _process_token(os.getpid()) or "unknown"}
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    tags["sciflow.lock.sha256"] = lock_digest()
    return tags


REDACTED = "***"
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "tokens",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "apikey",
    }
)
_KEY_QUALIFIERS = frozenset(
    {"api", "access", "private", "secret", "signing", "encryption", "ssh", "auth", "account", "client", "master"}
)
_URL_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@\s:]*):[^/@\s]*@", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether a parameter name looks like a credential: a dotted segment containing a word such as
    password, token, secret, auth, credentials, or ``key`` alone / after api, access, private, ...
    (``api_key``, ``db.password``, ``authToken``: yes; ``config_key``, ``spec_hash``, ``k``: no)."""
    for segment in name.split("."):
        words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", segment).lower())
        words = [w for w in words if w]
        if any(w in _SECRET_WORDS for w in words) or words == ["key"]:
            return True
        if any(w == "key" and i > 0 and words[i - 1] in _KEY_QUALIFIERS for i, w in enumerate(words)):
            return True
    return False


def redact_text(text: str) -> str:
    """Mask the password of ``scheme://user:password@host`` URLs inside ``text``."""
    return _URL_USERINFO.sub(lambda m: f"{m['head']}:{REDACTED}@", text)


def _scrub(value: Any) -> Any:
    """Redact secret-looking keys and URL passwords inside lists / dicts before JSON-encoding."""
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret(str(k)) else _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return redact_text(value) if isinstance(value, str) else value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; values JSON-encoded when not scalar.

    Secrets never reach MLflow params: the value of a secret-looking name (:func:`is_secret`) is
    replaced by ``***``, and URL passwords (``scheme://user:***@host``) are masked."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if is_secret(name):
            out[name] = REDACTED
        elif isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out[name] = redact_text(str(value))
        else:
            out[name] = json.dumps(_scrub(value), default=str)
    return {k: v[:_MAX_PARAM] for k, v in out.items()}


def _process_token(pid: int) -> str | None:
    """``host:pid:start-time`` of a live process (start time from /proc, so a reused PID does
    not match), or None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{socket.gethostname()}:{pid}:{start}"


def _crash_flow_run(prefect_client, flow_run_id: str, why: str) -> None:
    """Mark a Prefect flow run whose process is gone CRASHED if it still claims to be running
    (a killed process never reports; nothing else on a local stack notices)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    try:
        state = prefect_client.read_flow_run(flow_run_id).state
    except ObjectNotFound:
        return
    if state is not None and not state.is_final():
        prefect_client.set_flow_run_state(
            flow_run_id, Crashed(message=f"sciflow: {why}; marked crashed by a later run"), force=True
        )


def reap_orphans(experiment: str = EXPERIMENT) -> list[str]:
    """End MLflow runs left RUNNING by a process that died (SIGKILL, OOM, lost node).

    A run is an orphan when the process that opened it (tag ``sciflow.process``, this host
    only) is gone, or when its Prefect flow run (tag ``prefect.flow_run_id``) is in a final
    state (crashed, failed, cancelled, completed) or no longer exists. The ephemeral Prefect API
    dies with its process and never marks the flow run crashed, hence the process check; such a
    flow run, still RUNNING in Prefect, is marked CRASHED. The MLflow run is ended KILLED with
    the reason in ``sciflow.error``. Returns the ids it ended.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500)
    ended = []
    with get_client(sync_client=True) as prefect_client:
        for run in runs:
            flow_run_id = run.data.tags.get("prefect.flow_run_id")
            owner = run.data.tags.get("sciflow.process", "")
            host, _, pid = owner.partition(":")
            if host == socket.gethostname() and pid.split(":")[0].isdigit():
                if _process_token(int(pid.split(":")[0])) == owner:
                    continue  # its process is alive: not an orphan
                why = f"process {owner} that ran it is gone"
                if flow_run_id:
                    _crash_flow_run(prefect_client, flow_run_id, why)
            elif flow_run_id:
                try:
                    state = prefect_client.read_flow_run(flow_run_id).state
                except ObjectNotFound:
                    state = None
                if state is not None and not state.is_final():
                    continue
                why = f"flow run {flow_run_id} is {state.name if state else 'gone'}"
            else:
                continue
            why += "; it died without ending this run"
            c.set_tag(run.info.run_id, "sciflow.error", why)
            c.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
    return ended


@contextmanager
def mlflow_run(
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Create a run (nested under ``parent_run_id`` when given), yield its id, end it
    FINISHED / FAILED / KILLED according to how the block exits."""
    c = client()
    all_tags = {**standard_tags(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(), run_name=run_name, tags=all_tags)
    run_id = run.info.run_id
    try:
        if params:
            c.log_batch(run_id, params=[Param(k, v) for k, v in flatten(params).items()])
        yield run_id
    except BaseException as exc:
        from prefect.exceptions import TerminationSignal  # SIGTERM from a cancelling worker

        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit, TerminationSignal)) else "FAILED"
        try:
            c.set_tag(run_id, "sciflow.error", redact_text(f"{type(exc).__name__}: {exc}")[:5000])
        finally:
            c.set_terminated(run_id, status)
        raise
    else:
        c.set_terminated(run_id, "FINISHED")


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    import time

    now = int(time.time() * 1000)
    client().log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_dataset(run_id: str, ref, context: str = "generated") -> None:
    """Record a dataset as an MLflow run input (name, source path, digest, spec hash).

    MLflow's digest column holds 36 characters, so it gets the first 32 hex digits of the
    SHA-256; the full digest is the ``sciflow.dataset.sha256`` tag.
    """
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    ds = MetaDataset(source=LocalArtifactDatasetSource(ref.path), name=Path(ref.path).name, digest=ref.digest[:32])
    c = client()
    c.log_inputs(
        run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])]
    )
    c.set_tag(run_id, "sciflow.dataset.sha256", ref.digest)
    c.set_tag(run_id, "sciflow.dataset.path", ref.path)


def log_figure(run_id: str, fig, name: str, dpi: int = 80) -> None:
    """Save ``fig`` as a PNG artifact of the run (rendered once, at ``dpi``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        fig.savefig(path, dpi=dpi)
        parent = str(Path(name).parent)
        client().log_artifact(run_id, str(path), None if parent == "." else parent)


def log_json(run_id: str, obj: Any, name: str) -> None:
    client().log_text(run_id, json.dumps(obj, indent=2, default=str), name)


def ui_hint() -> str:
    """The command that opens the MLflow UI on this project's runs."""
    import sys

    settings.configure()
    exe = Path(sys.executable).parent / "mlflow"
    with suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    uri = mlflow.get_tracking_uri()
    return f"{exe} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000"


__all__ = ["mlflow_run", "log_metrics", "log_dataset", "log_figure", "log_json", "ui_hint"]

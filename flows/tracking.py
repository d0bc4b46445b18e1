"""MLflow tracking by run id: one MLflow run per Prefect flow run.

Everything goes through ``MlflowClient`` with an explicit ``run_id`` (MLflow's active run is
thread-local, and Prefect tasks run in worker threads). A run that raises is ended FAILED
(KILLED on interrupt) with the error in a tag, never left RUNNING.

Layout (docs/flows.md, "MLflow"): one experiment per kind of work (:func:`experiment_name`:
data, training, benchmarks, nightly); a run nested under a parent (``parent_run_id``) lives in
its parent's experiment, so MLflow shows the whole tree of a night or of a benchmark in one
place. Every compared method of a benchmark is a child run (:class:`MethodRuns`). Trained models
are logged with the project's code and full requirements and registered (:func:`log_model`), so
``mlflow.pytorch.load_model("models:/NAME@ALIAS")`` works outside the repository
(:func:`load_registered`).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from data.errors import InputError, SciflowError
from data.settings import current

from . import settings
from .metric_names import key_part, numeric_fields

_MAX_PARAM = 6000
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# experiments: one per kind of work (the ONE place their names come from)

#: Kind of work -> what goes there (top-level runs; a nested run goes to its parent's experiment).
KINDS: dict[str, str] = {
    "data": "generate-dataset runs",
    "training": "train-* runs (and optimize: one fit with a per-iteration history)",
    "benchmarks": "bench-* runs, one child run per compared method",
    "nightly": "nightly-benchmark runs with every stage nested",
}


def experiment_name(kind: str) -> str:
    """The experiment of ``kind`` (:data:`KINDS`): ``<prefix>-<kind>`` with ``prefix`` the
    ``experiment`` setting (``$SCIFLOW_EXPERIMENT``, default ``sciflow``)."""
    if kind not in KINDS:
        raise InputError(f"experiment kind {kind!r} is unknown; choose one of {list(KINDS)}")
    return f"{current().experiment}-{kind}"


def kind_of(stage: str | None) -> str:
    """The kind of work of a ``sciflow.stage`` tag: ``generate-dataset`` -> data, ``bench-*`` ->
    benchmarks, ``nightly`` -> nightly, anything else (``train-*``, ``optimize``) -> training."""
    stage = stage or ""
    if stage == "generate-dataset":
        return "data"
    if stage.startswith("bench-"):
        return "benchmarks"
    if stage == "nightly":
        return "nightly"
    return "training"


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


def experiment_id(kind: str = "training") -> str:
    """The id of the experiment of ``kind`` (:func:`experiment_name`), created on first use."""
    name = experiment_name(kind)
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=settings.mlflow_artifact_location())
    except mlflow.exceptions.MlflowException:  # created concurrently
        return c.get_experiment_by_name(name).experiment_id


def experiment_ids() -> list[str]:
    """The ids of every kind's experiment that exists (what a search over all sciflow runs uses)."""
    c = client()
    return [exp.experiment_id for kind in KINDS if (exp := c.get_experiment_by_name(experiment_name(kind)))]


def find_runs(filter_string: str, max_results: int = 1000) -> list:
    """Runs of every sciflow experiment matching ``filter_string`` (newest first)."""
    ids = experiment_ids()
    if not ids:
        return []
    return client().search_runs(
        ids, filter_string=filter_string, max_results=max_results, order_by=["attributes.start_time DESC"]
    )


def git_commit() -> str:
    """The checkout's commit (``-dirty`` with uncommitted changes to tracked files); without a git work
    tree (an image) the ``git_commit`` setting (``$SCIFLOW_GIT_COMMIT``, baked in by
    ``infra/cluster/build.sh``); else ``unknown``."""
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
    from data.settings import current

    return current().git_commit or "unknown"


def prefect_flow_run_url(flow_run_id: str) -> str | None:
    """The Prefect UI page of a flow run, when a UI address is known (``PREFECT_UI_URL``, or
    derived from ``PREFECT_API_URL``); None on the ephemeral API."""
    from prefect.utilities.urls import url_for

    try:
        return url_for("flow-run", obj_id=flow_run_id)
    except Exception:  # noqa: BLE001 (no UI configured)
        return None


def prefect_tags() -> dict[str, str]:
    """Tags naming the current Prefect flow run (and its UI page when known) and deployment
    (empty outside a flow)."""
    from prefect.runtime import deployment, flow_run

    tags = {}
    if flow_run.id:
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
        tags["prefect.flow_name"] = str(flow_run.flow_name)
        if url := prefect_flow_run_url(str(flow_run.id)):
            tags["prefect.flow_run_url"] = url
            tags["mlflow.note.content"] = f"Prefect flow run [{flow_run.name}]({url})"
    tags["prefect.deployment"] = str(deployment.name) if deployment.name else "none"
    return tags


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 (no passwd entry in a container)
        return os.environ.get("USER") or "unknown"


def source_tags(commit: str | None = None) -> dict[str, str]:
    """MLflow's standard source tags, which fill the UI's Source, Version and User columns:
    the flow's entrypoint (``flows/operator.py:train_operator``) run by a deployment (``JOB``)
    or by hand (``LOCAL``), else the script; the git commit; the user."""
    from prefect.context import FlowRunContext
    from prefect.runtime import deployment

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow is not None:
        fn = ctx.flow.fn
        try:  # the file in the checkout: a deployment loads its entrypoint as a script (module `nightly`)
            where = Path(inspect.getfile(fn)).resolve().relative_to(Path(__file__).resolve().parents[1]).as_posix()
        except (TypeError, ValueError):  # (not a file of this checkout)
            where = f"{fn.__module__.replace('.', '/')}.py"
        name = f"{where}:{fn.__name__}"
    else:
        arg0 = sys.argv[0] if sys.argv else ""
        name = Path(arg0).name if arg0 and arg0 != "-c" else "python -c"
    tags = {
        "mlflow.source.name": name,
        "mlflow.source.type": "JOB" if deployment.id else "LOCAL",
        "mlflow.user": _user(),
    }
    commit = (commit or git_commit()).removesuffix("-dirty")
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def standard_tags() -> dict[str, str]:
    from data.provenance import lock_digest, package_versions

    commit = git_commit()
    tags = {
        **source_tags(commit),
        "git.commit": commit,
        **prefect_tags(),
        "sciflow.process": _process_token(os.getpid()) or "unknown",
    }
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


def reap_orphans() -> list[str]:
    """End MLflow runs left RUNNING by a process that died (SIGKILL, OOM, lost node).

    A run is an orphan when the process that opened it (tag ``sciflow.process``, this host
    only) is gone, or when its Prefect flow run (tag ``prefect.flow_run_id``) is in a final
    state (crashed, failed, cancelled, completed) or no longer exists (every kind's experiment
    is searched). The ephemeral Prefect API
    dies with its process and never marks the flow run crashed, hence the process check; such a
    flow run, still RUNNING in Prefect, is marked CRASHED. The MLflow run is ended KILLED with
    the reason in ``sciflow.error``. Returns the ids it ended.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    c = client()
    runs = find_runs("attributes.status = 'RUNNING'", max_results=500)
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


def _server() -> str | None:
    """The tracking server's base URL without credentials or a trailing slash; None for a local store."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    scheme, _, rest = uri.partition("://")
    host, sep, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{sep}{path}".rstrip("/")


def run_url(experiment: str, run_id: str) -> str | None:
    """The MLflow UI page of a run, when the tracking URI is a server (``http(s)://``; any
    ``user:password@`` is left out); None for a local store."""
    base = _server()
    return None if base is None else f"{base}/#/experiments/{experiment}/runs/{run_id}"


def artifact_url(run_id: str, path: str) -> str | None:
    """A URL a browser can fetch a run's artifact from (the tracking server's ``get-artifact``
    endpoint); None for a local store."""
    import urllib.parse

    base = _server()
    return None if base is None else f"{base}/get-artifact?{urllib.parse.urlencode({'path': path, 'run_uuid': run_id})}"


def link_flow_run(experiment: str, run_id: str, run_name: str) -> None:
    """Inside a Prefect flow run: an artifact on the flow run pointing at its MLflow run (a link
    artifact to the MLflow UI when a tracking server is used, else a note with the run id and
    how to open the UI). A no-op outside a flow run."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    name = experiment_label(experiment)
    url = run_url(experiment, run_id)
    try:
        if url:
            create_link_artifact(
                link=url, link_text=f"MLflow run {run_name}", description=f"MLflow run of this flow run ({name})"
            )
        else:
            create_markdown_artifact(
                markdown=f"MLflow run `{run_name}` (`{run_id}`) in experiment `{name}`, local store "
                f"`{redact_text(mlflow.get_tracking_uri())}`; open it with `sciflow ui`.",
                description=f"MLflow run of this flow run ({name})",
            )
    except Exception as exc:  # noqa: BLE001 (a link is a convenience: never fail a run for it)
        import logging

        logging.getLogger(__name__).warning("could not link flow run to MLflow run %s: %s", run_id, exc)


def experiment_label(experiment: str) -> str:
    """An experiment's name from its id (the id itself when it cannot be read)."""
    try:
        return client().get_experiment(experiment).name
    except Exception:  # noqa: BLE001
        return experiment


@contextmanager
def mlflow_run(
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[str]:
    """Create a run (nested under ``parent_run_id`` when given), yield its id, end it
    FINISHED / FAILED / KILLED according to how the block exits.

    A top-level run goes to the experiment of its kind of work (:func:`kind_of` its
    ``sciflow.stage`` tag); a nested run to its parent's experiment. Inside a Prefect flow run
    the flow run gets an artifact linking to this run (:func:`link_flow_run`)."""
    c = client()
    all_tags = {**standard_tags(), **(tags or {})}
    all_tags.setdefault("sciflow.kind", kind_of(all_tags.get("sciflow.stage")))
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id

    def create():  # the server answered the probe: an outage from here on is waited out
        if parent_run_id:
            experiment = c.get_run(parent_run_id).info.experiment_id
        else:
            experiment = experiment_id(all_tags["sciflow.kind"])
        return c.create_run(experiment, run_name=run_name, tags=all_tags).info

    info = when_reachable(None, f"creating run {run_name}", create)
    run_id, experiment = info.run_id, info.experiment_id
    try:
        if params:
            log_params(run_id, params)
        link_flow_run(experiment, run_id, run_name)
        yield run_id
    except BaseException as exc:
        from prefect.exceptions import TerminationSignal  # SIGTERM from a cancelling worker

        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit, TerminationSignal)) else "FAILED"
        try:
            log_tags(run_id, {"sciflow.error": redact_text(f"{type(exc).__name__}: {exc}")})
        finally:
            write(run_id, "set_terminated", status=status)
            finish(run_id, wait=False)  # a failing run does not wait for the server; its spool stays
        raise
    else:
        write(run_id, "set_terminated", status="FINISHED")
        finish(run_id)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` flattened (:func:`flatten`), in batches of 100 (MLflow's limit)."""
    for batch in _chunks(list(flatten(params).items()), 100):
        write(run_id, "log_batch", params=batch)


def log_tags(run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` in batches of 100."""
    for batch in _chunks([(k, str(v)[:5000]) for k, v in tags.items()], 100):
        write(run_id, "log_batch", tags=batch)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log ``metrics`` at ``step`` in batches of 1000 (MLflow's limit per call)."""
    now = int(time.time() * 1000)
    for batch in _chunks([(k, float(v), now, step) for k, v in metrics.items()], 1000):
        write(run_id, "log_batch", metrics=batch)


def log_artifact(run_id: str, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Upload the file ``local_path`` to the run's artifacts (under ``artifact_path``)."""
    write(run_id, "log_artifact", local_path=str(local_path), artifact_path=artifact_path)


# ---------------------------------------------------------------------------------------------
# writes that ride out a tracking-server outage (flows.spool)

#: run id -> monotonic time of the first failed call of the outage in progress
_outages: dict[str, float] = {}
#: run id -> monotonic time of the last delivery attempt of its spool
_attempts: dict[str, float] = {}
#: seconds between delivery attempts of a spool while the server stays unreachable
RETRY_S = 5.0


def _send(run_id: str, op: str, args: Mapping[str, Any]) -> None:
    """One run-scoped MLflow call (``op`` as :func:`write` names them) made now."""
    c = client()
    if op == "log_batch":
        c.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in args.get("metrics", [])],
            params=[Param(k, v) for k, v in args.get("params", [])],
            tags=[RunTag(k, v) for k, v in args.get("tags", [])],
        )
    elif op == "log_artifact":
        c.log_artifact(run_id, args["local_path"], args.get("artifact_path"))
    elif op == "log_text":
        c.log_text(run_id, args["text"], args["artifact_file"])
    elif op == "set_terminated":
        c.set_terminated(run_id, args["status"])
    else:
        raise InputError(f"unknown tracking call {op!r} in a spool of run {run_id}")


def _say(message: str) -> None:
    """A warning in the flow run's logs (or this module's logger outside a run)."""
    import logging

    try:
        from prefect import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # noqa: BLE001 (outside a flow or task run)
        logging.getLogger(__name__).warning(message)


def _remote() -> bool:
    return mlflow.get_tracking_uri().startswith(("http://", "https://"))


def write(run_id: str, op: str, **args: Any) -> None:
    """Make one run-scoped MLflow call (``log_batch`` with ``metrics`` ``[(key, value, ms, step)]``,
    ``params`` / ``tags`` ``[(key, value)]``; ``log_artifact``; ``log_text``; ``set_terminated``),
    or spool it while the tracking server is unreachable (:mod:`flows.spool`): the calls of a run
    with a spool waiting join it in order, and the spool is delivered as soon as the server answers.
    Past the outage limit (``SCIFLOW_TRACKING_OUTAGE_S``) a :class:`TrackingUnavailableError`
    names the spool for ``sciflow tracking flush``."""
    from .spool import Spool, is_outage

    spool = Spool(run_id)
    if spool.pending():
        spool.append(op, **args)
        deliver(run_id)
    else:
        try:
            _send(run_id, op, args)
            return
        except Exception as exc:
            if not _remote() or not is_outage(exc):
                raise
            _outages.setdefault(run_id, time.monotonic())
            _attempts[run_id] = time.monotonic()
            spool.append(op, **args)
            _say(
                f"MLflow at {redact_text(mlflow.get_tracking_uri())} is unreachable ({type(exc).__name__}); "
                f"run {run_id}'s tracking calls are kept in {spool.path} and delivered when it answers "
                f"(limit {current().tracking_outage_s:.0f} s); the work goes on"
            )
    _check_outage(run_id)


def deliver(run_id: str, force: bool = False) -> bool:
    """Try to deliver run ``run_id``'s spool (at most every :data:`RETRY_S` seconds unless
    ``force``); True when nothing is left waiting."""
    from .spool import Spool, is_outage

    spool = Spool(run_id)
    if not spool.pending():
        return True
    if not force and time.monotonic() - _attempts.get(run_id, 0.0) < RETRY_S:
        return False
    _attempts[run_id] = time.monotonic()
    try:
        n = spool.replay(lambda op, args: _send(run_id, op, args))
    except Exception as exc:
        if not is_outage(exc):
            raise
        return False
    started = _outages.pop(run_id, None)
    outage = f" after {time.monotonic() - started:.0f} s" if started is not None else ""
    _say(f"MLflow answers again{outage}: delivered {n} spooled tracking calls of run {run_id}")
    return True


def _check_outage(run_id: str) -> None:
    started = _outages.get(run_id)
    limit = current().tracking_outage_s
    if started is not None and time.monotonic() - started > limit:
        from .spool import Spool

        kept = (
            f"run {run_id}'s tracking calls are kept in {Spool(run_id).path}: deliver them with "
            "`sciflow tracking flush` once the server is back"
            if run_id
            else "no run was created"
        )
        raise TrackingUnavailableError(
            f"MLflow at {redact_text(mlflow.get_tracking_uri())} has been unreachable for "
            f"{time.monotonic() - started:.0f} s (limit SCIFLOW_TRACKING_OUTAGE_S={limit:.0f} s); {kept}"
        )


def when_reachable(run_id: str | None, what: str, call: Callable[[], T]) -> T:
    """``call()`` (a call that needs the server itself: creating a run, registering a model)
    after run ``run_id``'s spool is delivered; an outage is waited out up to the limit, then a
    :class:`TrackingUnavailableError`. ``run_id`` None: no run yet (the outage is timed under
    the key ``""``)."""
    from .spool import is_outage

    if run_id is not None:
        finish(run_id)
    key = run_id or ""
    while True:
        try:
            result = call()
        except Exception as exc:
            if not _remote() or not is_outage(exc):
                raise
            if key not in _outages:
                _outages[key] = time.monotonic()
                _say(f"MLflow unreachable while {what}; waiting for it (limit {current().tracking_outage_s:.0f} s)")
            _check_outage(key)
            time.sleep(RETRY_S)
            continue
        started = _outages.pop(key, None) if run_id is None else None
        if started is not None:
            _say(f"MLflow answers again after {time.monotonic() - started:.0f} s: {what} done")
        return result


def finish(run_id: str, wait: bool = True) -> None:
    """Deliver what run ``run_id`` spooled, waiting (``wait``) for the server up to the outage
    limit; past it, a :class:`TrackingUnavailableError` naming the spool."""
    while not deliver(run_id, force=True):
        if not wait:
            return
        _outages.setdefault(run_id, time.monotonic())
        _check_outage(run_id)
        time.sleep(RETRY_S)


# ---------------------------------------------------------------------------------------------
# metric names


def row_prefix(row: Mapping[str, Any]) -> str:
    """The default metric prefix of a benchmark row: its problem (:func:`key_part`)."""
    return key_part(row.get("problem", ""))


# ---------------------------------------------------------------------------------------------
# one child run per compared method


class MethodRuns:
    """The compared methods of one benchmark run, each an MLflow child run of it.

    A method's run is created on first use (so a trained model's run spans its training), named
    after the method, tagged ``sciflow.stage = method``, ``sciflow.method``,
    ``sciflow.benchmark``. Benchmark modules hand it their methods' configs (:meth:`log_params`),
    per-epoch training metrics (:meth:`on_epoch`, metric ``<problem>/train/<name>`` at
    ``step = epoch``, or the training step for step budgets) and trained models (:meth:`log_model`); :meth:`log_rows` logs every numeric
    field of every result row as ``<problem>/<field>`` on its method's run. ``parent_run_id=None``
    makes every call a no-op (a benchmark run without tracking)."""

    STAGE = "method"

    def __init__(self, parent_run_id: str | None, benchmark: str = "", scale: str = "") -> None:
        self.parent_run_id, self.benchmark, self.scale = parent_run_id, benchmark, scale
        self._runs: dict[str, str] = {}
        self._experiment: str | None = None
        self._tags: dict[str, str] | None = None
        self.models: list[Any] = []  # the ModelVersions registered by log_model

    @property
    def enabled(self) -> bool:
        return self.parent_run_id is not None

    @property
    def run_ids(self) -> dict[str, str]:
        """Method -> its child run id, for the methods that have one so far."""
        return dict(self._runs)

    def run_id(self, method: str) -> str | None:
        """The child run of ``method`` (created now if it has none); None when disabled."""
        if self.parent_run_id is None:
            return None
        if method not in self._runs:
            c = client()
            if self._experiment is None:
                parent = c.get_run(self.parent_run_id)
                self._experiment = parent.info.experiment_id
                keep = ("mlflow.source.", "mlflow.user", "git.commit", "prefect.", "sciflow.process", "version.")
                self._tags = {k: v for k, v in parent.data.tags.items() if k.startswith(keep)}
                self._tags.pop("mlflow.note.content", None)
            tags = {
                **(self._tags or {}),
                "mlflow.parentRunId": self.parent_run_id,
                "sciflow.stage": self.STAGE,
                "sciflow.kind": "benchmarks",
                "sciflow.method": method,
                "sciflow.benchmark": self.benchmark,
            }
            run = c.create_run(self._experiment, run_name=method, tags=tags)
            self._runs[method] = run.info.run_id
            log_params(run.info.run_id, {"method": method, "benchmark": self.benchmark, "scale": self.scale})
        return self._runs[method]

    def log_params(self, method: str, params: Mapping[str, Any]) -> None:
        """``method``'s configuration, flattened (``model.rank``, ``epochs``, ...); a param
        already logged with another value is skipped (MLflow params are write-once)."""
        if (run_id := self.run_id(method)) is None:
            return
        have = client().get_run(run_id).data.params
        new = {k: v for k, v in flatten(params).items() if k not in have}
        if new:
            log_params(run_id, new)

    def on_epoch(
        self, method: str, problem: str, then: Callable[[int, dict], None] | None = None
    ) -> Callable[[int, dict], None]:
        """A training loop's ``on_epoch(epoch, row)``: logs the row's numbers as
        ``<problem>/train/<name>`` at ``step = epoch`` on ``method``'s run, then calls ``then``."""
        prefix = f"{key_part(problem)}/train/"

        def log(epoch: int, row: dict) -> None:
            if (run_id := self.run_id(method)) is not None:
                numbers = {prefix + k: v for k, v in numeric_fields(row).items() if k not in ("epoch", "step")}
                log_metrics(run_id, numbers, step=int(epoch))
            if then is not None:
                then(epoch, row)

        return log

    def log_model(self, method: str, model, name: str, input_shape: tuple[int, ...], **kwargs: Any) -> None:
        """Log ``method``'s trained ``model`` to its run and register it as ``name``
        (:func:`log_model`, which takes ``kwargs``)."""
        if (run_id := self.run_id(method)) is not None:
            version = log_model(run_id, model, name, input_shape, **kwargs)
            if version is not None:
                self.models.append(version)

    def log_rows(
        self, rows: Iterable[Mapping[str, Any]], prefix: Callable[[Mapping[str, Any]], str] = row_prefix
    ) -> None:
        """Every numeric field of every row as ``<prefix(row)>/<field>`` on the run of the row's
        ``method`` (a key met twice for one method gets ``-2``, ``-3``, ...)."""
        if self.parent_run_id is None:
            return
        per: dict[str, dict[str, float]] = {}
        for row in rows:
            if "method" not in row:
                continue
            metrics = per.setdefault(str(row["method"]), {})
            head = prefix(row)
            for field, value in numeric_fields(row).items():
                key, n = f"{head}/{field}", 2
                while key in metrics:
                    key, n = f"{head}/{field}-{n}", n + 1
                metrics[key] = value
        for method, metrics in per.items():
            log_metrics(self.run_id(method), metrics)  # type: ignore[arg-type]

    def close(self, status: str = "FINISHED") -> None:
        """End every method's run with ``status``."""
        for run_id in self._runs.values():
            write(run_id, "set_terminated", status=status)
            finish(run_id, wait=status == "FINISHED")


# ---------------------------------------------------------------------------------------------
# registered models that load anywhere

#: The distributions a pickled sciflow model needs when it is loaded (beyond the project's own
#: code, which travels with the model as ``code_paths``); pinned to the installed versions.
MODEL_PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "h5py",
    "pydantic",
    "neuraloperator",
    "tensorly",
    "tensorly-torch",
    "opt-einsum",
    "torchdiffeq",
    "cvxpylayers",
    "tqdm",
    "threadpoolctl",
)


def model_requirements() -> list[str]:
    """``name==version`` for every installed :data:`MODEL_PACKAGES` (a local version label such
    as ``+cpu`` dropped: pip resolves the plain version on any index)."""
    from importlib import metadata

    out = []
    for name in MODEL_PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            out.append(f"{name}=={metadata.version(name).split('+')[0]}")
    return out


def model_code_paths() -> list[str]:
    """The project's library packages a pickled model refers to (``data``, ``solvers``,
    ``operators``), logged with every model so it loads outside the repository."""
    import importlib

    return [str(Path(importlib.import_module(pkg).__file__).parent) for pkg in ("data", "solvers", "operators")]


def log_model(
    run_id: str,
    model,
    name: str,
    input_shape: tuple[int, ...],
    *,
    dtype: str = "float32",
    output: bool = True,
    register: bool = True,
):
    """Log a trained torch ``model`` to ``run_id`` (artifact ``model``) and register it as
    ``name``; returns its ModelVersion (None when ``register`` is off).

    Pickle format, not MLflow's default traced 'pt2' (a traced graph would fix the grid size, and
    operators run at any); the project's code (:func:`model_code_paths`) and the pinned
    requirements (:func:`model_requirements`) go with it, so
    ``mlflow.pytorch.load_model("models:/NAME@ALIAS")`` works in any environment with those
    packages. A model on a GPU is logged as a CPU copy (it loads on any machine). The signature is
    given (a ``dtype`` tensor of ``input_shape``, ``-1`` for any size; the output alike when
    ``output``), so nothing runs the model to infer it."""
    import copy

    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    spec = Schema([TensorSpec(np.dtype(dtype), tuple(input_shape))])
    signature = ModelSignature(inputs=spec, outputs=spec if output else None)

    def log():
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                registered_model_name=name if register else None,
                serialization_format="pickle",
                signature=signature,
                pip_requirements=model_requirements(),
                code_paths=model_code_paths(),
                await_registration_for=0,
            )
        return None if not register else client().get_model_version(name, str(info.registered_model_version))

    return when_reachable(run_id, f"registering model {name}", log)


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point ``models:/<name>@<alias>`` at ``version`` (moving it from any other version)."""
    client().set_registered_model_alias(name, alias, str(version))


class ModelNotFoundError(SciflowError, LookupError):
    """A registered model name, version or alias that does not exist."""


def registered_names(max_results: int = 1000) -> list[str]:
    """Every registered model name, sorted."""
    return sorted(m.name for m in client().search_registered_models(max_results=max_results))


def load_registered(name_or_uri: str, **kwargs):
    """``mlflow.pytorch.load_model`` of ``models:/NAME@ALIAS`` (or ``NAME@ALIAS``, ``NAME/VERSION``);
    a model, alias or version that does not exist is a :class:`ModelNotFoundError` with MLflow's
    message and the registered names (and that model's aliases and versions when the name
    exists)."""
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    uri = name_or_uri if name_or_uri.startswith("models:/") else f"models:/{name_or_uri}"
    try:
        return mlflow.pytorch.load_model(uri, **kwargs)
    except MlflowException as exc:
        name = re.split(r"[@/]", uri.removeprefix("models:/"), maxsplit=1)[0]
        hint = f"registered models: {', '.join(registered_names()) or '(none)'}"
        with suppress(MlflowException):
            model = client().get_registered_model(name)
            versions = client().search_model_versions(f"name = '{name}'")
            hint = (
                f"{name} has aliases {sorted(model.aliases) or '(none)'} and versions "
                f"{sorted(int(v.version) for v in versions)}; {hint}"
            )
        raise ModelNotFoundError(f"{exc.message}\n{hint}") from exc


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
        log_artifact(run_id, path, None if parent == "." else parent)


def log_json(run_id: str, obj: Any, name: str) -> None:
    write(run_id, "log_text", text=json.dumps(obj, indent=2, default=str), artifact_file=name)


def log_table(run_id: str, rows: list[dict], name: str = "comparison.json") -> None:
    """Rows as an MLflow table artifact (``MlflowClient.log_table``: shown as a table in the
    run's artifacts and comparable across runs in the UI's evaluation view)."""
    import pandas as pd

    if rows:
        client().log_table(run_id, data=pd.DataFrame([dict(r) for r in rows]), artifact_file=name)


def ui_hint() -> str:
    """The command that opens the MLflow UI on this project's runs."""
    import sys

    settings.configure()
    exe = Path(sys.executable).parent / "mlflow"
    with suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    uri = mlflow.get_tracking_uri()
    return f"{exe} ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000   # then open http://127.0.0.1:5000"


__all__ = [
    "KINDS",
    "MethodRuns",
    "experiment_name",
    "experiment_id",
    "experiment_ids",
    "find_runs",
    "mlflow_run",
    "log_metrics",
    "log_params",
    "log_model",
    "load_registered",
    "set_alias",
    "log_dataset",
    "log_figure",
    "log_json",
    "log_table",
    "ui_hint",
]

"""Applying sciflow's settings to Prefect and MLflow, once, at an entry point.

The settings themselves are one typed model, :class:`data.settings.Settings` (every ``SCIFLOW_*``
variable; table in ``docs/configuration.md``). Importing a flows module has no side effects;
:func:`configure` runs at the entry points: the ``sciflow`` command, a flow called from Python
(flows are :func:`flow` objects, which configure before Prefect starts the run), MLflow access
(:func:`flows.tracking.client`) and the stack.

A user's Prefect and MLflow configuration always wins. Prefect reads its settings from the
environment, ``.env``, ``prefect.toml`` / ``pyproject.toml`` and the active profile of
``$PREFECT_HOME/profiles.toml`` (``prefect profile use NAME``); :func:`configure` never sets
``PREFECT_HOME`` or ``PREFECT_PROFILE`` and fills in only the Prefect settings that none of those
sources sets (:func:`prefect_defaults`):

* the ephemeral API's database goes to ``<home>/prefect/prefect.db`` unless a Prefect API URL,
  a database URL or ``PREFECT_HOME`` is configured (then it is Prefect's business);
* persisted task results go to ``<home>/prefect/storage`` unless the results path or
  ``PREFECT_HOME`` is configured;
* server analytics off, and a 120 s start-up wait for the ephemeral server, unless configured.

MLflow: ``MLFLOW_TRACKING_URI`` defaults to ``sqlite:///<home>/mlflow.db`` when unset.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import Flow

from data.settings import Settings, current, env_var

#: the env vars the first :func:`configure` of this process set (sciflow's defaults), or None before it ran
_applied: dict[str, str] | None = None


def sciflow_home() -> Path:
    """The state root (:func:`data.paths.home`): ``$SCIFLOW_HOME``, else ``~/.local/share/sciflow``."""
    return current().home


def _fields_set(model: Any, prefix: str = "") -> set[str]:
    """Dotted names of every field a source (environment, file, profile) set in a Prefect settings model."""
    from pydantic import BaseModel

    names = {f"{prefix}{name}" for name in model.model_fields_set}
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if isinstance(value, BaseModel):
            names |= _fields_set(value, f"{prefix}{name}.")
    return names


def prefect_user_settings() -> set[str]:
    """Prefect settings (dotted, e.g. ``api.url``) that the user configured, through any of
    Prefect's own sources: the environment, ``.env``, ``prefect.toml``, ``pyproject.toml``, the
    active profile."""
    from prefect.settings import Settings as PrefectSettings

    return _fields_set(PrefectSettings())


def prefect_defaults(values: Settings, configured: set[str]) -> dict[str, str]:
    """sciflow's defaults for the Prefect settings the user left unset (``configured``: dotted names)."""
    prefect = values.home / "prefect"
    out = {}
    if "server.analytics_enabled" not in configured:
        out["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if "client.max_retries" not in configured:  # ride out an API restart: retries back off 2, 4, ..., 256 s
        out["PREFECT_CLIENT_MAX_RETRIES"] = "8"
    if "client.retry_extra_codes" not in configured:  # the server's 500 while its database restarts
        out["PREFECT_CLIENT_RETRY_EXTRA_CODES"] = "500"
    if "server.ephemeral.startup_timeout_seconds" not in configured:
        out["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    if not configured & {"home", "results.local_storage_path"}:
        out["PREFECT_LOCAL_STORAGE_PATH"] = str(prefect / "storage")
    if not configured & {"home", "api.url", "server.database.connection_url"}:
        out["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url(values)
    return out


def database_url(values: Settings | None = None) -> str:
    """The SQLite database of the local Prefect API under the state folder."""
    return f"sqlite+aiosqlite:///{(values or current()).home / 'prefect' / 'prefect.db'}"


def mlflow_defaults(values: Settings) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{values.home / 'mlflow.db'}",
        "GIT_PYTHON_REFRESH": "quiet",
        # an unreachable server is found in seconds and the calls spooled (flows.spool), not retried for minutes
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }


def configure(force: bool = False, create: bool = True) -> Path:
    """Apply the settings for this process (once; ``force`` re-applies): create the state folder
    (unless ``create`` is off: ``sciflow config`` only looks),
    fill in the Prefect and MLflow defaults the user left unset (environment variables, so worker
    and Dask processes started from here inherit them), route library logs to flow runs. Returns
    the state folder. A bad setting is an :class:`~data.errors.InputError` naming it."""
    global _applied
    values = current()
    if _applied is not None and not force:
        return values.home
    if create:
        (values.home / "prefect").mkdir(parents=True, exist_ok=True)  # the local Prefect database's folder
    wanted = {**prefect_defaults(values, prefect_user_settings()), **mlflow_defaults(values)}
    applied = {key: value for key, value in wanted.items() if key not in os.environ}
    os.environ.update(applied)
    if any(k.startswith("PREFECT_") for k in applied) and "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # Prefect read its settings when it was imported
    _applied = {**(_applied or {}), **applied}
    route_library_logs()
    return values.home


def applied() -> dict[str, str]:
    """The environment variables this process's :func:`configure` set (sciflow's defaults)."""
    return dict(_applied or {})


class SciflowFlow(Flow):
    """A Prefect flow that applies the settings (:func:`configure`) before Prefect starts a run
    of it, so a flow called from Python uses the same Prefect database and MLflow store as the
    ``sciflow`` command. Runs started by a worker get their settings from the worker's
    environment (and :func:`flows.tracking.client` configures MLflow on first use)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        configure()
        return super().__call__(*args, **kwargs)


def flow(**options: Any) -> Callable[[Callable[..., Any]], SciflowFlow]:
    """``@flow(name=..., ...)``: Prefect's ``@flow`` with the same options, making a :class:`SciflowFlow`."""

    def decorate(fn: Callable[..., Any]) -> SciflowFlow:
        return SciflowFlow(fn=fn, **options)

    return decorate


# ---------------------------------------------------------------------------------------------
# `sciflow config`


_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@\s:]*):[^/@\s]*@", re.IGNORECASE)


def _redact(text: str) -> str:
    return _PASSWORD.sub(lambda m: f"{m['head']}:***@", text)


def _prefect_source(env: str, accessor: str, configured: set[str]) -> str:
    """Where a Prefect setting's value comes from: env, sciflow default, profile NAME, file or default."""
    from prefect.settings.profiles import load_current_profile

    if env in os.environ or any(k in os.environ for k in _aliases(accessor)):
        return "sciflow default" if env in applied() else "env"
    profile = load_current_profile()
    if any(s.accessor == accessor for s in profile.settings):
        return f"profile {profile.name}"
    return "file (.env / prefect.toml)" if accessor in configured else "prefect default"


def _aliases(accessor: str) -> list[str]:
    """The environment variables Prefect accepts for a setting (canonical name and legacy aliases)."""
    return {
        "api.url": ["PREFECT_API_URL"],
        "server.database.connection_url": [
            "PREFECT_SERVER_DATABASE_CONNECTION_URL",
            "PREFECT_API_DATABASE_CONNECTION_URL",
        ],
        "results.local_storage_path": ["PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH"],
    }.get(accessor, [])


def endpoints() -> list[dict[str, str]]:
    """The Prefect and MLflow endpoints in use (after :func:`configure`): ``name``, ``value``, ``source``."""
    import mlflow
    from prefect.settings import get_current_settings
    from prefect.settings.profiles import load_current_profile

    ps = get_current_settings()
    configured = prefect_user_settings()
    profile = load_current_profile()
    rows = [
        {
            "name": "Prefect profile",
            "value": f"{profile.name} ({ps.profiles_path})",
            "source": "env" if "PREFECT_PROFILE" in os.environ else "profiles file",
        }
    ]
    if ps.api.url:
        rows.append(
            {
                "name": "Prefect API",
                "value": ps.api.url,
                "source": _prefect_source("PREFECT_API_URL", "api.url", configured),
            }
        )
    else:
        db = ps.server.database.connection_url
        db_url = db.get_secret_value() if db is not None else f"sqlite+aiosqlite:///{ps.home / 'prefect.db'}"
        rows.append({"name": "Prefect API", "value": "ephemeral (a temporary server in this process)", "source": "-"})
        rows.append(
            {
                "name": "Prefect database",
                "value": _redact(db_url),
                "source": _prefect_source(
                    "PREFECT_SERVER_DATABASE_CONNECTION_URL", "server.database.connection_url", configured
                ),
            }
        )
    rows.append(
        {
            "name": "Prefect results",
            "value": str(ps.results.local_storage_path),
            "source": _prefect_source("PREFECT_LOCAL_STORAGE_PATH", "results.local_storage_path", configured),
        }
    )
    uri = mlflow.get_tracking_uri()
    rows.append(
        {
            "name": "MLflow tracking",
            "value": _redact(uri),
            "source": "sciflow default" if "MLFLOW_TRACKING_URI" in applied() else "env",
        }
    )
    rows.append(
        {"name": "MLflow artifacts", "value": mlflow_artifact_location() or "the server's default", "source": ""}
    )
    return rows


def mlflow_artifact_location(values: Settings | None = None) -> str | None:
    """Artifact location for a new MLflow experiment: ``$SCIFLOW_MLFLOW_ARTIFACTS``, else
    ``<home>/mlartifacts`` with a local store, else None (a tracking server's own default)."""
    values = values or current()
    if values.mlflow_artifacts:
        return values.mlflow_artifacts
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return (values.home / "mlartifacts").as_uri()


def settings_table() -> str:
    """The markdown table of every setting (``docs/configuration.md``), from the model's fields."""
    lines = ["| variable | type | default | what it sets |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "see description"
        elif field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`"
        lines.append(f"| `{env_var(name)}` | {_type_name(field.annotation)} | {default} | {field.description} |")
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = str(annotation) if "|" in str(annotation) else text
    return (
        text.replace("pathlib.", "")
        .replace("Path", "path")
        .replace("str", "text")
        .replace(" | None", " (optional)")
        .replace("NoneType", "")
    )


# ---------------------------------------------------------------------------------------------
# library logs


LIBRARY_LOGGERS = ("data", "solvers", "operators")


class _RunLogsHandler(logging.Handler):
    """Forwards a library record to Prefect's API handlers (those of ``prefect.extra``) when it is
    emitted inside a flow or task run; outside one (plain library use) it does nothing, where
    ``PREFECT_LOGGING_EXTRA_LOGGERS`` would warn about a missing flow run on every record."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        for handler in logging.getLogger("prefect.extra").handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def route_library_logs() -> None:
    """Send the records of :data:`LIBRARY_LOGGERS` (e.g. the PETSc fallback warnings of
    ``data.petsc``) to the logs of the flow or task run they happen in. Idempotent."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _RunLogsHandler) for h in logger.handlers):
            logger.addHandler(_RunLogsHandler())

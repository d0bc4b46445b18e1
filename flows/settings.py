"""Where state lives, set once before Prefect or MLflow are imported.

Everything local goes under ``$SCIFLOW_HOME`` (default ``./.sciflow``): the dataset store, the
Prefect home (its SQLite API database and persisted task results) and the MLflow SQLite store and
artifacts. Any variable already set in the environment wins (point ``PREFECT_API_URL`` and
``MLFLOW_TRACKING_URI`` at real servers and the same flows run against them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from data.paths import home


def sciflow_home() -> Path:
    """The state root: ``$SCIFLOW_HOME`` or ``./.sciflow`` (:func:`data.paths.home`, the one resolver)."""
    return home()


def configure() -> Path:
    """Set environment defaults for the local embedded stack; returns the state folder."""
    root = sciflow_home()
    root.mkdir(parents=True, exist_ok=True)
    defaults = {
        "SCIFLOW_HOME": str(root),
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(root / "prefect" / "storage"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "SCIFLOW_MLFLOW_ARTIFACTS": (root / "mlartifacts").as_uri(),
        "GIT_PYTHON_REFRESH": "quiet",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    route_library_logs()
    return root


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

"""Where state lives, set once before Prefect or MLflow are imported.

Everything local goes under ``$SCIFLOW_HOME`` (default ``./.sciflow``): the dataset store, the
Prefect home (its SQLite API database and persisted task results) and the MLflow SQLite store and
artifacts. Any variable already set in the environment wins (point ``PREFECT_API_URL`` and
``MLFLOW_TRACKING_URI`` at real servers and the same flows run against them).
"""

from __future__ import annotations

import os
from pathlib import Path


def sciflow_home() -> Path:
    return Path(os.environ.get("SCIFLOW_HOME", ".sciflow")).resolve()


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
        # the library's own loggers (e.g. data.petsc's fallback warnings) reach the flow-run logs
        "PREFECT_LOGGING_EXTRA_LOGGERS": "data,solvers,operators",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return root

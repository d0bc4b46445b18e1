"""Test isolation: every piece of state (datasets, Prefect home + API database, MLflow store)
goes to one temporary folder per test session, set before Prefect or MLflow are imported."""

import os
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="sciflow-tests-"))
os.environ["SCIFLOW_HOME"] = str(_STATE)
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_STATE / "prefect" / "storage")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'mlflow.db'}"
os.environ["SCIFLOW_MLFLOW_ARTIFACTS"] = (_STATE / "mlartifacts").as_uri()
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
for var in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
    os.environ.pop(var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture
def store(tmp_path) -> Path:
    """A fresh, empty dataset store root."""
    return tmp_path / "store"


def pytest_unconfigure(config):
    # Prefect's ephemeral server logs "Stopping temporary server" at interpreter exit, after
    # pytest has closed its capture streams; don't print a traceback for that one message.
    import logging

    logging.raiseExceptions = False

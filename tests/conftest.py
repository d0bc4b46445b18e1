"""Test isolation: every piece of state (datasets, Prefect home + API database, MLflow store)
goes to one temporary folder per test session, set before Prefect or MLflow are imported."""

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # helpers.py, methods.py: shared by tests of every subject

_STATE = Path(tempfile.mkdtemp(prefix="sciflow-tests-"))
os.environ["SCIFLOW_HOME"] = str(_STATE)
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_STATE / "prefect" / "storage")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'mlflow.db'}"
os.environ["SCIFLOW_MLFLOW_ARTIFACTS"] = (_STATE / "mlartifacts").as_uri()
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# the first ephemeral API of a session migrates a fresh database: ~40 s on 2 loaded cores (Prefect's default wait is 20 s)
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
for var in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
    os.environ.pop(var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def state_dir() -> Path:
    return _STATE


@pytest.fixture(scope="session")
def dcdm_model(tmp_path_factory):
    """A small trained DCDM network (16^2 Neumann Poisson with disks), shared by the solver and model tests."""
    from operators import model_from_checkpoint
    from operators.dcdm import DCDMTrainConfig, train

    cfg = DCDMTrainConfig(n=16, ritz_m=60, n_samples=256, epochs=4, batch_size=32)
    ckpt = tmp_path_factory.mktemp("dcdm") / "ckpt.pt"
    _, history = train(cfg, checkpoint=ckpt)
    assert history[-1]["loss"] < history[0]["loss"]
    return model_from_checkpoint(ckpt)


@pytest.fixture(scope="session")
def poisson_systems():
    """A 16^2 Dirichlet system with a box and a 16^2 Neumann system with disks (singular)."""
    from solvers.linear import GridSystem

    return GridSystem.from_poisson(16, 2, "dirichlet", "box"), GridSystem.from_poisson(
        16, 2, "neumann", "disks", seed=5
    )


@pytest.fixture
def store(tmp_path) -> Path:
    """A fresh, empty dataset store root."""
    return tmp_path / "store"


def pytest_unconfigure(config):
    # Prefect's ephemeral server logs "Stopping temporary server" at interpreter exit, after
    # pytest has closed its capture streams; don't print a traceback for that one message.
    import logging

    logging.raiseExceptions = False

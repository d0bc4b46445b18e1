"""What produced a result: the versions of the packages that matter and the digest of the lock
the environment was installed from (recorded in every dataset manifest and MLflow run)."""

from __future__ import annotations

import contextlib
import json
import sys
from importlib import metadata
from pathlib import Path

#: the distributions whose versions a manifest records (absent ones are left out)
PACKAGES = ("sciflow", "numpy", "scipy", "h5py", "petsc4py", "torch", "prefect", "mlflow")


def lock_digest() -> str:
    """SHA-256 of the lock files the running environment was installed from (``infra/setup.sh``
    records it in ``<venv>/sciflow-lock.json``); ``"unlocked"`` for an environment made otherwise."""
    try:
        return str(json.loads((Path(sys.prefix) / "sciflow-lock.json").read_text())["lock_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unlocked"


def package_versions() -> dict[str, str]:
    """``{distribution: version}`` for :data:`PACKAGES` that are installed, plus ``"petsc"`` (the
    PETSc library petsc4py runs on) when petsc4py imports."""
    out = {}
    for pkg in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    try:
        from .petsc import petsc

        out["petsc"] = ".".join(map(str, petsc().Sys.getVersion()))
    except Exception:  # petsc4py missing: reported by its absence
        pass
    return out


__all__ = ["PACKAGES", "lock_digest", "package_versions"]

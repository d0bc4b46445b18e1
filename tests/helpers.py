"""Small helpers shared by tests of several subjects (import as ``from helpers import ...``;
tests/conftest.py puts this folder on the path)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

#: a small FNO: every training test that needs one and does not care which
SMALL = dict(n_modes=6, hidden_channels=8, n_layers=2)


#: ``python -c LOAD_OUTSIDE_REPO MODEL_URI REPO_ROOT`` in a fresh interpreter, cwd outside the repository: the editable install's finder is
#: removed so nothing of the project is importable, then the model loads by alias and runs
LOAD_OUTSIDE_REPO = """
import importlib.util, json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
sys.path[:] = [p for p in sys.path if "__editable__" not in p and p.rstrip("/") != sys.argv[2].rstrip("/")]
sys.path_importer_cache.clear()
found = importlib.util.find_spec("operators")
assert found is None or not (found.origin or "").startswith(sys.argv[2]), found
import mlflow.pytorch, torch
model = mlflow.pytorch.load_model(sys.argv[1])
import operators
with torch.no_grad():
    out = model(torch.zeros(2, 1, 24, 24))  # another resolution than the training one
print(json.dumps({"shape": list(out.shape), "operators": operators.__file__, "finite": bool(torch.isfinite(out).all())}))
"""


def enospc(*args, **kwargs):
    """Stand-in for a write, fsync or rename on a full disk."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden temporaries included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def temporaries(root: Path) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file() and p.name.startswith(".") and "tmp" in p.name]


def fno_pairs(N=8, n=16, seed=0):
    """``(x, y)`` of shape ``(N, 1, n, n)``: a linear map an FNO learns quickly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, n, n, generator=g)
    return x, 0.5 * torch.roll(x, 2, dims=-1) - 0.3 * x


def fno_config(epochs):
    from operators.fno import OperatorModelConfig, OperatorTrainConfig

    return OperatorTrainConfig(
        model=OperatorModelConfig(name="fno", **SMALL), epochs=epochs, batch_size=4, lr=1e-2, loss="l2"
    )

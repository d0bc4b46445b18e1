"""Small helpers shared by tests of several subjects (import as ``from helpers import ...``;
tests/conftest.py puts this folder on the path)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

#: a small FNO: every training test that needs one and does not care which
SMALL = dict(n_modes=6, hidden_channels=8, n_layers=2)


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

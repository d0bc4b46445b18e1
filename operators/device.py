"""The one place that picks the torch device: CUDA when present, else CPU."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """``$SCIFLOW_DEVICE`` if set, else ``cuda`` when available, else ``cpu``."""
    name = os.environ.get("SCIFLOW_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

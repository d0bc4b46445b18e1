"""The one place that picks the torch device: CUDA when present, else CPU."""

from __future__ import annotations

import torch

from data.settings import current


def default_device() -> torch.device:
    """``$SCIFLOW_DEVICE`` (:attr:`data.settings.Settings.device`) if set, else ``cuda`` when
    available, else ``cpu``."""
    name = current().device
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

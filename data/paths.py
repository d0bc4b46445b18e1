"""Where sciflow keeps its local state: the one resolver of ``$SCIFLOW_HOME``.

The dataset store (``datasets/``, ``chunks/``), model checkpoints (``models/``) and the local
Prefect / MLflow state all live under :func:`home`. (A module named ``home`` would be shadowed by
the function ``data.home``, hence ``paths``.)
"""

from __future__ import annotations

import os
from pathlib import Path

#: the environment variable naming the state folder
HOME_ENV = "SCIFLOW_HOME"
#: the state folder when the variable is unset, relative to the working directory
DEFAULT_HOME = ".sciflow"


def home() -> Path:
    """The state root, resolved to an absolute path: ``$SCIFLOW_HOME`` or ``./.sciflow``."""
    return Path(os.environ.get(HOME_ENV, DEFAULT_HOME)).resolve()


__all__ = ["DEFAULT_HOME", "HOME_ENV", "home"]

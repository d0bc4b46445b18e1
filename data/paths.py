"""Where sciflow keeps its local state: :func:`home`, the one resolver of the state folder.

The dataset store (``datasets/``, ``chunks/``), model checkpoints (``models/``) and the local
Prefect / MLflow state all live under :func:`home`: ``$SCIFLOW_HOME`` (or ``home`` in the settings
file), else the absolute default ``$XDG_DATA_HOME/sciflow`` / ``~/.local/share/sciflow``
(:mod:`data.settings`). (A module named ``home`` would be shadowed by the function ``data.home``,
hence ``paths``.)
"""

from __future__ import annotations

from pathlib import Path

from .settings import current, default_home, env_var

#: the environment variable naming the state folder
HOME_ENV = env_var("home")


def home() -> Path:
    """The state root, an absolute path (:attr:`data.settings.Settings.home`); nothing is created."""
    return current().home


__all__ = ["HOME_ENV", "default_home", "home"]

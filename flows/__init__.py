"""Prefect flows that wire the ``data``/``solvers``/``operators`` libraries into tracked runs.

Importing this package sets the local-stack defaults (``flows.settings.configure``) before
Prefect and MLflow are imported.
"""

from .settings import configure

configure()

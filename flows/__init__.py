"""Prefect flows that wire the ``data``/``solvers``/``operators`` libraries into tracked runs.

Importing this package (or any module in it) has no side effects: the settings
(:mod:`data.settings`) are applied to Prefect and MLflow at the entry points, by
:func:`flows.settings.configure` (the ``sciflow`` command, a flow call, MLflow access).
"""

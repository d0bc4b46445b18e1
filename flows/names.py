"""Flow-run names from templates: ``@flow(flow_run_name=run_name("bench-operators-{scale}"))``.

A template is formatted with the run's parameters (``{config.model.name}`` reaches into a pydantic
model, or into the plain dict a deployment run passes before validation) and ``{date}``, the run's
scheduled day (UTC, ``YYYY-MM-DD``). A parameter the template names but the run lacks gives ``?``
in its place rather than a random name.
"""

from __future__ import annotations

import datetime as dt
import string
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel


class _Field:
    """A parameter value whose attributes are looked up in a model or a dict; ``?`` when missing."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def __getattr__(self, name: str) -> _Field:
        v = self._value
        if isinstance(v, Mapping):
            return _Field(v.get(name, "?"))
        return _Field(getattr(v, name, "?"))

    def __format__(self, spec: str) -> str:
        return format(str(self._value), spec)


class _Formatter(string.Formatter):
    def get_value(self, key, args, kwargs):  # type: ignore[override]
        return kwargs.get(key, _Field("?")) if isinstance(key, str) else super().get_value(key, args, kwargs)


def format_name(template: str, parameters: Mapping[str, Any], when: dt.datetime | None = None) -> str:
    """``template`` with ``parameters`` (models or dicts, attribute access) and ``{date}`` of ``when``."""
    day = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%d")
    values = {k: _Field(v) if isinstance(v, (Mapping, BaseModel)) else v for k, v in parameters.items()}
    return _Formatter().format(template, date=day, **values)


def run_name(template: str) -> Callable[[], str]:
    """A ``flow_run_name`` callable that formats ``template`` for the run being named."""

    def name() -> str:
        from prefect.runtime import flow_run

        return format_name(template, flow_run.parameters or {}, flow_run.scheduled_start_time)

    name.__name__ = f"run_name({template!r})"
    return name

"""The names a result row's numbers take as MLflow metrics: one ``/``-separated key part per
value (:func:`key_part`) and the numeric fields of a row (:func:`numeric_fields`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_INVALID_KEY = re.compile(r"[^\w.\-]+")


def key_part(value: Any) -> str:
    """One ``/``-separated part of a metric key: ``value`` as text with every run of characters
    MLflow does not allow in a name (or a space) replaced by ``-`` (``hs+bt (3)`` -> ``hs-bt-3``);
    ``_`` for an empty value."""
    return _INVALID_KEY.sub("-", str(value)).strip("-") or "_"


def numeric_fields(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of a result row as floats (booleans as 0 / 1; None and text left
    out); a ``{"metric": NAME, "value": V}`` pair becomes field ``NAME``."""
    out: dict[str, float] = {}
    for name, value in row.items():
        if isinstance(value, (bool, int, float)) and name != "value":
            out[key_part(name)] = float(value)
    if isinstance(row.get("metric"), str) and isinstance(row.get("value"), (int, float)):
        out[key_part(row["metric"])] = float(row["value"])
    return out

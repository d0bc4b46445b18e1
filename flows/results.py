"""Benchmark/result tables: one list of flat rows, written as JSON, an MLflow artifact and a
keyed Prefect table artifact, and printed as a plain-text table (the names rows' numbers take as
MLflow metrics: :mod:`flows.metric_names`)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data.io import atomic_path


def format_cell(v: Any) -> str:
    """One table cell: floats to 4 significant digits (scientific below 1e-3 and from 1e5), anything else as ``str``."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table (also valid Markdown)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))
    cells = [[format_cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=False)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cols), sep, *(line(r) for r in cells)])


def format_by(rows: Sequence[dict], key: str = "stage") -> str:
    """One table per value of ``key`` (each with only its own columns), titled by that value."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get(key, "")), []).append(r)
    return "\n\n".join(
        f"{name}\n" + format_table([{k: v for k, v in r.items() if k != key} for r in group])
        for name, group in groups.items()
    )


def write_json(path: str | Path, rows: Sequence[dict], meta: dict) -> Path:
    """Atomically write ``{"rows": [...], "meta": {...}}``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"rows": list(rows), "meta": meta}, indent=2, default=str))
    return path


def artifact_key(name: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "results"


def publish(name: str, rows: Sequence[dict], meta: dict, run_id: str | None = None, description: str = "") -> None:
    """Log the table to MLflow (``results/<name>.json``) and as a keyed Prefect table artifact
    (inside a flow run; a no-op outside one)."""
    if run_id:
        from .tracking import log_json

        log_json(run_id, {"rows": list(rows), "meta": meta}, f"results/{name}.json")
    from prefect.runtime import flow_run

    if flow_run.id:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(
            table=[{k: format_cell(v) for k, v in r.items()} for r in rows],
            key=artifact_key(name),
            description=description or f"{name} results",
        )

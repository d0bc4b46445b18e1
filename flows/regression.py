"""Night-over-night regression check for the nightly benchmark.

:func:`compare` matches tonight's result rows with the previous successful night's (same stage,
problem and method) and classifies every known metric as ``regression`` / ``improvement`` /
``ok`` (within noise) / ``new`` / ``missing``. A change counts only when it is worse (or better)
than ``threshold`` *relative* to the previous value **and** larger than the metric's absolute
noise floor (a KKT residual going from 1e-12 to 3e-12 is not a regression; neither is a 20 ms
solve taking 30 ms). :func:`render_markdown` writes the report.

The baseline is MLflow data: each night logs its rows as flattened metrics of its parent run,
``<stage>/<method>/<problem>/<field>`` (:func:`flatten_rows`; ``stage`` shortened through a
``stage_names`` mapping, e.g. ``operators/mg-tfno-r0.02/navier-stokes-32/test_l2``), and
:func:`find_previous_run` / :func:`previous_rows` read the previous successful night's metrics
back into rows (:func:`rows_from_run`). No Prefect here; MLflow is imported lazily.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .metric_names import key_part, numeric_fields
from .results import format_cell

LOWER, HIGHER = "lower", "higher"


class Metric(NamedTuple):
    """How to judge one metric: which direction is better, the absolute change below which any
    difference is noise (in the metric's own units), and whether *any* worsening beyond that
    floor counts (``strict``: solved / converged counts) instead of only one beyond the
    relative threshold."""

    direction: str
    floor: float
    strict: bool = False


# Only these are compared; anything else in a row (digests, paths, messages) is context.
METRICS: dict[str, Metric] = {
    # errors and residuals
    "rel_l2": Metric(LOWER, 1e-4),
    "l2_vs_soft": Metric(LOWER, 1e-3),
    "l2_vs_hc": Metric(LOWER, 1e-3),
    "residual": Metric(LOWER, 1e-8),
    "jump_mean": Metric(LOWER, 1e-6),
    "kkt": Metric(LOWER, 1e-8),
    "distance": Metric(LOWER, 1e-6),
    "mse": Metric(LOWER, 1e-6),  # neural-ODE rows: {"metric": "mse", "value": ...}
    # iteration and evaluation counts
    "iterations": Metric(LOWER, 1.0),
    "iters_vs_icpcg": Metric(LOWER, 0.05),
    "iteration_growth": Metric(LOWER, 0.05),
    "median_outer": Metric(LOWER, 1.0),
    "outer": Metric(LOWER, 1.0),
    "outer_vs_l1sqp": Metric(LOWER, 0.05),
    "predict_nfe": Metric(LOWER, 1.0),
    "nfe_ratio": Metric(LOWER, 0.05),
    # success and accuracy
    "converged": Metric(HIGHER, 0.0, strict=True),
    "n_solved": Metric(HIGHER, 0.0, strict=True),
    "solved_fraction": Metric(HIGHER, 0.0, strict=True),
    "accuracy": Metric(HIGHER, 1e-3),  # neural-ODE rows: {"metric": "accuracy", "value": ...}
    "test_accuracy": Metric(HIGHER, 1e-3),
    # neural operators (the table's errors are relative L2; compression is parameters vs dense FNO)
    "test_l2": Metric(LOWER, 1e-3),
    "test_l2_2x": Metric(LOWER, 1e-3),
    "l2_vs_fno": Metric(LOWER, 1e-3),
    "compression_vs_fno": Metric(HIGHER, 1e-3),
    # speed (wall clock: the floors keep scheduler noise of short runs out)
    "seconds": Metric(LOWER, 0.5),
    "s_per_step": Metric(LOWER, 5e-3),
    "infer_s": Metric(LOWER, 1e-2),
    "step_vs_hc": Metric(LOWER, 0.25),
    "time_vs_trust_constr": Metric(LOWER, 0.5),
    "time_vs_implicit": Metric(LOWER, 0.5),
    "sec_per_epoch": Metric(LOWER, 0.05),
}

TIMINGS: frozenset[str] = frozenset(
    {"seconds", "s_per_step", "infer_s", "step_vs_hc", "time_vs_trust_constr", "time_vs_implicit", "sec_per_epoch"}
)


def without_timings(metrics: Mapping[str, Metric] = METRICS) -> dict[str, Metric]:
    """The metrics minus wall-clock ones (for ``smoke`` runs, whose timings are milliseconds of noise)."""
    return {k: v for k, v in metrics.items() if k not in TIMINGS}


# Data generation is cached by spec hash: its timings measure the cache, not PETSc (a changed
# task source recomputes every chunk and would look like a 100x slowdown). Its digest is
# reported as changed / unchanged instead.
SKIP: frozenset[tuple[str, str]] = frozenset({("generate-dataset", "seconds")})

STATUSES = ("regression", "improvement", "ok", "new", "missing")


def _key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """A row's (stage, problem, method) as they read in metric names (:func:`~flows.metric_names.key_part`),
    so tonight's rows match the ones read back from the previous night's metrics."""
    return key_part(row.get("stage", "")), key_part(row.get("problem", "")), key_part(row.get("method", ""))


def _index(
    rows: Iterable[Mapping[str, Any]],
) -> dict[tuple[str, str, str], tuple[tuple[str, str, str], Mapping[str, Any]]]:
    """Rows by (stage, problem, method) key, each with the names it shows in the report; a
    repeated key gets ``#2``, ``#3`` on its method."""
    out: dict[tuple[str, str, str], tuple[tuple[str, str, str], Mapping[str, Any]]] = {}
    for row in rows:
        stage, problem, method = key = _key(row)
        shown = [str(row.get("stage", "")), str(row.get("problem", "")), str(row.get("method", ""))]
        n = 2
        while key in out:  # as flatten_rows names the repeats
            key = (stage, problem, key_part(f"{row.get('method', '')}-{n}"))
            shown[2] = f"{row.get('method', '')}#{n}"
            n += 1
        out[key] = (shown[0], shown[1], shown[2]), row
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def metrics_of(row: Mapping[str, Any], metrics: Mapping[str, Metric] = METRICS) -> dict[str, float]:
    """The comparable metrics of one row: known names with numeric (or boolean) values.
    A ``{"metric": NAME, "value": V}`` pair counts as metric ``NAME``."""
    stage = str(row.get("stage", ""))
    out = {}
    for name, value in row.items():
        if name in metrics and (stage, name) not in SKIP and (v := _number(value)) is not None:
            out[name] = v
    name = row.get("metric")
    if isinstance(name, str) and name in metrics and (v := _number(row.get("value"))) is not None:
        out[name] = v
    return out


def classify(
    metric: str, previous: float, current: float, threshold: float, metrics: Mapping[str, Metric] = METRICS
) -> tuple[str, float | None]:
    """``(status, relative change)`` of one metric; the change is signed, ``(cur - prev) / |prev|``
    (``inf`` when ``prev`` is 0 and ``cur`` is not, ``None`` when either is NaN)."""
    direction, floor, strict = metrics[metric]
    if math.isnan(previous) or math.isnan(current):
        if math.isnan(previous) and math.isnan(current):
            return "ok", None
        return ("regression" if math.isnan(current) else "improvement"), None
    diff = current - previous
    if previous != 0:
        change = diff / abs(previous)
    else:
        change = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    worse = diff > 0 if direction == LOWER else diff < 0
    if diff == 0 or abs(diff) <= floor or (not strict and abs(change) <= threshold):
        return "ok", change
    return ("regression" if worse else "improvement"), change


def compare(
    current_rows: Sequence[Mapping[str, Any]],
    previous_rows: Sequence[Mapping[str, Any]],
    threshold: float = 0.2,
    metrics: Mapping[str, Metric] = METRICS,
) -> list[dict]:
    """Compare every known metric of tonight's rows with the previous night's.

    Rows are matched on ``(stage, problem, method)`` as they read in metric names (characters
    MLflow does not allow in a name count as ``-``). Returns one dict per metric:
    ``stage, problem, method, metric, direction, previous, current, change, status`` with
    ``status`` in :data:`STATUSES`; ``previous`` / ``current`` are None for ``new`` / ``missing``.
    ``threshold`` is the relative change (0.2 = 20 %) a metric must exceed, in its worse
    direction, to be a regression (and in its better direction to be an improvement).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    cur, prev = _index(current_rows), _index(previous_rows)
    out = []
    for key in [*cur, *(k for k in prev if k not in cur)]:
        c = metrics_of(cur[key][1], metrics) if key in cur else {}
        p = metrics_of(prev[key][1], metrics) if key in prev else {}
        stage, problem, method = (cur.get(key) or prev[key])[0]
        for name in [*c, *(n for n in p if n not in c)]:
            entry = {
                "stage": stage,
                "problem": problem,
                "method": method,
                "metric": name,
                "direction": metrics[name].direction,
                "previous": p.get(name),
                "current": c.get(name),
                "change": None,
            }
            if name not in p:
                entry["status"] = "new"
            elif name not in c:
                entry["status"] = "missing"
            else:
                entry["status"], entry["change"] = classify(name, p[name], c[name], threshold, metrics)
            out.append(entry)
    return out


def regressions(comparison: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [c for c in comparison if c["status"] == "regression"]


def _fmt(value: Any) -> str:
    """A table cell as in :func:`flows.results.format_table`; a missing value is a dash."""
    return "–" if value is None else format_cell(value)


def _fmt_change(change: float | None) -> str:
    if change is None:
        return "–"
    if math.isinf(change):
        return "+inf" if change > 0 else "-inf"
    return f"{change:+.1%}"


def describe(entry: Mapping[str, Any]) -> str:
    """One line: ``stage problem/method metric: prev -> cur (+x%, lower is better)``."""
    where = "/".join(p for p in (entry["problem"], entry["method"]) if p)
    return (
        f"{entry['stage']} {where} {entry['metric']}: {_fmt(entry['previous'])} -> {_fmt(entry['current'])} "
        f"({_fmt_change(entry['change'])}, {entry['direction']} is better)"
    )


def summary(comparison: Sequence[Mapping[str, Any]], threshold: float) -> str:
    """The failure message: every regression, one per line."""
    bad = regressions(comparison)
    head = f"{len(bad)} metric(s) regressed by more than {threshold:.0%} against the previous successful night"
    return head + (":\n" + "\n".join(f"- {describe(e)}" for e in bad) if bad else "")


def _digest_notes(current_rows: Sequence[Mapping[str, Any]], previous_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    prev = {_key(r): r.get("digest") for r in previous_rows if r.get("digest")}
    notes = []
    for r in current_rows:
        before = prev.get(_key(r))
        if r.get("digest") and before and before != r["digest"]:
            notes.append(
                f"- dataset `{r.get('problem')}` changed: digest {before} -> {r['digest']} "
                "(downstream metrics are on different data)"
            )
    return notes


def render_markdown(
    comparison: Sequence[Mapping[str, Any]],
    threshold: float,
    *,
    title: str = "Nightly regression report",
    current: str = "",
    previous: str | None = None,
    current_rows: Sequence[Mapping[str, Any]] = (),
    previous_rows: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A Markdown report: verdict, the regressions, then every compared metric in a table
    (previous vs current vs change); regression rows are bold."""
    lines = [f"# {title}", ""]
    if previous is None:
        lines += [
            f"Current run: {current}. No previous successful night at this scale: nothing to compare; "
            "this run becomes the baseline.",
            "",
        ]
        return "\n".join(lines)
    counts = {s: sum(c["status"] == s for c in comparison) for s in STATUSES}
    bad = regressions(comparison)
    verdict = f"**{len(bad)} regression(s)**" if bad else "No regressions"
    lines += [
        f"Current run: {current}; previous successful night: {previous}.",
        f"Threshold: {threshold:.0%} relative change in the worse direction, beyond each metric's noise floor.",
        "",
        f"{verdict} — " + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + ".",
        "",
    ]
    if bad:
        lines += ["## Regressions", "", *(f"- **{describe(e)}**" for e in bad), ""]
    notes = _digest_notes(current_rows, previous_rows)
    if notes:
        lines += ["## Data", "", *notes, ""]
    lines += [
        "## All compared metrics",
        "",
        "| stage | problem | method | metric | better | previous | current | change | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in comparison:
        cells = [
            e["stage"],
            e["problem"],
            e["method"],
            e["metric"],
            e["direction"],
            _fmt(e["previous"]),
            _fmt(e["current"]),
            _fmt_change(e["change"]),
            e["status"],
        ]
        if e["status"] == "regression":
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the baseline in MLflow


def find_previous_run(client, experiment_id: str, scale: str, exclude_run_id: str | None = None):
    """The newest FINISHED nightly parent run (tag ``sciflow.stage = nightly``) at ``scale``,
    other than ``exclude_run_id``; None when there is none. ``client`` is an ``MlflowClient``."""
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`sciflow.stage` = 'nightly' and params.scale = '{scale}' and attributes.status = 'FINISHED'"
        ),
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return next((r for r in runs if r.info.run_id != exclude_run_id and "mlflow.parentRunId" not in r.data.tags), None)


def headline_key(stage: str, method: str, problem: str, field: str) -> str:
    """``<stage>/<method>/<problem>/<field>``, each part as :func:`~flows.metric_names.key_part` writes it."""
    return "/".join(key_part(p) for p in (stage, method, problem, field))


#: Text fields of a night's rows kept with its metrics (as tags of the same names): the report
#: says when a dataset's digest changed.
TEXT_FIELDS = ("digest",)


def flatten_rows(
    rows: Iterable[Mapping[str, Any]], stage_names: Mapping[str, str] | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """A night's rows as MLflow metrics ``{<stage>/<method>/<problem>/<field>: value}`` (every
    numeric field, :func:`~flows.metric_names.numeric_fields`) and tags (:data:`TEXT_FIELDS`); a
    row's ``stage`` is written as ``stage_names[stage]`` when given (``benchmark-operators`` ->
    ``operators``). A key met twice gets ``#2``-style method suffixes as in :func:`compare`."""
    names = stage_names or {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    seen: set[tuple[str, str, str]] = set()
    for row in rows:
        stage = str(row.get("stage", ""))
        stage, problem, method = key_part(names.get(stage, stage)), row.get("problem", ""), str(row.get("method", ""))
        n, m = 2, method
        while (stage, key_part(problem), key_part(m)) in seen:
            m, n = f"{method}-{n}", n + 1
        seen.add((stage, key_part(problem), key_part(m)))
        for field, value in numeric_fields(row).items():
            metrics[headline_key(stage, m, problem, field)] = value
        for field in TEXT_FIELDS:
            if isinstance(row.get(field), str):
                tags[headline_key(stage, m, problem, field)] = row[field]
    return metrics, tags


def rows_from_run(run, stage_names: Mapping[str, str] | None = None) -> list[dict]:
    """The rows a night logged with :func:`flatten_rows`, read back from its MLflow ``run``
    (metrics, and the :data:`TEXT_FIELDS` tags); ``stage`` as the long name when ``stage_names``
    maps it. Problem and method names read as in metric names (``poisson-16-2``)."""
    back = {key_part(short): long for long, short in (stage_names or {}).items()}
    rows: dict[tuple[str, str, str], dict] = {}
    values: list[tuple[str, Any]] = [*run.data.metrics.items()]
    values += [(k, v) for k, v in run.data.tags.items() if k.rsplit("/", 1)[-1] in TEXT_FIELDS]
    for key, value in values:
        parts = key.split("/")
        if len(parts) != 4 or (back and parts[0] not in back):
            continue
        stage, method, problem, field = parts
        row = rows.setdefault(
            (stage, method, problem),
            {"stage": back.get(stage, stage), "problem": "" if problem == "_" else problem}
            | ({"method": method} if method != "_" else {}),
        )
        row[field] = value
    return list(rows.values())


def previous_rows(client, run_id: str, stage_names: Mapping[str, str] | None = None) -> list[dict]:
    """The rows of the night ``run_id`` from its metrics (:func:`rows_from_run`)."""
    return rows_from_run(client.get_run(run_id), stage_names)


def run_rows(client, run_id: str, artifact: str) -> list[dict]:
    """The result rows a run logged as the JSON ``artifact`` (``flows.results.publish``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, artifact, tmp)
        return list(json.loads(Path(path).read_text())["rows"])


__all__ = [
    "METRICS",
    "Metric",
    "TIMINGS",
    "without_timings",
    "compare",
    "classify",
    "regressions",
    "summary",
    "render_markdown",
    "find_previous_run",
    "flatten_rows",
    "headline_key",
    "rows_from_run",
    "previous_rows",
    "run_rows",
    "describe",
]

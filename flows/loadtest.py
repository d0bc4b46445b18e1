"""Concurrent load on a running stack: N flow runs of the ``optimize`` deployment at once.

    sciflow stack up --backend postgres && source $SCIFLOW_HOME/stack/stack.env
    sciflow loadtest --runs 16 --out load.json

Run ``i`` solves HS/BT problem ``PROBLEMS[i % 16]`` with Newton-SQP (seed ``i // 16``, so every run
has distinct parameters): deterministic, well under a second of solver time, and each run still
writes one MLflow run with a metric batch per iteration, a JSON artifact, Prefect states and logs.
All N are created at once, picked up by the stack's process worker (one process per flow run),
then checked against the same solves done here in-process: every flow run COMPLETED, exactly one
MLflow run per flow run (FINISHED) and no other, and every metric history equal to the expected one
(``seconds`` excepted). The stack's logs are searched for "database is locked" and other errors.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import threading
import time
from collections import defaultdict
from pathlib import Path

from . import settings

# Newton-SQP converges on each in < 0.2 s with 4-18 iterations (each one MLflow metric batch).
PROBLEMS = (
    "bt2",
    "bt4",
    "bt5",
    "bt6",
    "bt9",
    "bt10",
    "bt11",
    "bt12",
    "hs006",
    "hs007",
    "hs026",
    "hs027",
    "hs042",
    "hs046",
    "hs047",
    "hs077",
)
DEPLOYMENT = "optimize/optimize"
ERROR = re.compile(r"database is locked|Traceback|\bERROR\b|\bFATAL\b|\bPANIC\b")
# The first runs on a fresh store race to create the `sciflow-training` experiment; PostgreSQL logs the
# losers' unique-key violation, and tracking.experiment_id reads the winner's. Handled, not an error.
HANDLED = re.compile(r'duplicate key value violates unique constraint "uq_experiments_workspace_name"')


def configs(n: int) -> list:
    from solvers.optim.config import OptimizeConfig

    return [
        OptimizeConfig(problem=PROBLEMS[i % len(PROBLEMS)], method="newton-sqp", seed=i // len(PROBLEMS))
        for i in range(n)
    ]


def expected_histories(config) -> dict[str, list[tuple[int, float]]]:
    """The metric histories (``{key: [(step, value), ...]}``) the ``optimize`` flow logs for
    ``config``, from the same solve in this process: per-iteration values at step ``nit``, the
    summary row at step 0. ``seconds`` (wall time) is left out."""
    from solvers.optim.config import run_optimize

    hist: dict[str, list] = defaultdict(list)

    def on_iteration(info: dict) -> None:
        for k, v in info.items():
            if k != "nit":
                hist[k].append((info["nit"], float(v)))

    r, summary = run_optimize(config, on_iteration)
    row = {
        "converged": r.converged,
        "kkt": r.kkt,
        "fun": r.fun,
        "nit": r.nit,
        "inner_iterations": r.inner_iterations,
        "constraint_violation": r.constraint_violation,
        **summary,
    }
    for k, v in row.items():
        if isinstance(v, (int, float)):
            hist[k].append((0, float(v)))
    hist.pop("seconds", None)
    return {k: sorted(v) for k, v in hist.items()}


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        sa == sb and math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12) for (sa, va), (sb, vb) in zip(a, b, strict=True)
    )


async def _submit_and_wait(cfgs: list, timeout: float, poll: float) -> tuple[list, float]:
    """Create all flow runs at once, poll until all are final (or ``timeout``). Returns, per config,
    its flow run (None if it was created but could not be read back) or the server's refusal to
    create it (a string); and the wall time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        dep = await client.read_deployment_by_name(DEPLOYMENT)
        t0 = time.time()
        made = await asyncio.gather(
            *(
                client.create_flow_run_from_deployment(
                    dep.id, parameters={"config": c.model_dump(mode="json")}, tags=["loadtest"]
                )
                for c in cfgs
            ),
            return_exceptions=True,
        )
        ids = [m.id for m in made if not isinstance(m, BaseException)]
        deadline = t0 + timeout
        runs = []
        while ids:
            try:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
                )
            except Exception:  # a busy server: ask again
                pass
            if (len(runs) == len(ids) and all(r.state and r.state.is_final() for r in runs)) or time.time() > deadline:
                break
            await asyncio.sleep(poll)
        by_id = {r.id: r for r in runs}
        return [
            f"{type(m).__name__}: {m}"[:300] if isinstance(m, BaseException) else by_id.get(m.id) for m in made
        ], time.time() - t0


def _log_sizes(log_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in log_dir.glob("*.log")}


def _errors(log_dir: Path, since: dict[Path, int]) -> tuple[int, list[str], int]:
    """(count of "database is locked" lines, error lines, handled races) written to the stack's logs
    after ``since``."""
    locked, errors, handled = 0, [], 0
    for p in sorted(log_dir.glob("*.log")):
        with open(p, "rb") as fh:
            fh.seek(since.get(p, 0))
            lines = fh.read().decode(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if HANDLED.search(line):
                handled += 1
            elif ERROR.search(line):
                locked += "database is locked" in line
                if line.startswith("Traceback"):  # name the exception it ends in, not just that there was one
                    line = f"{line.strip()} ... {_raised(lines, i + 1)}"
                errors.append(f"{p.name}: {line.strip()[:300]}")
    return locked, errors, handled


def _raised(lines: list[str], start: int) -> str:
    """The exception line that ends the traceback whose body starts at ``lines[start]``: the first
    line after it that is not indented; a chained traceback is followed to its last exception."""
    last = "?"
    for line in lines[start : start + 400]:
        if not line.strip() or line[0].isspace() or line.startswith("Traceback"):
            continue
        if line.startswith(("During handling", "The above exception")):
            last = "?"  # chained: the next traceback follows
            continue
        if last != "?":
            break
        last = line.strip()
    return last


def check_mlflow(flow_runs: dict[str, object], since: float) -> dict:
    """Compare the tracking server's ``optimize`` runs with ``flow_runs`` (flow-run id -> config):
    exactly one FINISHED MLflow run each, with the expected metric histories; and no other
    ``optimize`` run started after ``since`` (epoch seconds)."""
    import mlflow

    from .tracking import experiment_name

    c = mlflow.MlflowClient()
    exp = c.get_experiment_by_name(experiment_name("training"))  # where top-level optimize runs go
    found = defaultdict(list)
    for run in (
        c.search_runs([exp.experiment_id], "tags.`prefect.deployment` = 'optimize'", max_results=5000) if exp else []
    ):
        found[run.data.tags.get("prefect.flow_run_id")].append(run)
    matched, missing, mismatches, cache = 0, set(), [], {}
    for fid, cfg in flow_runs.items():
        got = found.get(fid, [])
        if not got:
            missing.add(fid)
        if len(got) != 1 or got[0].info.status != "FINISHED":
            mismatches.append(f"{cfg.problem}/seed {cfg.seed}: {len(got)} MLflow runs {[g.info.status for g in got]}")
            continue
        if cfg.problem not in cache:  # the seed does not change a Newton-SQP solve
            cache[cfg.problem] = expected_histories(cfg)
        want, bad = cache[cfg.problem], []
        if set(got[0].data.metrics) - {"seconds"} != set(want):
            bad.append(f"metric keys {sorted(set(got[0].data.metrics) ^ set(want))} differ")
        for key, hist in want.items():
            have = sorted((m.step, m.value) for m in c.get_metric_history(got[0].info.run_id, key))
            if not _same(have, hist):
                bad.append(f"{key} history {have[:3]}... != expected {hist[:3]}...")
        matched += not bad
        mismatches += [f"{cfg.problem}/seed {cfg.seed}: {m}" for m in bad]
    extra = [
        fid
        for fid, got in found.items()
        if fid not in flow_runs and any(g.info.start_time / 1000 >= since for g in got)
    ]
    return {"matched": matched, "missing": missing, "mismatches": mismatches, "unexpected": len(extra)}


def _check_mlflow_when_up(flow_runs: dict[str, object], since: float, patience: float = 120.0) -> dict:
    """:func:`check_mlflow`, tried again every 5 s for up to ``patience`` seconds while the tracking
    server fails (an outage or restart of the stack right after the runs: the check verifies what
    was stored, not that the server is up at that instant); then the failure is reported as a
    mismatch, with the figures kept."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return check_mlflow(flow_runs, since)
        except Exception as exc:  # the tracking server itself gave up
            if time.monotonic() < deadline:
                time.sleep(5.0)
                continue
            return {
                "matched": 0,
                "missing": set(),
                "mismatches": [f"MLflow check failed: {type(exc).__name__}: {exc}"[:500]],
                "unexpected": 0,
            }


def run_load(n: int = 16, timeout: float = 600, poll: float = 1.0, log_dir: Path | None = None) -> dict:
    """Submit ``n`` concurrent ``optimize`` flow runs to the stack at $PREFECT_API_URL /
    $MLFLOW_TRACKING_URI, wait for all, check them; returns the report (``ok`` when all passed).
    A run is *lost* when it is not in a final state after ``timeout`` seconds, or COMPLETED in
    Prefect with no MLflow run."""
    log_dir = log_dir or settings.sciflow_home() / "stack"
    cfgs = configs(n)
    sizes = _log_sizes(log_dir)
    memory = _MemorySampler()
    memory.start()
    results, wall = asyncio.run(_submit_and_wait(cfgs, timeout, poll))
    memory_gb = memory.used_gb()
    refused = [r for r in results if isinstance(r, str)]
    runs = [None if isinstance(r, str) else r for r in results]
    unfinished = sum(r is None or not r.state.is_final() for r in results if not isinstance(r, str))
    completed = [r for r in runs if r is not None and r.state.is_completed()]
    failed = [
        f"{r.name}: {r.state.type.value} {r.state.message or ''}"[:300]
        for r in runs
        if r is not None and r.state.is_final() and not r.state.is_completed()
    ]
    latency = sorted((r.end_time - r.created).total_seconds() for r in completed)
    since = min((r.created.timestamp() for r in runs if r is not None), default=0)
    tracked = _check_mlflow_when_up({str(r.id): cfg for r, cfg in zip(runs, cfgs, strict=True) if r is not None}, since)
    completed_ids = {str(r.id) for r in completed}
    locked, errors, handled = _errors(log_dir, sizes)
    report = {
        "runs": n,
        "refused": len(refused),
        "completed": len(completed),
        "failed": len(failed),
        "lost": unfinished + len(tracked["missing"] & completed_ids),
        "wall_seconds": round(wall, 1),
        "latency_seconds": {"p50": _q(latency, 0.5), "p90": _q(latency, 0.9), "max": _q(latency, 1.0)},
        "peak_running": _peak([(r.start_time.timestamp(), r.end_time.timestamp()) for r in completed if r.start_time]),
        "memory_used_gb_peak": memory_gb,
        "mlflow_runs_matched": tracked["matched"],
        "mlflow_mismatches": tracked["mismatches"][:20],
        "mlflow_unexpected_runs": tracked["unexpected"],
        "database_is_locked": locked,
        "log_errors": len(errors),
        "log_error_samples": _distinct(errors, 10),
        "handled_experiment_races": handled,
        "failures": failed[:10] + _distinct(refused, 3),
    }
    report["ok"] = (
        len(completed) == n
        and tracked["matched"] == n
        and not tracked["mismatches"]
        and not tracked["unexpected"]
        and not locked
        and not errors
    )
    return report


class _MemorySampler(threading.Thread):
    """Lowest MemAvailable (kB) seen while the load runs, sampled every 0.5 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.start_kb = self.low_kb = _mem_available()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.low_kb = min(self.low_kb, _mem_available())

    def used_gb(self) -> float:
        self.done.set()
        return round((self.start_kb - self.low_kb) / 2**20, 1)


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def _q(xs: list[float], q: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None


def _peak(intervals: list[tuple[float, float]]) -> int:
    """Most flow runs RUNNING at the same moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def _distinct(lines: list[str], k: int) -> list[str]:
    seen: dict[str, None] = {}
    for line in lines:
        seen.setdefault(re.sub(r"[0-9a-f-]{36}|\d+", "#", line), line)
    return list(seen.values())[:k]


def format_report(r: dict) -> str:
    lat = r["latency_seconds"]
    lines = [
        f"{r['runs']} concurrent optimize flow runs: {r['refused']} refused at creation, {r['completed']} completed, "
        f"{r['failed']} failed, {r['lost']} lost in {r['wall_seconds']} s (peak {r['peak_running']} running at once, ~{r['memory_used_gb_peak']} GB)",
        f"latency created->end: p50 {lat['p50']} s, p90 {lat['p90']} s, max {lat['max']} s",
        f"MLflow: {r['mlflow_runs_matched']}/{r['runs']} runs with the expected metric histories, "
        f"{r['mlflow_unexpected_runs']} unexpected",
        f"logs: {r['database_is_locked']} 'database is locked', {r['log_errors']} error lines "
        f"({r['handled_experiment_races']} handled experiment-creation races)",
    ]
    lines += [f"  {m}" for m in r["mlflow_mismatches"] + r["failures"] + r["log_error_samples"]]
    lines.append("OK" if r["ok"] else "FAILED")
    return "\n".join(lines)


def main(runs: int, out: Path | None, timeout: float) -> int:
    if not os.environ.get("PREFECT_API_URL", "").startswith("http") or not os.environ.get(
        "MLFLOW_TRACKING_URI", ""
    ).startswith("http"):
        raise SystemExit(
            "sciflow loadtest: point PREFECT_API_URL and MLFLOW_TRACKING_URI at a stack first "
            f"(sciflow stack up; source {settings.sciflow_home() / 'stack' / 'stack.env'})"
        )
    if runs < 1 or not timeout > 0:
        raise SystemExit(f"sciflow loadtest: --runs must be >= 1 and --timeout > 0 (got {runs}, {timeout})")
    import urllib.request

    for name, url in (
        ("Prefect", os.environ["PREFECT_API_URL"] + "/health"),
        ("MLflow", os.environ["MLFLOW_TRACKING_URI"] + "/health"),
    ):
        try:
            urllib.request.urlopen(url, timeout=5)
        except OSError as exc:
            raise SystemExit(
                f"sciflow loadtest: the {name} server at {url} does not answer ({exc}); is the stack up?"
            ) from None
    report = run_load(runs, timeout)
    print(format_report(report))
    if out:
        from data.io import atomic_path

        with atomic_path(Path(out)) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


__all__ = ["PROBLEMS", "configs", "expected_histories", "run_load", "format_report"]

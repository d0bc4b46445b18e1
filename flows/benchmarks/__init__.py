"""Benchmarks by name. Each module's ``run(scale, run_id)`` returns ``(rows, figures)``; :func:`run_benchmark` writes the JSON,
logs it to MLflow and publishes a Prefect table artifact when inside a flow run."""

from __future__ import annotations

import importlib
import platform
import threading
import time
from pathlib import Path

from ..scales import check_scale

BENCHMARKS = {
    "datagen": "flows.benchmarks.datagen",
    "linear": "flows.benchmarks.linear",
    "neural-odes": "flows.benchmarks.neural_odes",
    "operators": "flows.benchmarks.operators",
    "hard-constraints": "flows.benchmarks.hard_constraints",
    "optimizers": "flows.benchmarks.optimizers",
}


class PeakRSS:
    """Peak growth of this process's resident memory during the block, sampled every 5 ms from
    ``/proc/self/statm`` (tracemalloc would slow the Python-level sketch loops several-fold)."""

    def __enter__(self):
        import os

        self._page = os.sysconf("SC_PAGE_SIZE")
        self._base = self._peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _sample(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())

    @property
    def peak_mib(self) -> float:
        return (self._peak - self._base) / 2**20


def progress_logger():
    """Prefect's run logger inside a flow run, ``print`` outside one (progress lines)."""
    try:
        from prefect import get_run_logger

        return get_run_logger().info
    except Exception:  # outside a flow run
        return print


def run_benchmark(name: str, scale: str, out: str | Path | None = None, parent_run_id: str | None = None):
    """Run benchmark ``name`` at ``scale``; write ``{"rows", "meta"}`` to ``out`` if given."""
    from .. import tracking
    from ..results import publish, write_json

    check_scale(scale)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[name])
    with tracking.mlflow_run(f"bench-{name}-{scale}", {"benchmark": name, "scale": scale},
                             {"sciflow.stage": f"bench-{name}"}, parent_run_id) as run_id:
        t0 = time.perf_counter()
        rows, figures = module.run(scale, run_id=run_id)
        meta = {
            "benchmark": name,
            "scale": scale,
            "seconds": round(time.perf_counter() - t0, 2),
            "machine": {"cpu_count": __import__("os").cpu_count(), "platform": platform.platform()},
            "git_commit": tracking.git_commit(),
            "mlflow_run_id": run_id,
            **getattr(module, "META", {}),
        }
        for fig_name, fig in figures.items():  # to MLflow, and beside the JSON as <out>-<name>.png
            tracking.log_figure(run_id, fig, f"{fig_name}.png")
            if out is not None:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(Path(out).with_name(f"{Path(out).stem}-{fig_name}.png"), dpi=80)
            fig.clf()
        if out is not None:
            write_json(out, rows, meta)
        publish(f"bench-{name}-{scale}", rows, meta, run_id, description=f"{name} benchmark at scale={scale}")
    return rows, meta

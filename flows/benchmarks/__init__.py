"""The benchmark registry, and the runner behind ``sciflow bench`` and every ``benchmark-*`` flow.

:data:`BENCHMARKS` is the one list of benchmarks. Everything else that names them is derived
from it: the ``sciflow bench`` choices (:mod:`flows.cli`), the nightly stages and their ``Stage``
parameter type (:mod:`flows.nightly`), the docs tables (:mod:`flows.docs_tables`); the
deployments in ``infra/prefect.yaml`` and ``infra/cluster/prefect.yaml`` are checked against it
(``tests/flows/test_infra.py``).

Each benchmark's module has ``run(scale, run_id, methods) -> (rows, figures)`` (``methods``: the
:class:`flows.tracking.MethodRuns` of the run, one MLflow child run per compared method) and
optionally ``META`` and ``metric_prefix(row)``; :func:`run_benchmark` writes the JSON, logs it
to MLflow (rows as metrics of each method's child run, and as a table) and publishes a Prefect
table artifact when inside a flow run. To add a benchmark: write ``flows/benchmarks/<name>.py``, a thin
``benchmark-<name>`` flow beside the others, one :class:`Benchmark` line here, its deployments,
a nightly summary if it is a stage, and a docs table.
"""

from __future__ import annotations

import importlib
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from data.errors import InputError

from ..scales import check_scale


@dataclass(frozen=True)
class Benchmark:
    """One benchmark.

    Attributes:
        name: ``sciflow bench NAME``; also names its results (``results/<name>-<scale>.json``,
            MLflow run ``bench-<name>-<scale>``, tag ``sciflow.stage=bench-<name>``).
        module: the module with ``run(scale, run_id, methods) -> (rows, figures)`` (imported on use:
            benchmark modules import torch, PETSc, ...).
        flow: ``module:function`` of the Prefect flow that runs it, or None (run by the CLI only).
        flow_name: that flow's name: the nightly stage name, and its deployment's name in
            ``infra/prefect.yaml`` (deployment ``<flow_name>/<flow_name>`` on the ``local`` pool).
        stage: the nightly runs it as a stage (needs a flow, and a summary in :mod:`flows.nightly`).
        gpu: its flow also has a ``gpu`` deployment (``infra/cluster/prefect.yaml``), and the
            paper-scale night sends it there.
    """

    name: str
    module: str
    flow: str | None = None
    flow_name: str | None = None
    stage: bool = False
    gpu: bool = False

    def __post_init__(self) -> None:
        if (self.flow is None) != (self.flow_name is None):
            raise InputError(f"benchmark {self.name!r}: give both flow and flow_name, or neither")
        if (self.stage or self.gpu) and self.flow is None:
            raise InputError(f"benchmark {self.name!r}: a nightly stage or gpu deployment needs a flow")

    @property
    def entrypoint(self) -> str | None:
        """The flow as a Prefect deployment entrypoint, ``flows/<module>.py:<function>``."""
        if self.flow is None:
            return None
        module, function = self.flow.split(":")
        return f"{module.replace('.', '/')}.py:{function}"

    def load(self) -> ModuleType:
        """The benchmark's module (``run``, ``META`` and its per-scale tables)."""
        return importlib.import_module(self.module)

    def load_flow(self) -> Callable[..., Any]:
        """The Prefect flow object named by :attr:`flow`."""
        if self.flow is None:
            raise InputError(f"benchmark {self.name!r} has no flow; run it with `sciflow bench {self.name}`")
        module, function = self.flow.split(":")
        return getattr(importlib.import_module(module), function)


#: Every benchmark by name, in the order the nightly runs its stages.
BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("datagen", "flows.benchmarks.datagen", "flows.datagen:benchmark_datagen", "benchmark-datagen"),
        Benchmark(
            "linear",
            "flows.benchmarks.linear",
            "flows.linear:benchmark_linear_solvers",
            "benchmark-linear-solvers",
            stage=True,
            gpu=True,
        ),
        Benchmark(
            "linear-budget",
            "flows.benchmarks.linear_budget",
            "flows.linear:benchmark_linear_budget",
            "benchmark-linear-budget",
        ),
        Benchmark(
            "linear-diagnosis",
            "flows.benchmarks.linear_diagnosis",
            "flows.linear:benchmark_linear_diagnosis",
            "benchmark-linear-diagnosis",
        ),
        Benchmark(
            "operators",
            "flows.benchmarks.operators",
            "flows.operator:benchmark_operators",
            "benchmark-operators",
            stage=True,
            gpu=True,
        ),
        Benchmark(
            "operators-budget",
            "flows.benchmarks.operators_budget",
            "flows.operator:benchmark_operators_budget",
            "benchmark-operators-budget",
        ),
        Benchmark(
            "neural-odes",
            "flows.benchmarks.neural_odes",
            "flows.neural_ode:benchmark_neural_odes",
            "benchmark-neural-odes",
            stage=True,
            gpu=True,
        ),
        Benchmark(
            "optimizers",
            "flows.benchmarks.optimizers",
            "flows.optimize:benchmark_optimizers",
            "benchmark-optimizers",
            stage=True,
        ),
        Benchmark(
            "hard-constraints",
            "flows.benchmarks.hard_constraints",
            "flows.hard_constraint:benchmark_hard_constraints",
            "benchmark-hard-constraints",
            stage=True,
            gpu=True,
        ),
    )
}


def get(name: str) -> Benchmark:
    """The benchmark called ``name``; an unknown name is an :class:`~data.errors.InputError` listing the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise InputError(f"benchmark={name!r} is unknown; choose one of {list(BENCHMARKS)}") from None


class PeakRSS:
    """Peak growth of this process's resident memory during the block, sampled every 5 ms from
    ``/proc/self/statm`` (tracemalloc would slow the Python-level sketch loops several-fold)."""

    def __enter__(self):
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


def run_benchmark(
    name: str, scale: str, out: str | Path | None = None, parent_run_id: str | None = None, **options: Any
):
    """Run benchmark ``name`` at ``scale``; write ``{"rows", "meta"}`` to ``out`` if given.

    One MLflow run ``bench-<name>-<scale>`` (nested under ``parent_run_id``) with one child run
    per compared method (:class:`flows.tracking.MethodRuns`, handed to the module's
    ``run(scale, run_id, methods, **options)``; ``options``: the benchmark's own, e.g. the linear
    benchmark's ``retrain``): the module logs each method's config, per-epoch training
    metrics and trained model there; then every numeric field of every row goes to its method's
    run as ``<prefix>/<field>`` (prefix: the module's ``metric_prefix(row)``, default the row's
    problem). The rows are also the run's table artifact ``comparison.json``, its JSON
    ``results/bench-<name>-<scale>.json`` and a Prefect table artifact."""
    from prefect.exceptions import TerminationSignal

    from operators.device import device_meta, reset_usage

    from .. import tracking
    from ..results import publish, write_json

    check_scale(scale)
    module = get(name).load()
    reset_usage()  # meta["device"]["devices_used"]: what ran where in this benchmark only
    with tracking.mlflow_run(
        f"bench-{name}-{scale}", {"benchmark": name, "scale": scale}, {"sciflow.stage": f"bench-{name}"}, parent_run_id
    ) as run_id:
        t0 = time.perf_counter()
        methods = tracking.MethodRuns(run_id, name, scale)
        try:
            rows, figures = module.run(scale, run_id=run_id, methods=methods, **options)
            methods.log_rows(rows, getattr(module, "metric_prefix", tracking.row_prefix))
        except BaseException as exc:
            methods.close("KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit, TerminationSignal)) else "FAILED")
            raise
        methods.close()
        meta = {
            "benchmark": name,
            "scale": scale,
            "seconds": round(time.perf_counter() - t0, 2),
            "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
            "git_commit": tracking.git_commit(),
            "mlflow_run_id": run_id,
            "device": device_meta(),
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
        tracking.log_metrics(run_id, {"seconds": meta["seconds"], "rows": len(rows), "methods": len(methods.run_ids)})
        if methods.models:
            tracking.log_tags(
                run_id, {"sciflow.models": ", ".join(f"{v.name}/{v.version}" for v in methods.models)[:5000]}
            )
        tracking.log_table(run_id, rows)
        publish(f"bench-{name}-{scale}", rows, meta, run_id, description=f"{name} benchmark at scale={scale}")
    return rows, meta

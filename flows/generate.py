"""``generate-dataset`` flow: PETSc data generation as cached, chunked Prefect tasks.

Each chunk of samples is one task run, cached on (inputs + task source) with its result
persisted, so running the same spec twice does no PETSc work the second time. Chunks pass a
path + digest (:class:`data.ChunkRef`), never arrays. The flow run is one MLflow run: params =
the spec, the dataset as a run input with its digest, a PNG of samples, throughput metrics.

Chunks run one at a time in the flow's process by default (PETSc is not thread-safe). With
``runner="dask"`` they fan out through Prefect's Dask task runner (``prefect-dask``): a
``LocalCluster`` of ``dask_workers`` single-threaded worker processes, or the scheduler at
``dask_address`` / ``$SCIFLOW_DASK_ADDRESS``. Sample ``i`` is drawn from its own seed and the
chunking is the same, so the dataset (and its digest) is bit-identical either way.

A dataset already in the store (same spec hash) is returned at once, without chunk tasks: the
flow run still records it (MLflow run tagged ``sciflow.dataset.cached``). Benchmarks obtain their
data through :func:`get_dataset`: the stored dataset, else this flow inside a Prefect flow run
and the library (:func:`data.generate`) outside one; the nightly's data stage generates the same
specs first (:func:`flows.nightly.datasets_for`), so every benchmark finds them stored.

Run it: ``sciflow generate darcy --n 64 --n-train 32``.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

import data
from data.settings import current
from data.spec import DarcySpec, PDESpec
from data.store import ChunkRef, DatasetRef

from . import plots, tracking
from .progress import Progress
from .results import publish
from .settings import flow, route_library_logs


def _transient(task, task_run, state) -> bool:
    """Retry only what may succeed on a second try (I/O, a briefly unreachable server); a solver
    that diverged or a bad input fails fast, with its reason."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return False  # a full or read-only disk does not heal in seconds
    return not isinstance(exc, (data.SolverDivergedError, data.DatasetError, ValueError, TypeError))


def _chunk_run_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return f"{p['spec'].family}-{p['split']}[{p['start']}:{p['stop']}]"


@task(
    name="generate-chunk",
    cache_policy=(INPUTS - "run_id") + TASK_SOURCE,  # the MLflow run to log to is not part of the key
    persist_result=True,
    task_run_name=_chunk_run_name,
    retries=2,
    retry_delay_seconds=[2, 10],  # backoff
    retry_condition_fn=_transient,
)
def generate_chunk(spec: PDESpec, split: str, start: int, stop: int, root: str, run_id: str | None = None) -> ChunkRef:
    """PETSc-solve samples ``start:stop`` of ``split`` into a chunk file (path + digest); log
    its throughput to the flow's MLflow run by id (MLflow's active run is thread-local)."""
    route_library_logs()  # PETSc fallback warnings reach this task run's logs, on a Dask worker too
    t0 = time.perf_counter()
    ref = data.generate_chunk(spec, split, start, stop, root)
    seconds = time.perf_counter() - t0
    get_run_logger().info("%s[%d:%d] solved and stored in %.2f s", split, start, stop, seconds)
    if run_id:
        tracking.log_metrics(
            run_id,
            {f"chunk_seconds_{split}": seconds, f"chunk_samples_per_s_{split}": (stop - start) / seconds},
            step=start,
        )
    return ref


@task(name="assemble-dataset")
def assemble_dataset(spec: PDESpec, chunks: list[ChunkRef], root: str) -> DatasetRef:
    """Concatenate verified chunks into split files + manifest (atomic writes)."""
    return data.assemble(spec, chunks, root)


def _logger():
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("sciflow.generate")


def dask_task_runner(address: str | None = None, n_workers: int = 2):
    """Prefect's Dask task runner: the scheduler at ``address`` (else ``$SCIFLOW_DASK_ADDRESS``),
    else a fresh ``LocalCluster`` of ``n_workers`` single-threaded processes on 127.0.0.1 (one
    PETSc solve per process at a time).

    Dask workers report task runs to the Prefect API named by ``PREFECT_API_URL``; without one,
    each would start its own temporary server on the same SQLite database (slow, and it locks).
    LocalCluster workers are therefore handed the API this flow run talks to, the temporary one
    included; a remote cluster's workers need ``PREFECT_API_URL`` (and ``MLFLOW_TRACKING_URI``,
    ``SCIFLOW_HOME`` on shared storage) in their own environment.
    """
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    address = address or current().dask_address
    if address:
        if not os.environ.get("PREFECT_API_URL"):
            _logger().warning(
                "Dask scheduler %s with no PREFECT_API_URL: remote workers cannot reach this "
                "process's temporary Prefect server; point PREFECT_API_URL at a real one",
                address,
            )
        return DaskTaskRunner(address=address)
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    env = (
        {"PREFECT_API_URL": api_url}
        if api_url.startswith(("http://", "https://")) and "ephemeral-prefect" not in api_url
        else {}
    )
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
            "env": env,
        }
    )


@contextmanager
def _chunk_submitter(runner: str, address: str | None, n_workers: int) -> Iterator[Callable]:
    """``submit(spec, split, start, stop, root, run_id) -> PrefectFuture`` on the chosen runner:
    the flow's own (one thread) or a Dask cluster that lives for this block."""
    if runner == "threads":
        yield generate_chunk.submit
        return
    with dask_task_runner(address, n_workers) as dask:

        def submit(spec, split, start, stop, root, run_id):
            params = {"spec": spec, "split": split, "start": start, "stop": stop, "root": root, "run_id": run_id}
            return dask.submit(generate_chunk, params)

        yield submit


def _ensure_chunk(spec, split, start, stop, root, fut) -> ChunkRef:
    """A cached task result whose file was removed from disk is recomputed, not trusted."""
    ref = fut.result()
    if not Path(ref.path).exists():
        ref = generate_chunk.with_options(refresh_cache=True)(spec, split, start, stop, root)
    return ref


def spec_label(spec: PDESpec) -> str:
    """``<family>-n<n>`` (or the family alone for specs without a grid): names flow runs and rows."""
    n = getattr(spec, "n", None)
    return f"{spec.family}-n{n}" if n is not None else spec.family


def _flow_run_name() -> str:
    """``generate-<family>-n<n>``; the spec may still be the dict a deployment run passes."""
    from prefect.runtime import flow_run

    try:
        return f"generate-{spec_label(data.parse_spec(flow_run.parameters['spec']))}"
    except Exception:  # noqa: BLE001 (a bad spec fails validation, with its message, right after)
        return "generate-dataset"


@flow(
    name="generate-dataset",
    task_runner=ThreadPoolTaskRunner(max_workers=1),  # PETSc is not thread-safe: one solve at a time per process
    validate_parameters=True,
    flow_run_name=_flow_run_name,
)
def generate_dataset(
    spec: PDESpec = DarcySpec(n=32, n_train=16, n_test=4),
    chunk_size: Annotated[int, Field(ge=1, le=100_000, description="samples per cached task")] = 16,
    root: str | None = None,
    parent_run_id: str | None = None,
    runner: Literal["threads", "dask"] = "threads",
    dask_address: str | None = None,
    dask_workers: Annotated[int, Field(ge=1, le=1024, description="LocalCluster worker processes")] = 2,
) -> DatasetRef:
    """Generate (or reuse) the PETSc dataset for ``spec``; returns its path and SHA-256 digest.

    Args:
        spec: the PDE family and its parameters (a form in the Prefect UI).
        chunk_size: samples per task; the unit of caching, retries and parallel work.
        root: dataset store root (default ``$SCIFLOW_HOME``).
        parent_run_id: MLflow run to nest this run under (set by the nightly flow).
        runner: where chunk tasks run: ``threads`` (the flow's process, one at a time) or
            ``dask`` (Prefect's Dask task runner).
        dask_address: Dask scheduler (``tcp://host:8786``) for ``runner="dask"``; default
            ``$SCIFLOW_DASK_ADDRESS``, else a LocalCluster of ``dask_workers`` processes.
        dask_workers: LocalCluster size when no address is given.
    """
    logger = get_run_logger()
    for orphan in tracking.reap_orphans():
        logger.warning("ended MLflow run %s left RUNNING by a dead process (status KILLED)", orphan)
    root = str(Path(root).resolve()) if root else str(data.home())
    params = {
        "spec": spec.model_dump(mode="json"),
        "chunk_size": chunk_size,
        "spec_hash": data.spec_hash(spec),
        "runner": runner,
    }
    with tracking.mlflow_run(
        f"generate-{spec.family}", params, {"sciflow.stage": "generate-dataset"}, parent_run_id
    ) as run_id:
        t0 = time.perf_counter()
        stored = data.find(spec, root)
        if stored is not None:  # generated before (this spec hash): no chunk tasks, no PETSc work
            tracking.log_dataset(run_id, stored)
            tracking.log_tags(run_id, {"sciflow.dataset.cached": "true"})
            tracking.log_metrics(run_id, {"samples": sum(spec.splits.values()), "seconds": time.perf_counter() - t0})
            logger.info("dataset %s already stored (digest %s): reused", stored.path, stored.digest[:12])
            return stored
        plan = data.plan_chunks(spec, chunk_size)
        total = sum(stop - start for _, start, stop in plan)
        logger.info("%s: %d samples in %d chunks (spec %s)", spec.family, total, len(plan), data.spec_hash(spec)[:12])
        chunks, done = [], 0
        progress = Progress(len(plan), f"generate-dataset {spec.family}", unit="chunk")
        with _chunk_submitter(runner, dask_address, dask_workers) as submit, progress:
            futures = {
                submit(spec, split, start, stop, root, run_id): (split, start, stop) for split, start, stop in plan
            }
            for fut in as_completed(list(futures)):
                split, start, stop = futures[fut]
                chunks.append(_ensure_chunk(spec, split, start, stop, root, fut))
                done += stop - start
                progress.update()
                logger.info("progress %d/%d samples (%.0f%%)", done, total, 100.0 * done / total)
        ref = assemble_dataset(spec, chunks, root)
        seconds = time.perf_counter() - t0
        tracking.log_dataset(run_id, ref)
        tracking.log_metrics(run_id, {"samples": total, "seconds": seconds, "samples_per_second": total / seconds})
        fig = plots.dataset_samples(data.store.head(ref, "train", 3))
        tracking.log_figure(run_id, fig, "samples.png")
        plots.plt.close(fig)
        row = {
            "family": spec.family,
            "samples": total,
            "seconds": round(seconds, 3),
            "samples_per_s": round(total / seconds, 2),
            "digest": ref.digest[:12],
            "path": ref.path,
        }
        publish(f"dataset-{spec.family}", [row], {"spec": params["spec"]}, run_id)
        logger.info("dataset %s digest %s", ref.path, ref.digest[:12])
    return ref


def get_dataset(spec: PDESpec) -> DatasetRef:
    """The stored dataset for ``spec``; a missing one is generated, inside a Prefect flow run
    through the ``generate-dataset`` flow (a subflow: cached chunk tasks, fanned out on Dask when
    the ``dask_address`` setting names a scheduler; its MLflow run is a top-level run of the data
    experiment, so a benchmark run's children stay its compared methods), outside one through
    :func:`data.generate` (same store, same spec hash, bit-identical data). A stored dataset (what
    the nightly's data stage made) is returned at once, with no flow run."""
    from prefect.context import FlowRunContext

    stored = data.find(spec)
    if stored is not None:
        return stored
    if FlowRunContext.get() is None:
        return data.generate(spec, progress=False)
    runner: Literal["threads", "dask"] = "dask" if current().dask_address else "threads"
    return generate_dataset(spec=spec, runner=runner)

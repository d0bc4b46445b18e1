"""PETSc fallbacks through the generate-dataset Prefect flow: a chunk that succeeds by a fallback and
one that fails permanently each run their task exactly once; the warning reaches the flow run's logs."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
import pytest

import data
from data.spec import PoissonSpec

#: CG without a preconditioner stopped after 2 iterations: KSP_DIVERGED_ITS (petsc4py: DIVERGED_MAX_IT)
DIVERGE = {"ksp_type": "cg", "pc_type": "none", "ksp_max_it": "2"}
LU = {"ksp_type": "preonly", "pc_type": "lu"}


def _h5_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.suffix == ".h5" or ".h5.tmp" in p.name]


REASON = "DIVERGED_(MAX_IT|ITS) after 2 iterations"


# ---------------------------------------------------------------------------------------------
# through the generate-dataset Prefect flow: the chunk task runs once either way


async def _task_run_counts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: (r.run_count, r.state.name) for r in runs}


async def _flow_run_logs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


@pytest.mark.slow
def test_flow_success_by_fallback_and_permanent_failure_run_each_chunk_task_once(tmp_path):
    from flows import tracking
    from flows.generate import generate_dataset

    good = PoissonSpec(n=12, n_train=4, n_test=0, seed=7, petsc_options=DIVERGE, petsc_fallbacks=[LU])
    state = generate_dataset(spec=good, chunk_size=2, root=str(tmp_path / "ok"), return_state=True)
    assert state.is_completed(), state
    runs = asyncio.run(_task_run_counts(state.state_details.flow_run_id))
    chunks = {name: v for name, v in runs.items() if name.startswith("poisson-")}
    assert len(chunks) == 2 and all(v == (1, "Completed") for v in chunks.values()), runs
    for handler in logging.getLogger("prefect.extra").handlers:
        handler.flush()  # logs reach the API in batches
    for _ in range(20):  # the warning is in the run's logs
        logs = asyncio.run(_flow_run_logs(state.state_details.flow_run_id))
        if sum("retrying the same right-hand side with fallback 1/1" in m for m in logs) == 2:
            break
        time.sleep(0.5)
    assert sum("retrying the same right-hand side with fallback 1/1" in m for m in logs) == 2, logs
    ref = state.result()
    want = data.load(
        data.generate(
            good.model_copy(update={"petsc_options": {}, "petsc_fallbacks": []}),
            root=tmp_path / "default",
            progress=False,
        )
    )
    assert np.abs(data.load(ref)["x"] - want["x"]).max() < 1e-8 * np.abs(want["x"]).max()

    bad = PoissonSpec(n=12, n_train=4, n_test=0, seed=7, petsc_options=DIVERGE, petsc_fallbacks=[{"pc_type": "jacobi"}])
    t0 = time.perf_counter()
    state = generate_dataset(spec=bad, chunk_size=2, root=str(tmp_path / "bad"), return_state=True)
    seconds = time.perf_counter() - t0
    assert state.is_failed()
    runs = asyncio.run(_task_run_counts(state.state_details.flow_run_id))
    assert runs and all(count == 1 for count, _ in runs.values()), runs  # permanent: not retried by Prefect
    mlflow_run = tracking.find_runs(f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'")[0]
    error = mlflow_run.data.tags["sciflow.error"]
    assert mlflow_run.info.status == "FAILED"
    assert "all 1 fallbacks" in error and "cg/jacobi did not converge: DIVERGED_" in error, error
    assert not _h5_files(tmp_path / "bad")
    print(f"\n[reliability] permanent divergence after fallbacks: flow failed in {seconds:.2f} s, every task run once")

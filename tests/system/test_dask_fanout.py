"""Data generation fanned out through Prefect's Dask task runner equals the sequential run.

Sample ``i`` of a split comes from its own seed and the chunking is the same, so the Dask run
(chunks in two worker processes) must write bit-identical files: the same SHA-256 digest."""

import os

import numpy as np
import pytest

pytest.importorskip("prefect_dask")

import data  # noqa: E402
from data.spec import DarcySpec  # noqa: E402
from flows.generate import dask_task_runner, generate_dataset  # noqa: E402

SPEC = DarcySpec(n=32, n_train=12, n_test=4, seed=3)


@pytest.mark.slow
def test_dask_fanout_matches_the_sequential_dataset(tmp_path):
    seq = generate_dataset(spec=SPEC, chunk_size=4, root=str(tmp_path / "threads"), return_state=True)
    par = generate_dataset(
        spec=SPEC, chunk_size=4, root=str(tmp_path / "dask"), runner="dask", dask_workers=2, return_state=True
    )
    assert seq.is_completed(), seq
    assert par.is_completed(), par
    a, b = seq.result(), par.result()
    assert a.path != b.path and a.digest == b.digest
    for split in ("train", "test"):
        x, y = data.load(a, split), data.load(b, split)
        np.testing.assert_array_equal(x["u"], y["u"])
        np.testing.assert_array_equal(x["a"], y["a"])
    # every chunk of the Dask run is on disk under its own root
    chunks = list((tmp_path / "dask" / "chunks").rglob("*.h5"))
    assert len(chunks) == len(data.plan_chunks(SPEC, 4)) == 4


@pytest.mark.slow
def test_chunks_ran_in_dask_worker_processes():
    """The chunk tasks really leave the flow's process: their task runs record other PIDs."""
    from prefect import flow, task

    @task
    def pid() -> int:
        return os.getpid()

    @flow
    def probe() -> set[int]:
        with dask_task_runner(n_workers=2) as runner:
            return {runner.submit(pid, {}).result() for _ in range(4)}

    pids = probe()
    assert pids and os.getpid() not in pids


def test_scheduler_address_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCIFLOW_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert dask_task_runner().address == "tcp://10.0.0.5:8786"
    assert dask_task_runner("tcp://sched:8786").address == "tcp://sched:8786"  # the parameter wins
    monkeypatch.delenv("SCIFLOW_DASK_ADDRESS")


def test_default_runner_is_unchanged():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.utilities.callables import parameter_schema

    assert isinstance(generate_dataset.task_runner, ThreadPoolTaskRunner)
    props = parameter_schema(generate_dataset.fn).model_dump()["properties"]
    assert props["runner"]["default"] == "threads" and props["dask_workers"]["default"] == 2

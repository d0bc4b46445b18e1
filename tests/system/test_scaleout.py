"""Scale-out engines on this machine: one PETSc solve under ``mpiexec -n 1|2`` and DDP training under
``torchrun --nproc_per_node 2`` (gloo on CPU), each as a user runs them (real subprocesses)."""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec")
TORCHRUN = BIN / "torchrun"


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    # OpenMPI refuses root without these, and 2 ranks on a 1-core runner without oversubscription
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    return env


def _run(cmd: list, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(c) for c in cmd], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


def _mpi_solve(ranks: int, n: int, tmp: Path, problem: str = "poisson") -> dict:
    path = tmp / f"{problem}-{n}-{ranks}.json"
    _run(
        [
            MPIEXEC,
            "-n",
            ranks,
            sys.executable,
            "-m",
            "solvers.linear.mpi_poisson",
            "--n",
            n,
            "--problem",
            problem,
            "--json",
            path,
        ],
        _env(),
    )
    return json.loads(path.read_text())


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed")
def test_mpi_poisson_one_and_two_ranks_agree(tmp_path):
    n = 64
    one, two = _mpi_solve(1, n, tmp_path), _mpi_solve(2, n, tmp_path)
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert one["rank_unknowns"] == [n * n]
    # both ranks owned rows (the DMDA splits the grid) and were separate processes
    assert sum(two["rank_unknowns"]) == n * n and min(two["rank_unknowns"]) >= n * n // 4
    assert len(set(two["rank_pids"])) == 2
    for r in (one, two):
        assert r["reason"].startswith("CONVERGED") and r["relative_residual"] <= 1e-8
        assert r["error_max"] < (1.0 / n) ** 2  # second order: about 0.82 h^2 at n = 64
    # the same discrete solution (to the 1e-8 solver tolerance) and a similar GAMG hierarchy
    assert two["error_max"] == pytest.approx(one["error_max"], rel=1e-5)
    assert two["solution_l2"] == pytest.approx(one["solution_l2"], rel=1e-7)
    assert abs(one["iterations"] - two["iterations"]) <= 2


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not installed")
def test_mpi_darcy_matches_the_sequential_solver(tmp_path):
    """The distributed assembly is the operator of data/pdes/grid.py: 2 ranks give the solution of
    data.pdes.darcy.solve on the same random coefficient."""
    import data
    from solvers.linear.mpi_poisson import coefficient

    n = 48
    two = _mpi_solve(2, n, tmp_path, problem="darcy")
    c = (np.arange(n) + 0.5) / n
    u = data.pdes.darcy.solve(coefficient("darcy", c, c, seed=0), f=1.0)
    assert two["ranks"] == 2 and two["relative_residual"] <= 1e-8
    assert two["solution_l2"] == pytest.approx(np.linalg.norm(u) / n, rel=1e-6)


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_ddp_two_ranks_one_checkpoint_one_mlflow_run_same_weights(tmp_path):
    import torch
    from mlflow import MlflowClient

    from operators import model_from_checkpoint
    from operators.fno.ddp import state_hash

    experiment = f"scaleout-{uuid.uuid4().hex[:8]}"
    env = _env(SCIFLOW_HOME=str(tmp_path / "home"), SCIFLOW_EXPERIMENT=experiment)
    ckpt, hashes = tmp_path / "ckpt" / "checkpoint.pt", tmp_path / "hashes"
    _run(
        [
            TORCHRUN,
            "--standalone",
            "--nproc_per_node",
            2,
            "-m",
            "flows.operator_ddp",
            "--scale",
            "smoke",
            "--checkpoint",
            ckpt,
            "--hash-dir",
            hashes,
            "--out",
            tmp_path / "ddp.json",
        ],
        env,
        timeout=300,
    )
    summary = json.loads((tmp_path / "ddp.json").read_text())
    assert (summary["world_size"], summary["backend"], summary["local_batch"]) == (2, "gloo", 4)
    assert summary["threads_per_rank"] == 1

    # one checkpoint, written by rank 0, with the weights every rank ended with
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt"]
    saved = torch.load(ckpt, weights_only=True)
    assert (saved["epoch"], saved["world_size"]) == (1, 2)
    ranks = [json.loads((hashes / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["sha256"] == ranks[1]["sha256"] == summary["weights_sha256"]
    assert state_hash(model_from_checkpoint(ckpt, periodic=False)) == ranks[0]["sha256"]

    # exactly one MLflow run (rank 0's), finished, with the epoch's metrics
    client = MlflowClient()
    exp = client.get_experiment_by_name(f"{experiment}-training")  # SCIFLOW_EXPERIMENT is the prefix of each kind's
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == summary["mlflow_run_id"]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["world_size"] == "2"
    assert {"loss", "test_l2", "test_h1", "seconds"} <= set(runs[0].data.metrics)

    # same global batch: one process sees the same samples per step, so the same first-epoch loss
    _run(
        [
            sys.executable,
            "-m",
            "flows.operator_ddp",
            "--scale",
            "smoke",
            "--checkpoint",
            tmp_path / "plain.pt",
            "--no-mlflow",
            "--out",
            tmp_path / "plain.json",
        ],
        env,
        timeout=300,
    )
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["world_size"] == 1 and plain["local_batch"] == 8
    assert summary["history"][0]["loss"] == pytest.approx(plain["history"][0]["loss"], rel=1e-4)
    assert summary["test_l2"] == pytest.approx(plain["test_l2"], rel=1e-3)

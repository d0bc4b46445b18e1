"""infra/gpu-check.sh (the GPU path's one command), exercised without a GPU: with
SCIFLOW_DEVICE=cpu it runs a benchmark's smoke scale and checks where the work ran (the same
assertions it makes for CUDA); with SCIFLOW_DEVICE=cuda on a machine without CUDA it stops at once
with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _check(tmp_path: Path, device: str) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_", "SCIFLOW_"))},
        "SCIFLOW_DEVICE": device,
        "GPU_CHECK_BENCHMARKS": "operators",
        "BIN": str(Path(sys.executable).parent),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [str(ROOT / "infra" / "gpu-check.sh"), str(tmp_path / "out")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_check_asserts_where_each_network_ran(tmp_path):
    done = _check(tmp_path, "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gpu-check: operators:" in done.stdout and "'operator training': ['cpu']" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_without_cuda_the_check_stops_at_once_naming_it(tmp_path):
    done = _check(tmp_path, "cuda")
    assert done.returncode != 0 and "sees no CUDA device" in done.stdout + done.stderr

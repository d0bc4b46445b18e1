"""A nightly killed mid-training resumes: the night's process is SIGKILLed right after the
checkpoint of the first epoch of one benchmark model (what a dying worker does to a stage's
process); the rerun reuses every dataset and every model that
had finished (0 epochs retrained, counted in ``<home>/models/trainings.jsonl``), resumes the
interrupted one after its checkpoint and trains only the rest (the linear stage's DCDM network is
the shipped one: nothing to train). The night runs two stages (linear
solvers, neural operators) at smoke scale, inline, to keep it to a few minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STAGES = ("benchmark-linear-solvers", "benchmark-operators")
KILLED = "tfno-r0.02"  # the third operator model: fno and tfno-r0.05 finish before the kill
#: the night, with the training of KILLED wrapped so that its process SIGKILLs itself after epoch 1's checkpoint
NIGHT = f"""
import os, signal
from flows import nightly
from flows.benchmarks import training

nightly.STAGES = {{s: nightly.STAGES[s] for s in {STAGES!r}}}
original = training.train_model

def train_model(kind, label, config, fit, digest=None, on_epoch=None):
    if label == {KILLED!r}:
        def killing_fit(ckpt, record, fit=fit):
            def hook(index, row):
                record(index, row)
                if index == 1:
                    os.kill(os.getpid(), signal.SIGKILL)
            return fit(ckpt, hook)
        return original(kind, label, config, killing_fit, digest, on_epoch)
    return original(kind, label, config, fit, digest, on_epoch)

training.train_model = train_model
nightly.nightly_benchmark(scale="smoke", fail_on_regression=False)
"""


def _child_env() -> dict:
    """This session's ephemeral Prefect API for the night's process (as tests/flows/test_flows.py)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return {**os.environ, "PREFECT_API_URL": server.api_url}


def _mtimes(paths) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in paths}


def test_killed_night_resumes_and_retrains_only_what_had_not_finished(monkeypatch, tmp_path):
    from flows import nightly, tracking

    home = Path(os.environ["SCIFLOW_HOME"])
    models = home / "models"
    journal = models / "trainings.jsonl"
    before = len(journal.read_text().splitlines()) if journal.exists() else 0
    killed = subprocess.run(
        [sys.executable, "-c", NIGHT], env=_child_env(), capture_output=True, text=True, timeout=1200
    )
    assert killed.returncode == -9, killed.stdout[-3000:] + killed.stderr[-3000:]
    lines = [json.loads(line) for line in journal.read_text().splitlines()[before:]]
    first = {e["label"]: e for e in lines}
    assert list(first) == ["fno", "tfno-r0.05"], "the kill did not land in the third model"
    # the linear stage uses the shipped DCDM network (operators/dcdm/weights): nothing of it to resume
    finished = _mtimes([Path(first[label]["checkpoint"]) for label in first])
    [orphan] = tracking.find_runs("attributes.status = 'RUNNING' and tags.`sciflow.stage` = 'nightly'")

    monkeypatch.setattr(nightly, "STAGES", {s: nightly.STAGES[s] for s in STAGES})
    state = nightly.nightly_benchmark(scale="smoke", fail_on_regression=False, return_state=True)
    assert state.is_completed(), state.message
    rerun = [json.loads(line) for line in journal.read_text().splitlines()[before + len(lines) :]]
    counts = {e["label"]: (e["resumed_from"], e["epochs_trained"]) for e in rerun}
    assert counts == {
        "fno": (2, 0),  # finished: reused
        "tfno-r0.05": (2, 0),
        KILLED: (1, 1),  # resumed after its checkpoint
        "mg-tfno-r0.05": (0, 2),
        "mg-tfno-r0.02": (0, 2),
        "tfno-joint-r0.05": (0, 2),
        "mg-tfno-l2-r0.02": (0, 2),
    }
    assert _mtimes(map(Path, finished)) == finished  # no finished checkpoint was written again
    run = tracking.client().get_run(orphan.info.run_id)
    assert run.info.status == "KILLED"  # the killed night's MLflow run, ended by the rerun
    parent = tracking.find_runs(f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'")[0]
    generated = tracking.find_runs(
        f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`sciflow.stage` = 'generate-dataset'"
    )
    assert len(generated) == 2 and all(r.data.tags.get("sciflow.dataset.cached") == "true" for r in generated)

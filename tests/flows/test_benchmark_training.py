"""Benchmark trainings (flows/benchmarks/training.py): a checkpoint at a path fixed by kind, config
and data; a finished model is reused (0 epochs), an interrupted one resumes, another code version
retrains; inside a flow run each training is a named task run. The whole night killed and rerun:
tests/system/test_nightly_resume.py."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import fno_config, fno_pairs


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIFLOW_HOME", str(tmp_path))
    return tmp_path


def _fit(cfg, xy, interrupt_after: int | None = None):
    from operators.fno import train

    def fit(ckpt, on_epoch):
        def hook(epoch, row):
            on_epoch(epoch, row)
            if epoch == interrupt_after:
                raise KeyboardInterrupt("killed")  # after the epoch's checkpoint, as a SIGKILL would

        return train(cfg, xy, checkpoint=ckpt, on_epoch=hook)

    return fit


def _journal(home):
    return [json.loads(line) for line in (home / "models" / "trainings.jsonl").read_text().splitlines()]


def test_path_is_fixed_by_kind_config_and_data(home):
    from flows.benchmarks.training import checkpoint_path
    from operators.checkpoint import config_key

    cfg = fno_config(3)
    path = checkpoint_path("operator", cfg, "ab" * 32)
    assert path == home / "models" / f"operator-{config_key(cfg)}-{'ab' * 6}" / "checkpoint.pt"
    assert checkpoint_path("operator", cfg, "ab" * 32) == path  # deterministic
    assert checkpoint_path("operator", fno_config(4), "ab" * 32) != path
    assert checkpoint_path("operator", cfg, "cd" * 32) != path
    assert checkpoint_path("node", cfg) == home / "models" / f"node-{config_key(cfg)}" / "checkpoint.pt"


def test_finished_model_is_reused_and_interrupted_one_resumes(home):
    from flows.benchmarks.training import train_model

    cfg, xy = fno_config(3), fno_pairs()
    first = train_model("operator", "fno", cfg, _fit(cfg, xy), digest="0" * 64)
    assert (first.resumed_from, first.epochs_trained, len(first.history)) == (0, 3, 3)
    assert first.seconds > 0

    again = train_model("operator", "fno", cfg, _fit(cfg, xy), digest="0" * 64)
    assert (again.resumed_from, again.epochs_trained) == (3, 0)
    assert again.history == first.history and again.seconds == first.seconds  # what training took, kept
    for a, b in zip(first.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(a, b)

    other = fno_config(3).model_copy(update={"seed": 7})
    with pytest.raises(KeyboardInterrupt):
        train_model("operator", "seed7", other, _fit(other, xy, interrupt_after=1), digest="0" * 64)
    resumed = train_model("operator", "seed7", other, _fit(other, xy), digest="0" * 64)
    assert (resumed.resumed_from, resumed.epochs_trained, len(resumed.history)) == (1, 2, 3)
    clean = train_model("operator", "seed7-clean", other, _fit(other, xy), digest="1" * 64)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in clean.history]  # as if never killed

    journal = _journal(home)
    assert [(e["label"], e["resumed_from"], e["epochs_trained"]) for e in journal] == [
        ("fno", 0, 3),
        ("fno", 3, 0),
        ("seed7", 1, 2),  # the interrupted call wrote no line
        ("seed7-clean", 0, 3),
    ]


def test_another_code_version_retrains(home, monkeypatch):
    from flows.benchmarks import training

    cfg, xy = fno_config(2), fno_pairs()
    training.train_model("operator", "fno", cfg, _fit(cfg, xy))
    monkeypatch.setattr(training, "code_version", lambda: "another-commit")
    retrained = training.train_model("operator", "fno", cfg, _fit(cfg, xy))
    assert (retrained.resumed_from, retrained.epochs_trained) == (0, 2)
    meta = json.loads((retrained.checkpoint.parent / "trained.json").read_text())
    assert meta["code_version"] == "another-commit"


def test_code_version_names_the_commit_and_uncommitted_changes():
    from flows.benchmarks.training import code_version
    from flows.tracking import git_commit

    version = code_version()
    assert version.split("+")[0] == git_commit().removesuffix("-dirty")
    assert ("+" in version) == git_commit().endswith("-dirty")


def test_inside_a_flow_run_each_training_is_a_named_task_run(home):
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.benchmarks.training import train_model

    cfg, xy = fno_config(2), fno_pairs()

    @flow(name="train-in-a-flow")
    def night():
        return train_model("operator", "fno", cfg, _fit(cfg, xy)).epochs_trained

    state = night(return_state=True)
    assert state.result() == 2

    async def names():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
        return {r.name: r.state.type.value for r in runs}

    assert asyncio.run(names()) == {"train-operator-fno": "COMPLETED"}

"""Benchmark trainings as Prefect tasks with checkpoints: a killed run resumes, a finished model is reused.

    trained = train_model("operator", "fno", cfg, lambda ckpt, on_epoch: train(cfg, xy, checkpoint=ckpt,
                          on_epoch=on_epoch), digest=ref.digest)

Every model a benchmark trains goes through :func:`train_model`. Its checkpoint (written after
every epoch by :func:`operators.training.fit`, atomically) lives at a path fixed by what
determines the model, :func:`checkpoint_path`:
``$SCIFLOW_HOME/models/<kind>-<config key>[-<dataset digest[:12]>]/checkpoint.pt``. A rerun after a
crash therefore reuses every model whose training finished (0 epochs retrained) and resumes the
interrupted one from its last checkpoint; :func:`operators.training.fit` restores weights,
optimizer, history and RNG states, so the result is the one an uninterrupted run gives.

Beside the checkpoint, ``trained.json`` records the code version that trained it (git commit, plus
a digest of uncommitted changes; ``$SCIFLOW_GIT_COMMIT`` in an image) and the wall seconds and peak
memory spent so far. A checkpoint of another code version is not resumed but trained afresh: a
benchmark measures the code it runs. Each call appends one line to
``$SCIFLOW_HOME/models/trainings.jsonl`` (label, checkpoint, epochs found, epochs trained) and logs
the same, which is how a resumed night shows what it retrained.

Inside a Prefect flow run each training is a task run (``train-<kind>-<label>``); outside one
(plain library use) the same code runs directly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from data.io import write_text

from ..settings import sciflow_home
from . import PeakRSS, progress_logger

#: ``fit(checkpoint, on_epoch) -> (model, history)``: the training call, resuming from ``checkpoint``
Fit = Callable[[Path, Callable[[int, dict], None]], tuple[Any, list[dict]]]

JOURNAL = "trainings.jsonl"


@dataclass
class Trained:
    """A model from :func:`train_model` and what it took.

    Attributes:
        model, history: what the training call returned (the history includes resumed epochs).
        checkpoint: where its checkpoint is.
        resumed_from: epochs already in the checkpoint when the call started (0: trained from scratch).
        epochs_trained: epochs this call trained (0: the finished model was reused).
        seconds: wall seconds of the training, summed over the calls that trained it.
        peak_mib: peak resident-memory growth during training (the largest over those calls).
    """

    model: Any
    history: list[dict]
    checkpoint: Path
    resumed_from: int
    epochs_trained: int
    seconds: float
    peak_mib: float


def checkpoint_path(kind: str, config: BaseModel, digest: str | None = None) -> Path:
    """``$SCIFLOW_HOME/models/<kind>-<config key>[-<digest[:12]>]/checkpoint.pt``: the same for the same
    model kind, training config (:func:`operators.checkpoint.config_key`) and dataset."""
    from operators.checkpoint import config_key

    name = f"{kind}-{config_key(config)}" + (f"-{digest[:12]}" if digest else "")
    return sciflow_home() / "models" / name / "checkpoint.pt"


@functools.cache
def code_version() -> str:
    """The git commit of this checkout, ``+<digest>`` of its uncommitted changes to tracked files
    when there are any; ``flows.tracking.git_commit()`` (``$SCIFLOW_GIT_COMMIT`` in an image, else
    ``unknown``) without a work tree."""
    from .. import tracking

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=here)
        if head.returncode == 0 and head.stdout.strip():
            diff = subprocess.run(
                ["git", "diff", "HEAD", "--no-ext-diff", "--binary"], capture_output=True, timeout=30, cwd=here
            ).stdout
            dirty = f"+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else ""
            return head.stdout.strip() + dirty
    except (OSError, subprocess.SubprocessError):
        pass
    return tracking.git_commit()


def _epochs_in(ckpt: Path) -> int:
    if not ckpt.exists():
        return 0
    from operators import load_checkpoint

    return int(load_checkpoint(ckpt).get("epoch", 0))


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _train(kind: str, label: str, ckpt: Path, fit: Fit, on_epoch: Callable[[int, dict], None] | None) -> Trained:
    log = progress_logger()
    meta_path = ckpt.with_name("trained.json")
    version = code_version()
    meta = _read_meta(meta_path)
    if ckpt.exists() and meta.get("code_version") != version:
        log(
            f"{label}: checkpoint {ckpt} was written by code version {meta.get('code_version', 'unknown')}, "
            f"this is {version}: training afresh"
        )
        ckpt.unlink()
        meta = {}
    resumed_from = _epochs_in(ckpt)
    prior_seconds, prior_peak = float(meta.get("seconds", 0.0)), float(meta.get("peak_mib", 0.0))
    trained_here: set[int] = set()
    t0 = time.perf_counter()

    with PeakRSS() as mem:

        def record(index: int, row: dict) -> None:  # after each checkpoint: what training took so far
            trained_here.add(index)
            write_text(
                meta_path,
                json.dumps(
                    {
                        "code_version": version,
                        "label": label,
                        "seconds": prior_seconds + time.perf_counter() - t0,
                        "peak_mib": max(prior_peak, mem.peak_mib),
                    }
                ),
                durable=False,
            )
            if on_epoch is not None:
                on_epoch(index, row)

        model, history = fit(ckpt, record)
    epochs = _epochs_in(ckpt)
    if trained_here:  # the last write, with the whole call's time and memory
        seconds, peak = prior_seconds + time.perf_counter() - t0, max(prior_peak, mem.peak_mib)
        write_text(
            meta_path,
            json.dumps({"code_version": version, "label": label, "seconds": seconds, "peak_mib": peak}),
            durable=False,
        )
    else:  # reused as it was
        seconds, peak = prior_seconds, prior_peak
    done = epochs - resumed_from
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kind": kind,
        "label": label,
        "checkpoint": str(ckpt),
        "resumed_from": resumed_from,
        "epochs_trained": done,
        "epochs": epochs,
        "code_version": version,
    }
    with open(ckpt.parent.parent / JOURNAL, "a") as fh:  # one short line: an atomic append
        fh.write(json.dumps(entry) + "\n")
    log(
        f"{label}: {done} epochs trained"
        + (f" (resumed after epoch {resumed_from} of {epochs})" if resumed_from else "")
        + f"; checkpoint {ckpt}"
    )
    return Trained(model, history, ckpt, resumed_from, done, seconds, peak)


@functools.cache
def _train_task():
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    # the checkpoint is the cache; the model stays in memory (never pickled into result storage)
    return task(name="train-model", task_run_name="train-{kind}-{label}", cache_policy=NO_CACHE, persist_result=False)(
        _train
    )


def train_model(
    kind: str,
    label: str,
    config: BaseModel,
    fit: Fit,
    digest: str | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> Trained:
    """Train (or resume, or reuse) one model through ``fit(checkpoint, on_epoch)`` with its checkpoint at
    :func:`checkpoint_path` ``(kind, config, digest)``; a Prefect task run inside a flow run.

    Args:
        kind: the model kind (``operator``, ``hard``, ``node``, ...), the first part of the folder name.
        label: the model's name in the benchmark (task run name, logs, journal).
        config: the full training config (its key names the checkpoint).
        fit: the training call; it must pass both arguments on (``checkpoint=``, ``on_epoch=``).
        digest: the training dataset's digest, when the model learns from a stored dataset.
        on_epoch: called for every history row after its checkpoint, as by ``fit``.
    """
    from prefect.context import FlowRunContext

    ckpt = checkpoint_path(kind, config, digest)
    if FlowRunContext.get() is None:
        return _train(kind, label, ckpt, fit, on_epoch)
    return _train_task()(kind, label, ckpt, fit, on_epoch)

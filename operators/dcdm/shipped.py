"""The DCDM network shipped with the project: trained once, committed, checked on every load.

``operators/dcdm/weights/dcdm-<dim>d.pt`` is a checkpoint in the common format (kind, config,
weights; no optimizer state) and ``dcdm-<dim>d.json`` its manifest::

    {"file": "dcdm-2d.pt", "sha256": "...", "bytes": ..., "config": {...training config...},
     "data_sha256": "...(the training right-hand sides)...", "command": "...how it was made...",
     "train_seconds": ..., "recorded": {"64/grf": 57, ...}}

:func:`load_shipped` refuses weights whose SHA-256 differs from the manifest's, and weights
trained for another dimension or filter count than asked for, naming what differs.
:func:`write_shipped` writes both files (atomically) from a training checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.errors import CheckpointError
from data.io import atomic_path

from ..checkpoint import load_checkpoint, save_checkpoint
from .train import DCDMTrainConfig, rebuild, training_rhs

WEIGHTS = Path(__file__).parent / "weights"
#: the most a shipped checkpoint may weigh (it lives in git)
MAX_BYTES = 2 * 2**20


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest_path(dim: int = 2, folder: str | Path = WEIGHTS) -> Path:
    return Path(folder) / f"dcdm-{dim}d.json"


def manifest(dim: int = 2, folder: str | Path = WEIGHTS) -> dict[str, Any]:
    """The shipped model's manifest; a missing one names the file and how to make it."""
    path = manifest_path(dim, folder)
    if not path.exists():
        raise CheckpointError(
            f"no shipped {dim}D DCDM model ({path} missing): train one with --retrain, or make it with "
            "`sciflow ship-dcdm`"
        )
    return json.loads(path.read_text())


def load_shipped(
    dim: int = 2, filters: int | None = None, device: torch.device | str | None = None, folder: str | Path = WEIGHTS
) -> torch.nn.Module:
    """The shipped ``dim``-D network in eval mode on ``device`` (default CPU).

    Raises:
        CheckpointError: the weights' SHA-256 differs from the manifest's (changed or truncated
            file), or they were trained for another dimension or filter count than ``dim`` /
            ``filters`` (None: any); the message names the values that differ.
    """
    info = manifest(dim, folder)
    path = Path(folder) / info["file"]
    if not path.exists():
        raise CheckpointError(f"the shipped DCDM weights {path} named by {manifest_path(dim, folder)} are missing")
    digest = sha256(path)
    if digest != info["sha256"]:
        raise CheckpointError(
            f"shipped DCDM weights {path}: SHA-256 {digest} differs from the manifest's {info['sha256']} "
            "(the file was changed or truncated); restore it from git, or train afresh with --retrain"
        )
    ckpt = load_checkpoint(path, kind="dcdm")
    cfg = ckpt["config"]
    wrong = [
        f"{name}: trained for {cfg.get(name)!r}, asked for {want!r}"
        for name, want in (("dim", dim), ("filters", filters))
        if want is not None and cfg.get(name) != want
    ]
    if wrong:
        raise CheckpointError(f"shipped DCDM weights {path} do not fit: {'; '.join(wrong)}")
    model = rebuild(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device or "cpu").eval()


def data_digest(cfg: DCDMTrainConfig) -> str:
    """SHA-256 of the training right-hand sides a config generates (float32, C order)."""
    B = training_rhs(cfg.system(), cfg.ritz_m, cfg.theta, cfg.n_samples, cfg.seed)
    return hashlib.sha256(np.ascontiguousarray(B).tobytes()).hexdigest()


def write_shipped(
    checkpoint: str | Path,
    *,
    command: str,
    recorded: dict[str, int],
    folder: str | Path = WEIGHTS,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Ship a finished training checkpoint: its config and weights to ``dcdm-<dim>d.pt``, the
    manifest beside it (SHA-256, data digest, command, ``recorded`` iteration counts). Refuses a
    result over :data:`MAX_BYTES`. Returns the manifest's path."""
    ckpt = load_checkpoint(checkpoint, kind="dcdm")
    cfg = DCDMTrainConfig.model_validate(ckpt["config"])
    state = {"kind": "dcdm", "config": ckpt["config"], "model": ckpt["model"]}
    buffer = io.BytesIO()
    torch.save(state, buffer)  # sized before anything is written: a refusal leaves the shipped files as they were
    size = buffer.tell()
    if size > MAX_BYTES:
        raise CheckpointError(f"the DCDM weights take {size} bytes, over the {MAX_BYTES} a shipped model may weigh")
    history = ckpt.get("history", [])
    digest = data_digest(cfg)  # the slow part (a Lanczos run), also before any write
    pt = save_checkpoint(state, Path(folder) / f"dcdm-{cfg.dim}d.pt")
    info = {
        "file": pt.name,
        "sha256": sha256(pt),
        "bytes": pt.stat().st_size,
        "config": ckpt["config"],
        "data_sha256": digest,
        "command": command,
        "train_seconds": round(sum(h.get("seconds", 0.0) + h.get("data_seconds", 0.0) for h in history), 1),
        "final_loss": history[-1]["loss"] if history else None,
        "recorded": recorded,
        **(extra or {}),
    }
    path = manifest_path(cfg.dim, folder)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(info, indent=2) + "\n")
    return path


__all__ = ["MAX_BYTES", "WEIGHTS", "data_digest", "load_shipped", "manifest", "sha256", "write_shipped"]

"""The one checkpoint format of every learned model: written atomically, read weights-only.

A checkpoint is a dict that ``torch.load(path, weights_only=True)`` reads (tensors and plain
containers only, so loading runs no pickled code)::

    format      1
    kind        the model kind, a name of :data:`operators.registry.KINDS` ("operator", "dcdm", "hard", "node")
    config      the full typed training config as JSON (it rebuilds the network)
    context     what else the network's constructor needs (e.g. ``periodic``, the hard PDE), JSON or tensors
    epoch       epochs done (for step budgets also ``step``, optimizer steps done)
    model       weights (the state dict without neuraloperator's ``_metadata`` entry)
    optimizer, scheduler (None without one), history (the per-epoch rows so far)
    rng         the RNG streams' states (``torch`` and the task's generators), so a resume replays nothing
    world_size  data-parallel ranks that wrote it

:func:`save_checkpoint` writes through :func:`data.io.atomic_path` (temporary name, fsync, rename,
fsync of the folder): a crash never leaves a partial file under the real name and the previous
checkpoint survives a failed write. :func:`load_checkpoint` refuses an unreadable file, a foreign
one, one of another kind or one written for another configuration with :class:`CheckpointError`
naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from data.errors import CheckpointError
from data.io import atomic_path, fsync_dir, sweep_temporaries

FORMAT = 1
#: the keys every checkpoint has (the others depend on the loop's state)
REQUIRED = ("kind", "config", "model")


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path (also a ``FileNotFoundError``)."""


def config_json(config: BaseModel) -> dict:
    """The config as stored in a checkpoint (pydantic's JSON mode: tuples become lists)."""
    return config.model_dump(mode="json")


def config_key(config: BaseModel) -> str:
    """16 hex digits of the SHA-256 of the config's JSON: names checkpoint folders."""
    return hashlib.sha256(json.dumps(config_json(config), sort_keys=True).encode()).hexdigest()[:16]


def weights(model: torch.nn.Module) -> dict:
    """The state dict without neuraloperator's ``_metadata`` entry (not a tensor; breaks strict loads)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_metadata")}


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and durably; returns the path.

    A killed writer's temporaries in the folder are swept first. On an ``OSError`` (disk full,
    quota) the previous checkpoint is unchanged, no temporary is left, and the error carries a
    note naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(dict(state), fh)
    fsync_dir(path.parent)
    return path


def _differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """``"a.b: <saved> in the checkpoint, <wanted> here"`` for every leaf that differs."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for k in sorted(set(saved) | set(wanted)):
            out += _differences(saved.get(k), wanted.get(k), f"{prefix}{k}.")
        return out
    if saved != wanted:
        return [f"{prefix.rstrip('.')}: {saved!r} in the checkpoint, {wanted!r} here"]
    return []


def check_config(ckpt: Mapping[str, Any], config: BaseModel, path: str | Path) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` was written for exactly ``config``; the message
    names the differing top-level fields and every differing value."""
    saved, wanted = ckpt.get("config"), config_json(config)
    if saved == wanted:
        return
    saved_d = saved if isinstance(saved, dict) else {}
    top = sorted(k for k in set(saved_d) | set(wanted) if saved_d.get(k) != wanted.get(k))
    detail = "; ".join(_differences(saved_d, wanted))
    raise CheckpointError(
        f"checkpoint {path} was written for another configuration (differs in: {top}: {detail}); "
        "use the checkpoint's config, or another checkpoint path to train this one afresh"
    )


def load_checkpoint(path: str | Path, kind: str | None = None, config: BaseModel | None = None) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs) onto the CPU.

    ``kind`` / ``config``: refuse a checkpoint of another model kind / written for another config.

    Raises:
        CheckpointNotFoundError: no file at ``path`` (also a ``FileNotFoundError``).
        CheckpointError: unreadable (truncated, a pickle with code, not a torch file), not a
            sciflow checkpoint, another kind, or another configuration.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {path} (train first: training writes one after every epoch)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, a pickle with code, not a torch file
        raise CheckpointError(f"unreadable checkpoint {path}: {exc}") from exc
    missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(
            f"{path} is not a sciflow training checkpoint (missing {missing}); it was written by "
            "another program or an older sciflow: retrain, or point at the right file"
        )
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"checkpoint {path} holds a {ckpt['kind']!r} model, not a {kind!r} one")
    if config is not None:
        check_config(ckpt, config, path)
    return ckpt


__all__ = [
    "FORMAT",
    "CheckpointError",
    "CheckpointNotFoundError",
    "check_config",
    "config_json",
    "config_key",
    "load_checkpoint",
    "save_checkpoint",
    "weights",
]

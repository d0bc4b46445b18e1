"""Every kind of trained model by name, and the one way back from a checkpoint to a model.

    model = model_from_checkpoint("checkpoint.pt")               # any kind, on the CPU, eval mode
    model = model_from_checkpoint(path, kind="hard", device=default_device())

:data:`KINDS` maps the ``kind`` a checkpoint stores (:mod:`operators.checkpoint`) to the function
that builds that kind's untrained network from the stored config and context:

* ``"operator"``: FNO / TFNO / MG-TFNO (:mod:`operators.fno`), context ``periodic``;
* ``"dcdm"``: the DCDM search-direction network (:mod:`operators.dcdm`);
* ``"hard"``: soft / hard-constraint / MoE models (:mod:`operators.hard`), context ``pde`` (stored
  in the checkpoint; pass a :class:`~operators.hard.HardPDE` to use another);
* ``"node"``: neural ODEs (:mod:`operators.node`), context ``d_in``, ``d_out``, ``encode``;
* ``"sde"``: neural SDEs (:mod:`operators.node.sde`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from data.errors import CheckpointError, InputError

from .checkpoint import load_checkpoint
from .dcdm.train import rebuild as rebuild_dcdm
from .fno.train import rebuild as rebuild_operator
from .hard.train import rebuild as rebuild_hard
from .node.sde import rebuild as rebuild_sde
from .node.train import rebuild as rebuild_node

#: model kind -> ``build(config_json, **context) -> untrained nn.Module``
KINDS: dict[str, Callable[..., torch.nn.Module]] = {
    "operator": rebuild_operator,
    "dcdm": rebuild_dcdm,
    "hard": rebuild_hard,
    "node": rebuild_node,
    "sde": rebuild_sde,
}


def model_from_checkpoint(
    path: str | Path, *, kind: str | None = None, device: torch.device | str | None = None, **context: Any
) -> torch.nn.Module:
    """Rebuild the model of a checkpoint (weights-only load) in eval mode.

    Args:
        kind: refuse a checkpoint of another kind (default: any kind of :data:`KINDS`).
        device: where to put the model (default: the CPU; pass
            :func:`operators.device.default_device` to use a GPU when there is one).
        context: constructor arguments beyond the config, over those the checkpoint stores
            (e.g. ``periodic=False``, ``pde=...``).

    Raises:
        CheckpointError: unreadable, not a sciflow checkpoint, another kind, an unknown kind, or a
            config / weights that no longer build (the message names what).
        InputError: a context argument the kind does not take.
    """
    ckpt = load_checkpoint(path, kind)
    build = KINDS.get(ckpt["kind"])
    if build is None:
        raise CheckpointError(f"checkpoint {path} holds a {ckpt['kind']!r} model; known kinds: {sorted(KINDS)}")
    takes = [p for p in inspect.signature(build).parameters if p != "config"]
    unknown = sorted(set(context) - set(takes))
    if unknown:
        raise InputError(f"{unknown} do(es) not apply to a {ckpt['kind']!r} model (it takes {takes})")
    try:
        model = build(ckpt["config"], **{**(ckpt.get("context") or {}), **context})
        model.load_state_dict(ckpt["model"])
    except (ValidationError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not rebuild its {ckpt['kind']!r} model: {exc}") from exc
    if device is not None:
        model.to(device)
    return model.eval()


__all__ = ["KINDS", "model_from_checkpoint"]

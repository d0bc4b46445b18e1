"""Training neural operators on stored PDE datasets (a small loop; neuraloperator's Trainer logs to W&B only).

Recipe of Kossaifi et al. (TMLR 2024, Section 4) and the FNO benchmarks: AdamW, a step learning-rate
schedule, relative L2 (``LpLoss(d=2, p=2)``) or H1 (``H1Loss(d=2)``) training loss from
neuraloperator, metrics once per epoch. A checkpoint (model, optimizer, scheduler, history) is written
atomically after every epoch; :func:`train` resumes from it. A non-finite loss stops training with
:class:`TrainingDivergedError` and the last good checkpoint stays in place.

Pairs: ``x = w(t0)``, ``y = w(t0 + T)`` from a ``navier_stokes`` dataset (first and last stored time),
or ``x = a``, ``y = u`` from a ``darcy`` dataset; tensors ``(N, 1, n, n)`` float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from data.io import sweep_temporaries, temporary_name

from ..device import default_device
from .models import OperatorModelConfig, build_model


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or inf."""


class CheckpointMismatchError(ValueError):
    """A checkpoint was written for a different configuration."""


class OperatorTrainConfig(BaseModel):
    """Everything that determines a training run (its hash names the checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: OperatorModelConfig = OperatorModelConfig()
    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(3e-3, gt=0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0, le=1.0)
    step_size: int = Field(10, ge=1, description="epochs between learning-rate decays")
    gamma: float = Field(0.5, gt=0, le=1.0, description="learning-rate decay factor")
    loss: Literal["l2", "h1"] = "h1"
    seed: int = Field(0, ge=0)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def pairs(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Input/target tensors ``(N, 1, n, n)`` float32 from a loaded dataset split."""
    family = getattr(dataset.spec, "family", None)
    if family == "navier_stokes":
        w = dataset["w"]
        if w.shape[1] < 2:
            raise ValueError("navier_stokes dataset needs at least two stored times")
        x, y = w[:, 0], w[:, -1]
    elif family == "darcy":
        x, y = dataset["a"], dataset["u"]
    else:
        raise ValueError(f"operator training supports 'navier_stokes' and 'darcy' datasets, got {family!r}")
    if len(x) == 0:
        raise ValueError(f"the {dataset.split!r} split is empty")
    as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).unsqueeze(1)  # noqa: E731
    return as_t(x), as_t(y)


def losses(periodic: bool = True):
    """Relative L2 and H1 losses summed over the batch (one output channel: per-sample sums).
    ``periodic=False`` uses one-sided differences at the boundary for H1."""
    from neuralop.losses import H1Loss, LpLoss

    return {"l2": LpLoss(d=2, p=2, reduction="sum"),
            "h1": H1Loss(d=2, reduction="sum", periodic_in_x=periodic, periodic_in_y=periodic)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 32,
             periodic: bool = True) -> dict[str, float]:
    """Mean relative L2 and H1 errors over the samples (neuraloperator's LpLoss / H1Loss);
    one output channel (the losses flatten only space, so channels would be summed)."""
    if y.shape[1] != 1:
        raise ValueError(f"evaluate expects one output channel, got {y.shape[1]}")
    model.eval()
    device = next(model.parameters()).device
    fns, tot = losses(periodic), {"l2": 0.0, "h1": 0.0}
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = model(xb)
        for k, fn in fns.items():
            tot[k] += float(fn(out, yb))
    return {k: v / len(x) for k, v in tot.items()}


def weights(model: torch.nn.Module) -> dict:
    """The state dict without neuraloperator's ``_metadata`` entry (not a tensor; breaks strict loads)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_metadata")}


def _save_atomic(obj: dict, path: Path) -> None:
    """Write to a temporary name, fsync, rename, fsync the folder: never a partial file under ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path.parent)  # litter of a writer killed mid-save
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:  # disk full, quota, I/O error: say which file and what survived
        exc.add_note(f"while writing checkpoint {path}; the previous checkpoint (if any) is unchanged")
        raise
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no pickled code runs)."""
    try:
        ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, a pickle with code, not a torch file
        raise CheckpointMismatchError(f"unreadable checkpoint {path}: {exc}") from exc
    missing = [k for k in ("config", "model") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointMismatchError(f"{path} is not a sciflow training checkpoint (missing {missing})")
    return ckpt


def _check_config(ckpt: dict, config: OperatorTrainConfig, path: Path) -> None:
    saved = ckpt.get("config")
    if saved != config.model_dump(mode="json"):
        diff = sorted(k for k in set(saved or {}) | set(config.model_dump(mode="json"))
                      if (saved or {}).get(k) != config.model_dump(mode="json").get(k))
        raise CheckpointMismatchError(f"checkpoint {path} was written for another configuration (differs in: {diff})")


def train(
    config: OperatorTrainConfig,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    test_xy: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    periodic: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``config.model`` on ``train_xy``; resume from ``checkpoint`` if it exists.

    Args:
        train_xy, test_xy: ``(x, y)`` tensors ``(N, C, n, n)``; test errors are measured each epoch.
        checkpoint: file written atomically after every epoch (model, optimizer, scheduler, history).
        periodic: False for non-periodic data (refuses ``mg-tfno``).
        on_epoch: ``(epoch, row)`` callback; ``row`` has ``loss``, ``test_l2``, ``test_h1``, ``lr``,
            ``seconds`` (this epoch's training time), ``peak_mib``.

    Returns:
        ``(model, history)``.

    Raises:
        TrainingDivergedError: non-finite loss (the last checkpoint is the last good epoch).
        CheckpointMismatchError: the checkpoint belongs to another configuration.
        ValueError: channel count or resolution the model cannot take.
    """
    x, y = train_xy
    if x.ndim != 4 or y.ndim != 4 or len(x) != len(y):
        raise ValueError(f"train inputs/targets must be (N, C, n, n) of equal N, got {tuple(x.shape)} / {tuple(y.shape)}")
    if len(x) == 0 or (test_xy is not None and len(test_xy[0]) == 0):
        raise ValueError(f"the {'train' if len(x) == 0 else 'test'} data are empty (0 samples)")
    if x.shape[1] != config.model.in_channels or y.shape[1] != config.model.out_channels:
        raise ValueError(f"data has {x.shape[1]} input / {y.shape[1]} output channels; the model config "
                         f"expects {config.model.in_channels} / {config.model.out_channels}")
    torch.manual_seed(config.seed)
    device = default_device()
    model = build_model(config.model, periodic=periodic).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.step_size, gamma=config.gamma)
    history: list[dict] = []
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        ckpt = load_checkpoint(path)
        _check_config(ckpt, config, path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history, start = list(ckpt["history"]), int(ckpt["epoch"])
    loss_fn = losses(periodic)[config.loss]
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(start):  # same shuffles as an uninterrupted run
        torch.randperm(len(x), generator=gen)
    for epoch in range(start + 1, config.epochs + 1):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0, total = time.perf_counter(), 0.0
        for i in range(0, len(x), config.batch_size):
            idx = perm[i:i + config.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = loss_fn(model(xb), yb)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"non-finite training loss ({float(loss)}) in epoch {epoch}; the last good checkpoint "
                    f"({'epoch ' + str(epoch - 1) if epoch > 1 else 'none'}) is kept. Lower lr (now {config.lr}).")
            opt.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            opt.step()
            total += float(loss.detach())
        seconds = time.perf_counter() - t0
        lr = opt.param_groups[0]["lr"]  # the rate this epoch used
        sched.step()
        if not (math.isfinite(total) and all(torch.isfinite(p).all() for p in model.parameters())):
            raise TrainingDivergedError(
                f"non-finite weights after epoch {epoch}; not checkpointed, the last good checkpoint "
                f"({'epoch ' + str(epoch - 1) if epoch > 1 else 'none'}) is kept. Lower lr (now {config.lr}).")
        row = {"epoch": epoch, "loss": total / len(x), "lr": lr, "seconds": seconds}
        if device.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if test_xy is not None:
            err = evaluate(model, *test_xy, periodic=periodic)
            row.update(test_l2=err["l2"], test_h1=err["h1"])
        history.append(row)
        if path is not None:
            _save_atomic({"config": config.model_dump(mode="json"), "epoch": epoch, "model": weights(model),
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history}, path)
        if on_epoch is not None:
            on_epoch(epoch, row)
    return model, history


def model_from_checkpoint(path: str | Path, periodic: bool = True) -> torch.nn.Module:
    """Rebuild the model of a checkpoint (weights-only load)."""
    ckpt = load_checkpoint(path)
    cfg = OperatorTrainConfig.model_validate(ckpt["config"])
    model = build_model(cfg.model, periodic=periodic)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def input_domain_ratio(model: torch.nn.Module, n: int) -> float:
    """Fraction of the full ``n x n`` domain one sample of the network sees (patch incl. padding)."""
    if hasattr(model, "patch_shape"):
        h, w = model.patch_shape(n, n)
        return h * w / (n * n)
    return 1.0


__all__ = ["CheckpointMismatchError", "OperatorTrainConfig", "TrainingDivergedError", "evaluate", "input_domain_ratio",
           "load_checkpoint", "model_from_checkpoint", "pairs", "train"]

"""Training neural operators on stored PDE datasets (neuraloperator's Trainer logs to W&B only).

Recipe of Kossaifi et al. (TMLR 2024, Section 4) and the FNO benchmarks: AdamW, a step learning-rate
schedule, relative L2 (``LpLoss(d=2, p=2)``) or H1 (``H1Loss(d=2)``) training loss from
neuraloperator, metrics once per epoch. :class:`OperatorTask` is this recipe for the one training
loop (:func:`operators.training.fit`: checkpoints, resume, divergence guard, data parallelism);
:func:`train` runs it in one process.

Pairs: ``x = w(t0)``, ``y = w(t0 + T)`` from a ``navier_stokes`` dataset (first and last stored time),
or ``x = a``, ``y = u`` from a ``darcy`` dataset; tensors ``(N, 1, n, n)`` float32.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from data.errors import InputError

from ..checkpoint import config_key
from ..training import OnEpoch, TrainingTask, World, fit
from .models import OperatorModelConfig, build_model


class OperatorTrainConfig(BaseModel):
    """Everything that determines a training run (its hash names the checkpoint)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: OperatorModelConfig = OperatorModelConfig()
    epochs: int = Field(default=20, ge=1, le=10_000)
    batch_size: int = Field(default=16, ge=1, le=4096)
    lr: float = Field(default=3e-3, gt=0, le=1.0)
    weight_decay: float = Field(default=1e-4, ge=0, le=1.0)
    step_size: int = Field(default=10, ge=1, description="epochs between learning-rate decays")
    gamma: float = Field(default=0.5, gt=0, le=1.0, description="learning-rate decay factor")
    loss: Literal["l2", "h1"] = "h1"
    seed: int = Field(default=0, ge=0)

    def key(self) -> str:
        return config_key(self)


def pairs(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Input/target tensors ``(N, 1, n, n)`` float32 from a loaded dataset split."""
    family = getattr(dataset.spec, "family", None)
    if family == "navier_stokes":
        w = dataset["w"]
        if w.shape[1] < 2:
            raise InputError("navier_stokes dataset needs at least two stored times")
        x, y = w[:, 0], w[:, -1]
    elif family == "darcy":
        x, y = dataset["a"], dataset["u"]
    else:
        raise InputError(f"operator training supports 'navier_stokes' and 'darcy' datasets, got {family!r}")
    if len(x) == 0:
        raise InputError(f"the {dataset.split!r} split is empty")

    def as_t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).unsqueeze(1)

    return as_t(x), as_t(y)


def losses(periodic: bool = True) -> dict[str, Any]:
    """Relative L2 and H1 losses summed over the batch (one output channel: per-sample sums).
    ``periodic=False`` uses one-sided differences at the boundary for H1."""
    from neuralop.losses import H1Loss, LpLoss

    return {
        "l2": LpLoss(d=2, p=2, reduction="sum"),
        "h1": H1Loss(d=2, reduction="sum", periodic_in_x=periodic, periodic_in_y=periodic),
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 32, periodic: bool = True
) -> dict[str, float]:
    """Mean relative L2 and H1 errors over the samples (neuraloperator's LpLoss / H1Loss);
    one output channel (the losses flatten only space, so channels would be summed)."""
    if y.shape[1] != 1:
        raise InputError(f"evaluate expects one output channel, got {y.shape[1]}")
    model.eval()
    device = next(model.parameters()).device
    fns, tot = losses(periodic), {"l2": 0.0, "h1": 0.0}
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out = model(xb)
        for k, fn in fns.items():
            tot[k] += float(fn(out, yb))
    return {k: v / len(x) for k, v in tot.items()}


class OperatorTask(TrainingTask[OperatorTrainConfig]):
    """FNO / TFNO / MG-TFNO training for :func:`operators.training.fit`.

    Each epoch shuffles the samples with one generator seeded from ``config.seed`` and takes
    ``batch_size`` of them per optimizer step (the *global* batch: with ``world.size`` ranks each
    takes every ``size``-th sample of it, and the gradients DDP averages are the global batch's
    mean gradient). Rows: ``epoch``, ``loss`` (mean per sample), ``lr`` (the rate this epoch used),
    ``seconds`` (this epoch's training time, the slowest rank's), ``peak_mib`` (CUDA), and
    ``test_l2``, ``test_h1`` when there are test data.
    """

    kind = "operator"
    distributed = True

    def __init__(
        self,
        config: OperatorTrainConfig,
        train_xy: tuple[torch.Tensor, torch.Tensor],
        test_xy: tuple[torch.Tensor, torch.Tensor] | None = None,
        periodic: bool = True,
    ):
        x, y = train_xy
        if x.ndim != 4 or y.ndim != 4 or len(x) != len(y):
            raise InputError(
                f"train inputs/targets must be (N, C, n, n) of equal N, got {tuple(x.shape)} / {tuple(y.shape)}"
            )
        if len(x) == 0 or (test_xy is not None and len(test_xy[0]) == 0):
            raise InputError(f"the {'train' if len(x) == 0 else 'test'} data are empty (0 samples)")
        if x.shape[1] != config.model.in_channels or y.shape[1] != config.model.out_channels:
            raise InputError(
                f"data has {x.shape[1]} input / {y.shape[1]} output channels; the model config "
                f"expects {config.model.in_channels} / {config.model.out_channels}"
            )
        self.config, self.epochs = config, config.epochs
        self.x, self.y, self.test, self.periodic = x, y, test_xy, periodic
        self.loss_fn = losses(periodic)[config.loss]

    def context(self) -> dict:
        return {"periodic": self.periodic}

    def build(self, device: torch.device, world: World) -> torch.nn.Module:
        cfg = self.config
        if world.size > 1:
            rest = len(self.x) % cfg.batch_size
            if cfg.batch_size % world.size or 0 < rest < world.size:
                raise InputError(
                    f"batch_size (the global batch, {cfg.batch_size}) must be divisible by the "
                    f"{world.size} ranks, and the last batch ({rest} of {len(self.x)} samples) "
                    "must give every rank a sample"
                )
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, periodic=self.periodic).to(device)

    def optimizers(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        cfg = self.config
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)

    def train_epoch(self, epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer, world: World) -> list[dict]:
        x, y, size = self.x, self.y, self.config.batch_size
        device = next(net.parameters()).device
        net.train()
        perm = torch.randperm(len(x), generator=self.gen)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0, total = time.perf_counter(), 0.0
        for i in range(0, len(x), size):
            batch = perm[i : i + size]
            idx = world.shard(batch)
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = self.loss_fn(net(xb), yb)
            if not world.all_finite(loss):
                raise self.diverged(f"non-finite training loss ({float(loss.detach())}) in epoch {epoch}", epoch)
            opt.zero_grad(set_to_none=True)
            (loss / (len(batch) / world.size)).backward()  # DDP averages over ranks: the global batch's mean
            opt.step()
            total += float(loss.detach())
        seconds = time.perf_counter() - t0
        (total,), (seconds,) = world.sum([total]), world.max([seconds])
        row = {"epoch": epoch, "loss": total / len(x), "lr": opt.param_groups[0]["lr"], "seconds": seconds}
        if device.type == "cuda":
            row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return [row]

    def evaluate(self, model: torch.nn.Module, world: World) -> dict:
        if self.test is None:
            return {}
        xt, yt = self.test
        if world.size == 1:
            err = evaluate(model, xt, yt, periodic=self.periodic)
            return {"test_l2": err["l2"], "test_h1": err["h1"]}
        shard = slice(world.rank, None, world.size)  # this rank's test samples; errors summed over ranks
        n = len(xt[shard])
        err = evaluate(model, xt[shard], yt[shard], periodic=self.periodic) if n else {"l2": 0.0, "h1": 0.0}
        l2, h1 = world.sum([err["l2"] * n, err["h1"] * n])
        return {"test_l2": l2 / len(xt), "test_h1": h1 / len(xt)}


def train(
    config: OperatorTrainConfig,
    train_xy: tuple[torch.Tensor, torch.Tensor],
    test_xy: tuple[torch.Tensor, torch.Tensor] | None = None,
    checkpoint: str | Path | None = None,
    periodic: bool = True,
    on_epoch: OnEpoch | None = None,
) -> tuple[torch.nn.Module, list[dict]]:
    """Train ``config.model`` on ``train_xy`` in this process; resume from ``checkpoint`` if it exists.

    Args:
        train_xy, test_xy: ``(x, y)`` tensors ``(N, C, n, n)``; test errors are measured each epoch.
        checkpoint: file written atomically after every epoch (see :mod:`operators.checkpoint`).
        periodic: False for non-periodic data (refuses ``mg-tfno``).
        on_epoch: ``(epoch, row)`` callback; ``row`` as in :class:`OperatorTask`.

    Returns:
        ``(model, history)``.

    Raises:
        TrainingDivergedError: non-finite loss or weights (the last checkpoint is the last good epoch).
        CheckpointError: the checkpoint belongs to another configuration or kind, or is unreadable.
        InputError: channel count or shapes the model cannot take.
    """
    return fit(OperatorTask(config, train_xy, test_xy, periodic), checkpoint, on_epoch)


def rebuild(config: Mapping[str, Any], periodic: bool = True) -> torch.nn.Module:
    """The untrained network of a stored ``config`` (for :func:`operators.registry.model_from_checkpoint`)."""
    return build_model(OperatorTrainConfig.model_validate(config).model, periodic=periodic)


def input_domain_ratio(model: torch.nn.Module, n: int) -> float:
    """Fraction of the full ``n x n`` domain one sample of the network sees (patch incl. padding)."""
    patch_shape = getattr(model, "patch_shape", None)
    if patch_shape is not None:
        h, w = patch_shape(n, n)
        return h * w / (n * n)
    return 1.0


__all__ = [
    "OperatorTask",
    "OperatorTrainConfig",
    "evaluate",
    "input_domain_ratio",
    "losses",
    "pairs",
    "rebuild",
    "train",
]

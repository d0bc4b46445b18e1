"""Neural-ODE training with solver-error regularization, and NFE / time measurement.

Pal, Edelman & Rackauckas, ICML 2023: the training objective is the task loss plus a weight times
the regularizer :func:`solvers.ode.integrate` returns (``w_start`` at the first epoch, decaying
linearly to ``w_end`` at the last; the paper's MNIST schedule 2.5 -> 1.0). :class:`NodeTask` is
this recipe for the one training loop (:func:`operators.training.fit`: checkpoints, resume,
divergence guard); the tasks are in :mod:`operators.node.tasks`.

Per epoch: training loss and time, training NFE, and on held-out data the prediction NFE,
prediction seconds and the task metric (accuracy or final-state MSE).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from data.errors import InputError
from solvers.ode.regularize import REGULARIZERS, LocalDt, Regularizer

from ..checkpoint import config_key
from ..device import module_device, record, synchronize
from ..training import OnEpoch, TrainingTask, World, fit
from .model import ODEModel
from .tasks import Task, TaskName, load_task


class ODETrainConfig(BaseModel):
    """One training run (typed: a Prefect form; bad values fail naming the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: TaskName = "digits"
    regularizer: Regularizer = "none"
    w_start: float = Field(
        default=2.5, ge=0, description="regularization weight at the first epoch (paper, MNIST: 2.5)"
    )
    w_end: float = Field(default=1.0, ge=0, description="weight at the last epoch (linear decay; paper: 1.0)")
    epochs: int = Field(default=8, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=100_000)
    lr: float = Field(default=1e-2, gt=0, le=1.0)
    width: int = Field(default=32, ge=1, le=4096, description="ODE state size")
    hidden: int = Field(default=64, ge=1, le=4096, description="hidden units of the vector field")
    rtol: float = Field(default=1e-6, gt=0, lt=1)
    atol: float = Field(default=1e-6, gt=0, lt=1)
    max_steps: int = Field(default=5000, ge=10)
    seed: int = Field(default=0, ge=0)
    dtype: Literal["float64", "float32"] = Field(
        default="float64", description="dtype of the model, the data and the integration"
    )
    adjoint: bool = Field(
        default=False, description="gradients of the solve by the adjoint method (torchdiffeq.odeint_adjoint)"
    )
    local_dt: LocalDt = Field(
        default="controller",
        description="local-unbiased's step: the adaptive controller's accepted step at t_reg (the paper's), "
        "or torchdiffeq's initial-step heuristic ('initial', LocalRegNeuralDE.jl's shortcut)",
    )

    @model_validator(mode="after")
    def _adjoint_needs_a_local_regularizer(self) -> ODETrainConfig:
        if self.adjoint and self.regularizer == "global":
            raise ValueError(
                "regularizer='global' differentiates through every step of the solve, which adjoint=True "
                "does not keep; use a local regularizer (or none) with the adjoint"
            )
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def key(self) -> str:
        return config_key(self)


def evaluate(model: ODEModel, task: Task, cfg: ODETrainConfig) -> dict:
    """Prediction NFE, seconds and metric on the held-out split (one batch, no regularizer), on the
    model's device (the inputs are copied there before the clock starts)."""
    model.eval()
    model.func.nfe = 0
    device = module_device(model)
    x = task.x_test.to(device, next(model.parameters()).dtype)  # once per call, outside the timed prediction
    with torch.no_grad():
        t0 = time.perf_counter()
        pred, _ = model(x, cfg)
        synchronize(device)
        seconds = time.perf_counter() - t0
    record("node prediction", device)
    return {
        "predict_nfe": model.func.nfe,
        "predict_seconds": seconds,
        task.metric_name: task.metric(pred.cpu(), task.y_test),
    }


def as_target(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Targets in the model's ``dtype`` (class labels stay integers)."""
    return y.to(dtype) if y.is_floating_point() else y


class NodeTask(TrainingTask[ODETrainConfig]):
    """Neural-ODE training for :func:`operators.training.fit`: Adam on the task loss plus the
    epoch's weight times the regularizer; one generator (seeded from ``seed``) shuffles the samples
    and draws the regularizer's random times / steps. Rows: ``epoch``, ``loss``, ``reg``,
    ``weight``, ``train_seconds``, ``train_nfe`` (mean per batch), ``predict_nfe``,
    ``predict_seconds`` and the task metric."""

    kind = "node"

    def __init__(self, config: ODETrainConfig):
        if config.regularizer not in REGULARIZERS:
            raise InputError(f"unknown regularizer {config.regularizer!r}; choose one of {tuple(REGULARIZERS)}")
        self.config, self.epochs = config, config.epochs

    def context(self) -> dict:
        return {"d_in": self.task.d_in, "d_out": self.task.d_out, "encode": self.task.encode}

    def build(self, device: torch.device, world: World) -> ODEModel:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.task = load_task(cfg.task, cfg.seed)
        t = self.task
        model = ODEModel(t.d_in, t.d_out, cfg.width if t.encode else t.d_in, cfg.hidden, t.encode, config=cfg)
        model = model.to(cfg.torch_dtype)
        self.x, self.y = t.x_train.to(device, cfg.torch_dtype), as_target(t.y_train, cfg.torch_dtype).to(device)
        return model.to(device)

    def train_epoch(self, epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer, world: World) -> list[dict]:
        cfg, task = self.config, self.task
        assert isinstance(net, ODEModel)
        w = cfg.w_start + (cfg.w_end - cfg.w_start) * ((epoch - 1) / max(cfg.epochs - 1, 1))
        n = self.x.shape[0]
        net.train()
        perm = torch.randperm(n, generator=self.gen).to(self.x.device)
        t0, nfe, total, total_reg = time.perf_counter(), 0, 0.0, 0.0
        for i in range(0, n, cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            net.func.nfe = 0
            try:
                out, reg = net(self.x[b], cfg, cfg.regularizer, self.gen)
            except FloatingPointError as err:  # the vector field returned NaN / inf
                raise self.diverged(f"{err} in epoch {epoch}", epoch) from err
            loss = task.loss(out, self.y[b])
            self.step(loss + (w * reg if cfg.regularizer != "none" else 0.0), opt, epoch, world)
            nfe += net.func.nfe
            total += loss.item() * len(b)
            total_reg += float(reg.detach()) * len(b)
        return [
            {
                "epoch": epoch,
                "loss": total / n,
                "reg": total_reg / n,
                "weight": w,
                "train_seconds": time.perf_counter() - t0,
                "train_nfe": nfe / ((n + cfg.batch_size - 1) // cfg.batch_size),
            }
        ]

    def evaluate(self, model: torch.nn.Module, world: World) -> dict:
        assert isinstance(model, ODEModel)
        return evaluate(model, self.task, self.config)


def train(
    cfg: ODETrainConfig,
    checkpoint: str | Path | None = None,
    on_epoch: OnEpoch | None = None,
    device: torch.device | str | None = None,
) -> tuple[ODEModel, list[dict]]:
    """Train one model; resume from ``checkpoint`` if it exists (written atomically after every
    epoch). Returns it (on ``device``) and the per-epoch history (rows as in :class:`NodeTask`).

    ``device``: where the model, the data and the integration live (default
    :func:`operators.device.default_device`); the dtype is ``cfg.dtype`` on every device."""
    model, history = fit(NodeTask(cfg), checkpoint, on_epoch, device=device)
    assert isinstance(model, ODEModel)
    return model, history


def rebuild(config: Mapping[str, Any], d_in: int, d_out: int, encode: bool) -> ODEModel:
    """The untrained model of a stored ``config`` (for :func:`operators.registry.model_from_checkpoint`);
    ``d_in``, ``d_out``, ``encode``: the task's, stored in the checkpoint's context."""
    cfg = ODETrainConfig.model_validate(config)
    return ODEModel(d_in, d_out, cfg.width if encode else d_in, cfg.hidden, encode, config=cfg).to(cfg.torch_dtype)


__all__ = ["NodeTask", "ODETrainConfig", "evaluate", "rebuild", "train"]

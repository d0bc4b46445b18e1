"""Train and evaluate soft / hard / MoE models on PETSc-generated trajectories.

Training is physics-only, as in the reference (``configs/training/ds.yaml``: PDE, initial and
boundary losses with weight 1, ``interior_loss_weight: 0``, Adam 1e-3): the solution data is never
seen in training, only the initial conditions. Gradients are clipped at 1.0 (reference optimizer).
The test error is the relative L2 against the PETSc trajectories on the whole space-time grid.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from data.errors import InputError

from ..device import module_device, record, synchronize
from ..training import OnEpoch, TrainingTask, World, fit
from .layer import ConstraintSolveError
from .model import HardConstraintModel, HardModelConfig, loss_terms
from .pdes import HardPDE, pde_from_state, pde_state


class HardTrainConfig(BaseModel):
    """Training budget and optimizer (shown as a form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: HardModelConfig = HardModelConfig()
    steps: int = Field(default=200, ge=1, le=10_000_000, description="optimizer steps")
    batch_size: int = Field(default=4, ge=1, le=4096, description="initial conditions per step")
    lr: float = Field(default=1e-3, gt=0, le=1.0, description="Adam learning rate (reference 1e-3)")
    clip: float = Field(default=1.0, gt=0, le=1e6, description="gradient-norm clipping (reference 1.0)")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(default=50, ge=1, le=10_000_000, description="steps between checkpoints")


def _check_data(pde: HardPDE, u0: torch.Tensor, what: str) -> None:
    if u0.ndim != len(pde.grid) or tuple(u0.shape[1:]) != pde.grid[1:]:
        raise InputError(
            f"{what}: initial conditions must be (N, {', '.join(map(str, pde.grid[1:]))}) for the "
            f"{pde.name} grid {pde.grid}; got {tuple(u0.shape)}"
        )
    if len(u0) == 0:
        raise InputError(f"{what}: no samples")
    if not torch.isfinite(u0).all():
        raise InputError(f"{what}: initial conditions contain NaN or inf")


class HardTask(TrainingTask[HardTrainConfig]):
    """Soft / hard / MoE training for :func:`operators.training.fit` on a step budget: an epoch is
    ``checkpoint_every`` optimizer steps (the last one what is left of ``steps``), so a checkpoint
    lands every ``checkpoint_every`` steps and after the last. Each step draws ``batch_size``
    initial conditions (one generator) and fresh constraint points (another), clips the gradient
    norm at ``clip`` and takes an Adam step.

    History rows (every ``log_every`` steps and the last; ``counter = "step"``): ``step``, ``loss``,
    ``pde``, ``conditions``, ``seconds`` (median seconds per step in this process so far),
    ``step_seconds`` (this step's) and, for hard models, ``lm_iterations`` and ``condition``.
    """

    kind = "hard"
    counter = "step"

    def __init__(self, config: HardTrainConfig, pde: HardPDE, u0_train: torch.Tensor, log_every: int = 25):
        _check_data(pde, u0_train, "train")
        if log_every < 1:
            raise InputError(f"log_every must be >= 1, got {log_every}")
        self.config, self.pde, self.u0_train, self.log_every = config, pde, u0_train, log_every
        self.epochs = math.ceil(config.steps / config.checkpoint_every)

    def last_step(self, epoch: int) -> int:
        return min(epoch * self.config.checkpoint_every, self.config.steps)

    def position(self, epoch: int) -> str:
        return f"step {self.last_step(epoch)}"

    def progress(self, epoch: int) -> dict:
        return {"step": self.last_step(epoch)}

    def context(self) -> dict:
        return {"pde": pde_state(self.pde)}

    def build(self, device: torch.device, world: World) -> HardConstraintModel:
        torch.manual_seed(self.config.seed)
        model = HardConstraintModel(self.config.model, self.pde, seed=self.config.seed).to(device)
        self.u0 = self.u0_train.to(device)  # once: every step's batch is drawn on the device
        self.times: list[float] = []
        return model

    def optimizers(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, None]:
        return torch.optim.Adam(model.parameters(), lr=self.config.lr), None

    def generators(self) -> dict[str, torch.Generator]:
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self.sample_gen = torch.Generator().manual_seed(self.config.seed + 1)
        return {"batches": self.gen, "points": self.sample_gen}

    def train_epoch(self, epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer, world: World) -> list[dict]:
        config, pde, rows = self.config, self.pde, []
        for step in range(self.last_step(epoch - 1) + 1, self.last_step(epoch) + 1):
            net.train()
            idx = torch.randint(len(self.u0), (config.batch_size,), generator=self.gen)
            u0 = self.u0[idx.to(self.u0.device)]
            t0 = time.perf_counter()
            try:
                out = net(u0, generator=self.sample_gen)
            except ConstraintSolveError as err:
                raise self.diverged(f"constraint solve failed at step {step}: {err}", epoch) from err
            terms = loss_terms(pde, out.u, u0.double(), config.model.loss)
            loss = terms["pde"] + terms["conditions"]
            if not world.all_finite(loss):
                raise self.diverged(f"non-finite training loss ({float(loss.detach())}) at step {step}", epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), config.clip)
            opt.step()
            synchronize(self.u0.device)  # the step's queued device work belongs to its time
            self.times.append(time.perf_counter() - t0)
            if not all(torch.isfinite(p).all() for p in net.parameters()):
                raise self.diverged(f"non-finite weights after step {step} (not checkpointed)", epoch)
            if step % self.log_every == 0 or step == config.steps:
                row = {
                    "step": step,
                    "loss": loss.item(),
                    "pde": terms["pde"].item(),
                    "conditions": terms["conditions"].item(),
                    "seconds": statistics.median(self.times),
                    "step_seconds": self.times[-1],
                }
                if out.info is not None:
                    row.update(lm_iterations=out.info.iterations, condition=out.info.condition)
                rows.append(row)
        return rows


def train(
    config: HardTrainConfig,
    pde: HardPDE,
    u0_train: torch.Tensor,
    checkpoint: str | Path | None = None,
    on_epoch: OnEpoch | None = None,
    log_every: int = 25,
    device: torch.device | str | None = None,
) -> tuple[HardConstraintModel, list[dict]]:
    """Train on initial conditions ``u0_train (N, *space)``; resume from ``checkpoint`` if it exists
    (written every ``config.checkpoint_every`` steps and after the last). ``device``: where the
    model, the data and the constraint solves live (default
    :func:`operators.device.default_device`; the experts spread over the visible GPUs when there
    are several, see :meth:`HardConstraintModel.spread`); ``u0_train`` is moved there once.

    Returns ``(model, history)`` with the rows of :class:`HardTask`; ``on_epoch(step, row)`` is
    called for each row once the checkpoint after it is written.

    Raises:
        TrainingDivergedError: non-finite loss or weights, or a failed constraint solve (nothing is
            checkpointed past the last good step).
        CheckpointError: the checkpoint was written for another configuration or kind.
        InputError: data that does not fit the PDE's grid.
    """
    model, history = fit(HardTask(config, pde, u0_train, log_every), checkpoint, on_epoch, device=device)
    assert isinstance(model, HardConstraintModel)
    return model, history


def rebuild(config: Mapping[str, Any], pde: HardPDE | Mapping[str, Any]) -> HardConstraintModel:
    """The untrained model of a stored ``config`` for ``pde`` (a :class:`HardPDE` or the checkpoint's
    :func:`~operators.hard.pdes.pde_state`), for :func:`operators.registry.model_from_checkpoint`."""
    cfg = HardTrainConfig.model_validate(config)
    return HardConstraintModel(cfg.model, pde if isinstance(pde, HardPDE) else pde_from_state(pde), seed=cfg.seed)


@torch.no_grad()
def evaluate(
    model: HardConstraintModel, u0: torch.Tensor, u_true: torch.Tensor, batch_size: int = 8, seed: int = 1234
) -> dict:
    """Test metrics against reference trajectories ``u_true (N, *grid)``.

    ``rel_l2``: mean over samples of ``||u - u_true|| / ||u_true||`` on the whole grid;
    ``residual``: RMS non-dimensional PDE residual on held-out residual points (not sampled as
    constraint points in that forward pass), ``residual_held_out`` the fraction of residual points
    held out; when the constraint points cover every residual point (each expert's block at its
    capacity) the residual is over all of them and the fraction is 0; ``conditions``: RMS initial/boundary violation;
    ``infer_seconds``: wall time per sample of the forward pass (incl. the constraint solve);
    on the model's device (the batches are copied there, outside the clock);
    ``jump_mean`` / ``jump_max``: disagreement of neighbouring experts at their interfaces
    (:meth:`Router.interface_jump`), relative to the RMS of ``u_true``.
    """
    pde = model.pde
    _check_data(pde, u0, "test")
    if tuple(u_true.shape) != (len(u0), *pde.grid):
        raise InputError(f"test trajectories must be {(len(u0), *pde.grid)}, got {tuple(u_true.shape)}")
    model.eval()
    device = module_device(model)
    record("hard evaluation", device)
    gen = torch.Generator().manual_seed(seed)
    errs, res, cond, jumps, jmax = [], [], [], [], []
    elapsed, held, batches = 0.0, 0, 0
    mask = torch.as_tensor(pde.residual_mask())
    where = torch.nonzero(mask).squeeze(1)
    scale = float(u_true.double().pow(2).mean().sqrt())
    for i in range(0, len(u0), batch_size):
        ub, tb = u0[i : i + batch_size].to(device), u_true[i : i + batch_size].double().to(device)
        t0 = time.perf_counter()
        out = model(ub, generator=gen)
        synchronize(device)
        elapsed += time.perf_counter() - t0
        u = out.u
        batches += 1
        errs += ((u - tb).flatten(1).norm(dim=1) / tb.flatten(1).norm(dim=1)).tolist()
        r = pde.full_residual(u)  # (B, P_res) over the residual points in order
        keep = torch.ones(len(where), dtype=torch.bool)
        if out.points is not None:
            pos = torch.searchsorted(where, out.points.reshape(-1).cpu())
            keep[pos] = False
        held += int(keep.sum())
        # every residual point a constraint point (a block at its capacity): the residual there is
        # the constraint solve's own, reported over all points with residual_held_out = 0
        res.append((r[:, keep.to(r.device)] if keep.any() else r).pow(2).mean().item())
        cond.append(pde.condition_violation(u, ub.double()).pow(2).mean().item())
        if out.w is not None and model.router is not None:
            jm, jx = model.router.interface_jump(out.phi, out.w)
            jumps.append(jm / scale)
            jmax.append(jx / scale)
    row = {
        "rel_l2": float(np.mean(errs)),
        "residual": float(np.sqrt(np.mean(res))),
        "conditions": float(np.sqrt(np.mean(cond))),
        "infer_seconds": elapsed / len(u0),
        "residual_held_out": held / (batches * len(where)),
    }
    if jumps:
        row.update(jump_mean=float(np.mean(jumps)), jump_max=float(np.max(jmax)))
    return row

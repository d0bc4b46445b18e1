"""Train and evaluate soft / hard / MoE models on PETSc-generated trajectories.

Training is physics-only, as in the reference (``configs/training/ds.yaml``: PDE, initial and
boundary losses with weight 1, ``interior_loss_weight: 0``, Adam 1e-3): the solution data is never
seen in training, only the initial conditions. Gradients are clipped at 1.0 (reference optimizer).
The test error is the relative L2 against the PETSc trajectories on the whole space-time grid.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from operators.device import default_device
from operators.fno.train import (CheckpointMismatchError, TrainingDivergedError, _save_atomic, load_checkpoint,
                                 weights)

from .layer import ConstraintSolveError
from .model import HardConstraintModel, HardModelConfig, loss_terms
from .pdes import HardPDE


class HardTrainConfig(BaseModel):
    """Training budget and optimizer (shown as a form in the Prefect UI)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: HardModelConfig = HardModelConfig()
    steps: int = Field(200, ge=1, le=10_000_000, description="optimizer steps")
    batch_size: int = Field(4, ge=1, le=4096, description="initial conditions per step")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate (reference 1e-3)")
    clip: float = Field(1.0, gt=0, le=1e6, description="gradient-norm clipping (reference 1.0)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(50, ge=1, le=10_000_000, description="steps between checkpoints")


def _check_data(pde: HardPDE, u0: torch.Tensor, what: str) -> None:
    if u0.ndim != len(pde.grid) or tuple(u0.shape[1:]) != pde.grid[1:]:
        raise ValueError(f"{what}: initial conditions must be (N, {', '.join(map(str, pde.grid[1:]))}) for the "
                         f"{pde.name} grid {pde.grid}; got {tuple(u0.shape)}")
    if len(u0) == 0:
        raise ValueError(f"{what}: no samples")
    if not torch.isfinite(u0).all():
        raise ValueError(f"{what}: initial conditions contain NaN or inf")


def train(
    config: HardTrainConfig,
    pde: HardPDE,
    u0_train: torch.Tensor,
    checkpoint: str | Path | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    log_every: int = 25,
) -> tuple[HardConstraintModel, list[dict]]:
    """Train on initial conditions ``u0_train (N, *space)``; resume from ``checkpoint`` if it exists.

    Returns ``(model, history)``; each history row (every ``log_every`` steps and the last) has
    ``step``, ``loss``, ``pde``, ``conditions``, ``seconds`` (median seconds per step so far),
    ``step_seconds`` (this step's) and,
    for hard models, ``lm_iterations`` and ``condition``.

    Raises:
        TrainingDivergedError: non-finite loss or weights (nothing is checkpointed past the last good step).
        CheckpointMismatchError: the checkpoint was written for another configuration.
        ValueError: data that does not fit the PDE's grid.
    """
    _check_data(pde, u0_train, "train")
    torch.manual_seed(config.seed)
    device = default_device()
    model = HardConstraintModel(config.model, pde, seed=config.seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    history: list[dict] = []
    start, times = 0, []
    path = Path(checkpoint) if checkpoint is not None else None
    cfg_json = config.model_dump(mode="json")
    if path is not None and path.exists():
        ckpt = load_checkpoint(path)
        if ckpt.get("config") != cfg_json:
            raise CheckpointMismatchError(f"checkpoint {path} was written for another configuration")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        history, start = list(ckpt["history"]), int(ckpt["step"])
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(start):  # same batches and points as an uninterrupted run
        torch.randint(len(u0_train), (config.batch_size,), generator=gen)
    sample_gen = torch.Generator().manual_seed(config.seed + 1)
    u0_train = u0_train.to(device)
    for step in range(start + 1, config.steps + 1):
        model.train()
        idx = torch.randint(len(u0_train), (config.batch_size,), generator=gen)
        u0 = u0_train[idx.to(device)]
        t0 = time.perf_counter()
        try:
            out = model(u0, generator=sample_gen)
        except ConstraintSolveError as err:
            raise TrainingDivergedError(f"constraint solve failed at step {step}: {err}") from err
        terms = loss_terms(pde, out.u, u0.double(), config.model.loss)
        loss = terms["pde"] + terms["conditions"]
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"non-finite training loss ({float(loss)}) at step {step}; the last good "
                                        f"checkpoint is kept. Lower lr (now {config.lr}).")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        times.append(time.perf_counter() - t0)
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDivergedError(f"non-finite weights after step {step}; not checkpointed")
        if step % log_every == 0 or step == config.steps:
            row = {"step": step, "loss": loss.item(), "pde": terms["pde"].item(),
                   "conditions": terms["conditions"].item(), "seconds": statistics.median(times),
                   "step_seconds": times[-1]}
            if out.info is not None:
                row.update(lm_iterations=out.info.iterations, condition=out.info.condition)
            history.append(row)
            if on_step is not None:
                on_step(step, row)
        if path is not None and (step % config.checkpoint_every == 0 or step == config.steps):
            _save_atomic({"config": cfg_json, "step": step, "model": weights(model),
                          "optimizer": opt.state_dict(), "history": history}, path)
    return model, history


@torch.no_grad()
def evaluate(model: HardConstraintModel, u0: torch.Tensor, u_true: torch.Tensor, batch_size: int = 8,
             seed: int = 1234) -> dict:
    """Test metrics against reference trajectories ``u_true (N, *grid)``.

    ``rel_l2``: mean over samples of ``||u - u_true|| / ||u_true||`` on the whole grid;
    ``residual``: RMS non-dimensional PDE residual on held-out residual points (not sampled as
    constraint points in that forward pass); ``conditions``: RMS initial/boundary violation;
    ``infer_seconds``: wall time per sample of the forward pass (incl. the constraint solve);
    ``jump_mean`` / ``jump_max``: disagreement of neighbouring experts at their interfaces
    (:meth:`Router.interface_jump`), relative to the RMS of ``u_true``.
    """
    pde = model.pde
    _check_data(pde, u0, "test")
    if tuple(u_true.shape) != (len(u0), *pde.grid):
        raise ValueError(f"test trajectories must be {(len(u0), *pde.grid)}, got {tuple(u_true.shape)}")
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    errs, res, cond, jumps, jmax = [], [], [], [], []
    elapsed = 0.0
    mask = torch.as_tensor(pde.residual_mask())
    where = torch.nonzero(mask).squeeze(1)
    scale = float(u_true.double().pow(2).mean().sqrt())
    for i in range(0, len(u0), batch_size):
        ub, tb = u0[i:i + batch_size].to(device), u_true[i:i + batch_size].double().to(device)
        t0 = time.perf_counter()
        out = model(ub, generator=gen)
        elapsed += time.perf_counter() - t0
        u = out.u
        errs += ((u - tb).flatten(1).norm(dim=1) / tb.flatten(1).norm(dim=1)).tolist()
        r = pde.full_residual(u)  # (B, P_res) over the residual points in order
        keep = torch.ones(len(where), dtype=torch.bool)
        if out.points is not None:
            pos = torch.searchsorted(where, out.points.reshape(-1).cpu())
            keep[pos] = False
        res.append(r[:, keep.to(r.device)].pow(2).mean().item())
        cond.append(pde.condition_violation(u, ub.double()).pow(2).mean().item())
        if out.w is not None:
            jm, jx = model.router.interface_jump(out.phi, out.w)
            jumps.append(jm / scale)
            jmax.append(jx / scale)
    row = {"rel_l2": float(np.mean(errs)), "residual": float(np.sqrt(np.mean(res))),
           "conditions": float(np.sqrt(np.mean(cond))), "infer_seconds": elapsed / len(u0)}
    if jumps:
        row.update(jump_mean=float(np.mean(jumps)), jump_max=float(np.max(jmax)))
    return row


def model_from_checkpoint(path: str | Path, pde: HardPDE) -> HardConstraintModel:
    """Rebuild a trained model (weights-only load) for ``pde``."""
    ckpt = load_checkpoint(path)
    try:
        config = HardTrainConfig.model_validate(ckpt["config"])
    except Exception as exc:
        raise CheckpointMismatchError(f"checkpoint {path} has no valid hard-constraint config: {exc}") from exc
    model = HardConstraintModel(config.model, pde, seed=config.seed)
    model.load_state_dict(ckpt["model"])
    return model

"""Training the DCDM network (Kaneda et al., ICML 2023, Section 4.2).

Data (Section 4.2, "Training"): ``m`` Lanczos steps on the training matrix give Ritz pairs
(null-space Ritz values dropped); each training right-hand side is ``b = sum_j c_j v_j``,
normalised, with ``c_j ~ 9 N(0, 1)`` for the lowest ``m/2 + theta`` Ritz vectors and ``N(0, 1)``
for the rest, so the low end of the spectrum, which CG resolves slowest, dominates.

Loss (Eq. 9): ``mean_b || b - (f.b / f.A f) A f ||_2^2`` with ``f = f(b)``: the residual left
after one exact line search along the network's direction. Adam.

``theta`` is not stated for the 2D model in the paper; it is a config field (default ``m // 10``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from data.errors import InputError
from solvers.linear import GridSystem, ritz_pairs

from ..checkpoint import config_key
from ..training import OnEpoch, TrainingTask, World, fit
from .net import DCDMNet, MultilevelDCDMNet


class DCDMTrainConfig(BaseModel):
    """Everything that determines a trained DCDM model (its hash keys checkpoints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=64, ge=8, le=1024, description="training grid cells per side (even)")
    dim: Literal[2, 3] = 2
    bc: Literal["dirichlet", "neumann"] = "neumann"
    obstacle: Literal["none", "box", "disks"] = Field(default="disks", description="solid cells in the training matrix")
    obstacle_seed: int = Field(default=0, ge=0)
    ritz_m: int = Field(default=500, ge=8, le=20_000, description="Lanczos steps (Ritz vectors) for the data")
    theta: int | None = Field(default=None, ge=0, description="extra low Ritz vectors weighted 9x (default m // 10)")
    n_samples: int = Field(default=2000, ge=8, le=1_000_000, description="training right-hand sides")
    epochs: int = Field(default=8, ge=1, le=10_000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    filters: int = Field(default=16, ge=1, le=256)
    net: Literal["paper", "multilevel"] = Field(
        default="paper",
        description="'paper': one pooling level (the reference network); 'multilevel': a V-cycle with "
        "shared weights whose depth grows with the grid (not in the paper)",
    )
    levels: tuple[int, int, int] | None = Field(
        default=None,
        description="residual convs (before pooling, coarse, after); default (4, 6, 4) for 'paper', "
        "(2, 4, 2) per level for 'multilevel'",
    )
    seed: int = Field(default=0, ge=0)

    @field_validator("n")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"n must be even (the network halves the grid), got {v}")
        return v

    def key(self) -> str:
        return config_key(self)

    def network(self) -> DCDMNet | MultilevelDCDMNet:
        """The untrained network this config describes (seeded by the caller)."""
        if self.net == "multilevel":
            multilevel = MultilevelDCDMNet(self.dim, self.filters, self.levels or (2, 4, 2))
            multilevel.depth((self.n,) * self.dim)  # refuses a training grid it cannot pool
            return multilevel
        return DCDMNet(self.dim, self.filters, self.levels or (4, 6, 4))

    def system(self) -> GridSystem:
        if self.n % 2:
            raise InputError(f"n must be even (one pooling level), got {self.n}")
        return GridSystem.from_poisson(self.n, self.dim, self.bc, self.obstacle, self.obstacle_seed)


def training_rhs(system: GridSystem, m: int, theta: int | None, n_samples: int, seed: int = 0) -> np.ndarray:
    """``(n_samples, N)`` float32 right-hand sides from Ritz vectors (see module docstring)."""
    values, V = ritz_pairs(system, m, seed=seed)
    k = V.shape[1]
    theta = m // 10 if theta is None else theta
    heavy = min(k, m // 2 + theta)
    rng = np.random.default_rng(seed + 1)
    scale = np.ones(k)
    scale[:heavy] = 9.0
    C = rng.standard_normal((n_samples, k)) * scale
    B = C @ V.T
    B /= np.linalg.norm(B, axis=1, keepdims=True)
    return B.astype(np.float32)


def sparse_torch(system: GridSystem, dtype=torch.float32, device=None) -> torch.Tensor:
    """``A`` as a torch sparse CSR tensor (``A @ dense`` is differentiable in the dense factor)."""
    import warnings

    A = system.A
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return torch.sparse_csr_tensor(
            torch.as_tensor(A.indptr, dtype=torch.int64),
            torch.as_tensor(A.indices, dtype=torch.int64),
            torch.as_tensor(A.data, dtype=dtype),
            size=A.shape,
            device=device,
            check_invariants=True,
        )


def dcdm_loss(
    model: torch.nn.Module, b: torch.Tensor, A: torch.Tensor, shape: tuple[int, ...], fluid: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 9: ``mean || b - (f.b / f.Af) A f ||^2`` over the batch ``b`` of shape ``(B, N)``."""
    B = b.shape[0]
    f = model(b.reshape(B, 1, *shape)).reshape(B, -1)
    if fluid is not None:
        f = f * fluid
    Af = (A @ f.T).T
    alpha = (f * b).sum(1, keepdim=True) / (f * Af).sum(1, keepdim=True)
    return ((b - alpha * Af) ** 2).sum(1).mean()


class DCDMTask(TrainingTask[DCDMTrainConfig]):
    """DCDM training for :func:`operators.training.fit`: Adam on the loss of Eq. 9 over the Ritz
    right-hand sides, reshuffled each epoch from ``seed * 1000 + epoch - 1``. Rows: ``epoch``,
    ``loss`` (mean over the samples), ``seconds``; the first epoch's row also ``data_seconds`` (the
    Lanczos run and the right-hand sides)."""

    kind = "dcdm"

    def __init__(self, config: DCDMTrainConfig):
        self.config, self.epochs = config, config.epochs

    def build(self, device: torch.device, world: World) -> DCDMNet | MultilevelDCDMNet:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        system = cfg.system()
        t0 = time.perf_counter()
        B = torch.as_tensor(training_rhs(system, cfg.ritz_m, cfg.theta, cfg.n_samples, cfg.seed))
        self.data_seconds = time.perf_counter() - t0
        self.B = B.to(device)  # once: the batches are drawn on the device
        self.A = sparse_torch(system, device=device)
        self.fluid = (
            None if system.mask is None else torch.as_tensor(~system.mask.ravel(), dtype=torch.float32, device=device)
        )
        self.shape = system.shape
        return cfg.network().to(device)

    def train_epoch(self, epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer, world: World) -> list[dict]:
        cfg, B = self.config, self.B
        device = next(net.parameters()).device
        net.train()
        self.gen.manual_seed(cfg.seed * 1000 + epoch - 1)  # the same batches after a resume
        perm = torch.randperm(B.shape[0], generator=self.gen).to(device)
        t_ep, total = time.perf_counter(), 0.0
        for i in range(0, B.shape[0], cfg.batch_size):
            batch = B[perm[i : i + cfg.batch_size]]
            loss = dcdm_loss(net, batch, self.A, self.shape, self.fluid)
            if not world.all_finite(loss):
                raise self.diverged(f"non-finite training loss ({float(loss.detach())}) in epoch {epoch}", epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * batch.shape[0]
        row = {"epoch": epoch, "loss": total / B.shape[0], "seconds": time.perf_counter() - t_ep}
        if epoch == 1:
            row["data_seconds"] = self.data_seconds
        return [row]


def train(
    cfg: DCDMTrainConfig,
    checkpoint: str | Path | None = None,
    on_epoch: OnEpoch | None = None,
    device: torch.device | None = None,
) -> tuple[DCDMNet | MultilevelDCDMNet, list[dict]]:
    """Train from scratch, or resume from ``checkpoint`` (written atomically after every epoch), on
    ``device`` (default :func:`operators.device.default_device`).

    Returns the model (eval mode, on CPU) and the per-epoch history (rows as in :class:`DCDMTask`).
    """
    model, history = fit(DCDMTask(cfg), checkpoint, on_epoch, device=device)
    assert isinstance(model, DCDMNet | MultilevelDCDMNet)
    return model.cpu().eval(), history


def rebuild(config: Mapping[str, Any]) -> DCDMNet | MultilevelDCDMNet:
    """The untrained network of a stored ``config`` (for :func:`operators.registry.model_from_checkpoint`)."""
    return DCDMTrainConfig.model_validate(config).network()


__all__ = ["DCDMTask", "DCDMTrainConfig", "dcdm_loss", "rebuild", "sparse_torch", "train", "training_rhs"]

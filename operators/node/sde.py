"""Neural SDEs trained with local solver-error regularization (Pal, Edelman & Rackauckas, ICML 2023).

Task ``ou`` (generated here, exactly): a 2D Ornstein-Uhlenbeck process with a rotating drift,

    dX = -A X dt + sigma dW,   A = [[theta, -omega], [omega, theta]],

whose law at ``t = 1`` from ``X(0) = x0`` is Gaussian with mean ``expm(-A) x0`` and, since A is
a scaled rotation plus a multiple of the identity, isotropic variance
``sigma^2 (1 - exp(-2 theta)) / (2 theta)`` per coordinate (theta 0.5, omega 2, sigma 0.3).
The model, a drift MLP ``f(t, y)`` and a learned constant diagonal diffusion (additive noise), is
trained to reproduce that law: each step simulates ``paths`` paths per initial point with
torchsde's adaptive Euler-Maruyama (step doubling) and matches their sample mean and standard
deviation at ``t = 1`` to the exact ones (mean squared error). Test metric ``moment_error``: the
RMS error of the predicted mean and standard deviation over held-out initial points (the exact
moments are the data; no sampling noise in the targets).

Task ``digits`` (the paper's neural-SDE classification setting, scikit-learn's 8x8 digits as the
offline stand-in for MNIST, as in :mod:`operators.node.tasks`): a linear encoder 64 -> ``width``,
the neural SDE on [0, 1] in that latent space, a linear decoder to 10 logits; cross-entropy of
the logits averaged over ``paths`` sample paths per image. Only the final state matters, the
setting the method targets. Test metric ``accuracy`` (one path per test image).

The objective is the task loss plus a weight times :func:`solvers.ode.sde.integrate_sde`'s local
regularizer (the SDE counterpart of the ODE recipe in :mod:`operators.node.train`: weight
``w_start`` decaying linearly to ``w_end``). NFE: drift evaluations (``nfe_f``) of a prediction solve
without the regularizer, and per training step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from solvers.ode.sde import CountedSDE, SDERegularizer, integrate_sde

from ..checkpoint import config_key
from ..training import OnEpoch, TrainingTask, World, fit

THETA, OMEGA, SIGMA = 0.5, 2.0, 0.3


def ou_moments(x0: np.ndarray, t: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean ``(N, 2)`` and standard deviation ``(N, 2)`` of the OU process at ``t`` from ``x0 (N, 2)``."""
    c, s = math.cos(OMEGA * t), math.sin(OMEGA * t)
    rot = np.exp(-THETA * t) * np.array([[c, s], [-s, c]])  # expm(-A t)
    mean = x0 @ rot.T
    std = math.sqrt(SIGMA**2 * (1 - math.exp(-2 * THETA * t)) / (2 * THETA))
    return mean, np.full_like(mean, std)


class SDETrainConfig(BaseModel):
    """One neural-SDE training run (typed: a Prefect form; bad values fail naming the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: Literal["ou", "digits"] = Field(
        default="ou", description="ou: the 2D rotating Ornstein-Uhlenbeck law at t=1; digits: classification"
    )
    regularizer: SDERegularizer = "none"
    w_start: float = Field(default=10.0, ge=0, description="regularization weight at the first epoch")
    w_end: float = Field(default=10.0, ge=0, description="weight at the last epoch (linear decay)")
    epochs: int = Field(default=20, ge=1, le=10_000)
    steps_per_epoch: int = Field(default=20, ge=1, le=100_000)
    batch_size: int = Field(default=32, ge=1, le=4096, description="initial points per step")
    paths: int = Field(default=16, ge=1, le=4096, description="simulated paths per initial point (OU: >= 2)")
    lr: float = Field(default=1e-2, gt=0, le=1.0)
    hidden: int = Field(default=64, ge=1, le=4096, description="hidden units of the drift")
    width: int = Field(default=16, ge=1, le=4096, description="SDE state size of the digits task (latent)")
    rtol: float = Field(default=1e-3, gt=0, lt=1)
    atol: float = Field(default=1e-3, gt=0, lt=1)
    dt0: float = Field(default=0.1, gt=0, le=1.0, description="torchsde's first trial step")
    n_test: int = Field(default=256, ge=1, le=100_000)
    seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _paths(self) -> SDETrainConfig:
        if self.task == "ou" and self.paths < 2:
            raise ValueError(f"the ou task matches a standard deviation: paths must be >= 2, got {self.paths}")
        return self

    def key(self) -> str:
        return config_key(self)


class NeuralSDE(torch.nn.Module):
    """Itô SDE with additive diagonal noise: drift ``f(t, y) = MLP([y, t])``, diffusion
    ``g = diag(softplus(s))`` (torchsde's ``additive`` noise: ``g`` is ``(batch, d, d)``). Float64."""

    noise_type = "additive"
    sde_type = "ito"

    def __init__(self, d: int = 2, hidden: int = 64):
        super().__init__()
        self.drift = torch.nn.Sequential(
            torch.nn.Linear(d + 1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, d)
        ).double()
        self.log_sigma = torch.nn.Parameter(torch.full((d,), -1.0, dtype=torch.float64))

    def f(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(y.shape[0], 1)
        return self.drift(torch.cat([y, tt], dim=1))

    def g(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        sigma = torch.nn.functional.softplus(self.log_sigma)
        return torch.diag_embed(sigma).expand(y.shape[0], -1, -1)


#: task -> (input size, output size): the OU task has no encoder or decoder
TASK_DIMS: dict[str, tuple[int, int | None]] = {"ou": (2, None), "digits": (64, 10)}


class SDEModel(torch.nn.Module):
    """The neural SDE with its evaluation counter: ``sample(x0, paths)`` -> states at ``t = 1``.
    With ``d_out`` (the digits task) a linear encoder ``d_in -> d`` and decoder ``d -> d_out``
    surround it (:meth:`logits`)."""

    def __init__(self, hidden: int = 64, d_in: int = 2, d_out: int | None = None, d: int = 2):
        super().__init__()
        d = d if d_out is not None else d_in
        self.sde = CountedSDE(NeuralSDE(d, hidden))
        self.encoder = torch.nn.Linear(d_in, d).double() if d_out is not None else torch.nn.Identity()
        self.decoder = torch.nn.Linear(d, d_out).double() if d_out is not None else torch.nn.Identity()

    def sample(
        self,
        x0: torch.Tensor,
        paths: int,
        cfg: SDETrainConfig,
        regularizer: SDERegularizer = "none",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y1 (N, paths, d), R)``: ``paths`` simulated paths from each of the ``N`` points ``x0``
        (encoded first when the model has an encoder)."""
        y0 = self.encoder(x0).repeat_interleave(paths, dim=0)
        y1, reg = integrate_sde(
            self.sde, y0, 0.0, 1.0, regularizer, cfg.rtol, cfg.atol, dt0=cfg.dt0, generator=generator
        )
        return y1.reshape(len(x0), paths, -1), reg

    def moments(self, x0, paths, cfg, regularizer="none", generator=None):
        """Sample mean and standard deviation ``(N, 2)`` each at ``t = 1``, and the regularizer."""
        y1, reg = self.sample(x0, paths, cfg, regularizer, generator)
        return y1.mean(1), y1.std(1), reg

    def logits(self, x, paths, cfg, regularizer="none", generator=None):
        """Class logits ``(N, d_out)`` averaged over ``paths`` sample paths, and the regularizer."""
        y1, reg = self.sample(x, paths, cfg, regularizer, generator)
        return self.decoder(y1).mean(1), reg


def _points(n: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.as_tensor(rng.uniform(-2.0, 2.0, (n, 2)), dtype=torch.float64)


def evaluate(model: SDEModel, cfg: SDETrainConfig, x_test: torch.Tensor, target: torch.Tensor) -> dict:
    """Prediction NFE (drift evaluations of one adaptive solve of every test point, no
    regularizer) and its seconds. OU: 64 paths per point and ``moment_error``, the RMS of the
    predicted mean and standard deviation minus the exact ones. Digits: one path per image and
    ``accuracy``."""
    model.eval()
    model.sde.reset()
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    with torch.no_grad():
        t0 = time.perf_counter()
        if cfg.task == "digits":
            logits, _ = model.logits(x_test, 1, cfg, generator=gen)
        else:
            mean, std, _ = model.moments(x_test, 64, cfg, generator=gen)
        seconds = time.perf_counter() - t0
    out = {"predict_nfe": model.sde.nfe_f, "predict_seconds": seconds}
    if cfg.task == "digits":
        return out | {"accuracy": float((logits.argmax(1) == target).double().mean())}
    err = torch.cat([mean, std], 1) - target
    return out | {"moment_error": float(err.pow(2).mean().sqrt())}


class SDETask(TrainingTask[SDETrainConfig]):
    """Neural-SDE training for :func:`operators.training.fit`: Adam on the moment-matching loss plus
    the epoch's weight times the regularizer. Rows: ``epoch``, ``loss``, ``reg``, ``weight``,
    ``train_seconds``, ``train_nfe`` (drift evaluations per step), ``predict_nfe``,
    ``predict_seconds``, and ``moment_error`` (OU) or ``accuracy`` (digits)."""

    kind = "sde"

    def __init__(self, config: SDETrainConfig):
        self.config, self.epochs = config, config.epochs

    def build(self, device: torch.device, world: World) -> SDEModel:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        if cfg.task == "digits":
            from .tasks import load_task

            task = load_task("digits", cfg.seed)
            self.x_train, self.y_train = task.x_train.to(device), task.y_train.to(device)
            self.x_test, self.target = task.x_test.to(device), task.y_test.to(device)
        else:
            rng = np.random.default_rng(cfg.seed)
            self.x_test = _points(cfg.n_test, rng).to(device)
            mean, std = ou_moments(self.x_test.cpu().numpy())
            self.target = torch.as_tensor(np.concatenate([mean, std], 1), device=device)
        return rebuild(cfg).to(device)

    def _loss(self, net: SDEModel, w: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's task loss and regularizer on a batch drawn with the training generator."""
        cfg, device = self.config, next(net.parameters()).device
        if cfg.task == "digits":
            b = torch.randint(len(self.x_train), (cfg.batch_size,), generator=self.gen).to(device)
            logits, reg = net.logits(self.x_train[b], cfg.paths, cfg, cfg.regularizer, self.gen)
            return torch.nn.functional.cross_entropy(logits, self.y_train[b]), reg
        x0 = (torch.rand(cfg.batch_size, 2, generator=self.gen, dtype=torch.float64) * 4 - 2).to(device)
        mean, std = (torch.as_tensor(a, device=device) for a in ou_moments(x0.cpu().numpy()))
        m, s, reg = net.moments(x0, cfg.paths, cfg, cfg.regularizer, self.gen)
        return (m - mean).pow(2).mean() + (s - std).pow(2).mean(), reg

    def optimizers(self, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, None]:
        return torch.optim.Adam(model.parameters(), lr=self.config.lr), None

    def generators(self) -> dict[str, torch.Generator]:
        self.gen = torch.Generator().manual_seed(self.config.seed)
        return {"train": self.gen}

    def train_epoch(self, epoch: int, net: torch.nn.Module, opt: torch.optim.Optimizer, world: World) -> list[dict]:
        cfg = self.config
        assert isinstance(net, SDEModel)
        w = cfg.w_start + (cfg.w_end - cfg.w_start) * ((epoch - 1) / max(cfg.epochs - 1, 1))
        net.train()
        t0, nfe, total, total_reg = time.perf_counter(), 0, 0.0, 0.0
        for _ in range(cfg.steps_per_epoch):
            net.sde.reset()
            try:
                loss, reg = self._loss(net, w)
            except FloatingPointError as err:
                raise self.diverged(f"{err} in epoch {epoch}", epoch) from err
            self.step(loss + (w * reg if cfg.regularizer != "none" else 0.0), opt, epoch, world)
            nfe += net.sde.nfe_f
            total += loss.item()
            total_reg += float(reg.detach())
        n = cfg.steps_per_epoch
        return [
            {
                "epoch": epoch,
                "loss": total / n,
                "reg": total_reg / n,
                "weight": w,
                "train_seconds": time.perf_counter() - t0,
                "train_nfe": nfe / n,
            }
        ]

    def evaluate(self, model: torch.nn.Module, world: World) -> dict:
        assert isinstance(model, SDEModel)
        return evaluate(model, self.config, self.x_test, self.target)


def train(
    cfg: SDETrainConfig,
    checkpoint: str | Path | None = None,
    on_epoch: OnEpoch | None = None,
    device: torch.device | str = "cpu",
) -> tuple[SDEModel, list[dict]]:
    """Train one neural SDE; resume from ``checkpoint`` if it exists. Returns it and the history."""
    model, history = fit(SDETask(cfg), checkpoint, on_epoch, device=device)
    assert isinstance(model, SDEModel)
    return model, history


def rebuild(config: Mapping[str, Any] | SDETrainConfig) -> SDEModel:
    """The untrained model of a stored ``config`` (for :func:`operators.registry.model_from_checkpoint`)."""
    cfg = config if isinstance(config, SDETrainConfig) else SDETrainConfig.model_validate(config)
    d_in, d_out = TASK_DIMS[cfg.task]
    return SDEModel(cfg.hidden, d_in, d_out, cfg.width)


__all__ = [
    "TASK_DIMS",
    "NeuralSDE",
    "SDEModel",
    "SDETask",
    "SDETrainConfig",
    "evaluate",
    "ou_moments",
    "rebuild",
    "train",
]

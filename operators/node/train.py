"""Neural-ODE training with solver-error regularization, and NFE / time measurement.

Tasks (see :func:`load_task`):

* ``digits``: classify scikit-learn's 8x8 digits (ships with the package; the offline stand-in
  for the paper's MNIST). Linear encoder 64 -> d, ODE block on [0, 1], linear decoder d -> 10.
  Only the final state matters: the setting the method targets.
* ``lotka-volterra``: a surrogate for predator-prey dynamics from trajectories that PETSc TS
  generated (``data.LotkaVolterraSpec``, cached in the dataset store): the learned field,
  integrated over the rescaled interval [0, 1], maps the initial populations to those at
  ``t_final``; metric: final-state MSE. The sci-ML use: a surrogate that is cheap to integrate.
* ``spiral``: fit the dynamics ``y' = A y^3`` from trajectories (the torchdiffeq demo system)
  by integrating the learned field from each trajectory start and matching the final state.
  Learning the true dynamics is outside the paper's claim: the limitation case.

Per epoch: training loss and time, training NFE, and on held-out data the prediction NFE,
prediction seconds and the task metric (accuracy or final-state MSE).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .regularize import REGULARIZERS, CountedFunc, Regularizer, integrate


class ODETrainConfig(BaseModel):
    """One training run (typed: a Prefect form; bad values fail naming the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    task: Literal["digits", "lotka-volterra", "spiral"] = "digits"
    regularizer: Regularizer = "none"
    w_start: float = Field(2.5, ge=0, description="regularization weight at the first epoch (paper, MNIST: 2.5)")
    w_end: float = Field(1.0, ge=0, description="weight at the last epoch (linear decay; paper: 1.0)")
    epochs: int = Field(8, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=100_000)
    lr: float = Field(1e-2, gt=0, le=1.0)
    width: int = Field(32, ge=1, le=4096, description="ODE state size")
    hidden: int = Field(64, ge=1, le=4096, description="hidden units of the vector field")
    rtol: float = Field(1e-6, gt=0, lt=1)
    atol: float = Field(1e-6, gt=0, lt=1)
    max_steps: int = Field(5000, ge=10)
    seed: int = Field(0, ge=0)


class VectorField(torch.nn.Module):
    """``f(t, y) = W2 tanh(W1 [y, t] + b1) + b2``; shapes ``(B, d) -> (B, d)``."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(width + 1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, width))

    def forward(self, t, y):
        tt = torch.as_tensor(t, dtype=y.dtype).expand(y.shape[0], 1)
        return self.net(torch.cat([y, tt], dim=1))


class ODEModel(torch.nn.Module):
    """encoder -> ODE block on [0, 1] -> decoder."""

    def __init__(self, d_in: int, d_out: int, width: int, hidden: int, encode: bool = True):
        super().__init__()
        self.encoder = torch.nn.Linear(d_in, width) if encode else torch.nn.Identity()
        self.func = CountedFunc(VectorField(width, hidden))
        self.decoder = torch.nn.Linear(width, d_out) if encode else torch.nn.Identity()

    def forward(self, x, cfg: ODETrainConfig, regularizer: Regularizer = "none", generator=None):
        y1, reg = integrate(self.func, self.encoder(x), 0.0, 1.0, regularizer, cfg.rtol, cfg.atol,
                            generator=generator, max_steps=cfg.max_steps)
        return self.decoder(y1), reg


@dataclass
class Task:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    d_in: int
    d_out: int
    loss: Callable
    metric: Callable  # (pred, target) -> float
    metric_name: str
    encode: bool


def _spiral(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (y(0), y(1)) of y' = A y^3, A = [[-0.1, 2], [-2, -0.1]] (torchdiffeq's demo)."""
    from torchdiffeq import odeint

    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    y0 = torch.as_tensor(rng.uniform(-2, 2, (n, 2)))
    with torch.no_grad():
        y1 = odeint(lambda t, y: (y**3) @ A, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-10, atol=1e-10)[-1]
    return y0.numpy(), y1.numpy()


def load_task(name: str, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    if name == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        idx = rng.permutation(len(X))
        cut = int(0.8 * len(X))
        tr, te = idx[:cut], idx[cut:]
        f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        return Task(f(X[tr]), torch.as_tensor(y[tr]), f(X[te]), torch.as_tensor(y[te]), 64, 10,
                    torch.nn.functional.cross_entropy,
                    lambda p, t: float((p.argmax(1) == t).double().mean()), "accuracy", True)
    if name == "lotka-volterra":
        import data
        from data.spec import LotkaVolterraSpec

        ref = data.generate(LotkaVolterraSpec(n_train=400, n_test=100, seed=seed), progress=False)
        tr, te = data.load(ref)["u"], data.load(ref, "test")["u"]
        f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        return Task(f(tr[:, 0]), f(tr[:, -1]), f(te[:, 0]), f(te[:, -1]), 2, 2,
                    torch.nn.functional.mse_loss, lambda p, t: float(((p - t) ** 2).mean()), "mse", False)
    if name == "spiral":
        x0, x1 = _spiral(1200, rng)
        f = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
        return Task(f(x0[:1000]), f(x1[:1000]), f(x0[1000:]), f(x1[1000:]), 2, 2,
                    torch.nn.functional.mse_loss, lambda p, t: float(((p - t) ** 2).mean()), "mse", False)
    raise ValueError(f"unknown task {name!r}; choose 'digits', 'lotka-volterra' or 'spiral'")


def evaluate(model: ODEModel, task: Task, cfg: ODETrainConfig) -> dict:
    """Prediction NFE, seconds and metric on the held-out split (one batch, no regularizer)."""
    model.eval()
    model.func.nfe = 0
    with torch.no_grad():
        t0 = time.perf_counter()
        pred, _ = model(task.x_test, cfg)
        seconds = time.perf_counter() - t0
    return {"predict_nfe": model.func.nfe, "predict_seconds": seconds, task.metric_name: task.metric(pred, task.y_test)}


def train(cfg: ODETrainConfig, on_epoch: Callable[[int, dict], None] | None = None) -> tuple[ODEModel, list[dict]]:
    """Train one model; returns it and the per-epoch history."""
    if cfg.regularizer not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {cfg.regularizer!r}")
    torch.manual_seed(cfg.seed)
    task = load_task(cfg.task, cfg.seed)
    model = ODEModel(task.d_in, task.d_out, cfg.width if task.encode else task.d_in, cfg.hidden, task.encode).double()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    n = task.x_train.shape[0]
    for epoch in range(cfg.epochs):
        w = cfg.w_start + (cfg.w_end - cfg.w_start) * (epoch / max(cfg.epochs - 1, 1))
        model.train()
        perm = torch.randperm(n, generator=gen)
        t0, nfe, total, total_reg = time.perf_counter(), 0, 0.0, 0.0
        for i in range(0, n, cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            model.func.nfe = 0
            out, reg = model(task.x_train[b], cfg, cfg.regularizer, gen)
            loss = task.loss(out, task.y_train[b])
            objective = loss + (w * reg if cfg.regularizer != "none" else 0.0)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            nfe += model.func.nfe
            total += loss.item() * len(b)
            total_reg += float(reg.detach()) * len(b)
        row = {"epoch": epoch + 1, "loss": total / n, "reg": total_reg / n, "weight": w,
               "train_seconds": time.perf_counter() - t0, "train_nfe": nfe / ((n + cfg.batch_size - 1) // cfg.batch_size)}
        row.update(evaluate(model, task, cfg))
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
    return model, history

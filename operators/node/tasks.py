"""The neural-ODE training tasks: data, loss and metric (see :func:`load_task`).

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from data.errors import InputError
from data.spec import LotkaVolterraSpec


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
        times = torch.tensor([0.0, 1.0], dtype=torch.float64)
        y1 = odeint(lambda t, y: (y**3) @ A, y0, times, rtol=1e-10, atol=1e-10)[-1]
    return y0.numpy(), y1.numpy()


def _f64(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float64)


def _mse(p: torch.Tensor, t: torch.Tensor) -> float:
    return float(((p - t) ** 2).mean())


def _digits(rng: np.random.Generator, seed: int) -> Task:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    idx = rng.permutation(len(X))
    cut = int(0.8 * len(X))
    tr, te = idx[:cut], idx[cut:]
    return Task(
        _f64(X[tr]),
        torch.as_tensor(y[tr]),
        _f64(X[te]),
        torch.as_tensor(y[te]),
        64,
        10,
        torch.nn.functional.cross_entropy,
        lambda p, t: float((p.argmax(1) == t).double().mean()),
        "accuracy",
        True,
    )


def _lotka_volterra(rng: np.random.Generator, seed: int) -> Task:
    import data

    ref = data.generate(_lotka_volterra_spec(seed), progress=False)
    tr, te = data.load(ref)["u"], data.load(ref, "test")["u"]
    return Task(
        _f64(tr[:, 0]),
        _f64(tr[:, -1]),
        _f64(te[:, 0]),
        _f64(te[:, -1]),
        2,
        2,
        torch.nn.functional.mse_loss,
        _mse,
        "mse",
        False,
    )


def _lotka_volterra_spec(seed: int) -> LotkaVolterraSpec:
    return LotkaVolterraSpec.model_validate(dict(n_train=400, n_test=100, seed=seed))


def _spiral_task(rng: np.random.Generator, seed: int) -> Task:
    x0, x1 = _spiral(1200, rng)
    return Task(
        _f64(x0[:1000]),
        _f64(x1[:1000]),
        _f64(x0[1000:]),
        _f64(x1[1000:]),
        2,
        2,
        torch.nn.functional.mse_loss,
        _mse,
        "mse",
        False,
    )


#: the tasks by name: ``TASKS[name](rng, seed) -> Task`` (see the module docstring)
TASKS: dict[str, Callable[[np.random.Generator, int], Task]] = {
    "digits": _digits,
    "lotka-volterra": _lotka_volterra,
    "spiral": _spiral_task,
}
if TYPE_CHECKING:  # a type checker cannot read a Literal built from a tuple; it sees plain names
    TaskName = str
else:  # the task names: pydantic validates them, Prefect and the CLI offer them as choices
    TaskName = Literal[tuple(TASKS)]


def dataset_spec(name: str, seed: int = 0) -> LotkaVolterraSpec | None:
    """The spec of the stored dataset task ``name`` reads with ``seed`` (``data.generate`` finds or makes
    it), or None for a task whose data are made in memory."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; choose one of {tuple(TASKS)}")
    if name == "lotka-volterra":
        return _lotka_volterra_spec(seed)
    return None


def load_task(name: str, seed: int = 0) -> Task:
    """The task ``name`` (a key of :data:`TASKS`) with its train / test split drawn from ``seed``."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; choose one of {tuple(TASKS)}")
    return TASKS[name](np.random.default_rng(seed), seed)


__all__ = ["TASKS", "Task", "TaskName", "dataset_spec", "load_task"]

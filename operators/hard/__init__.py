"""Physics hard-constraint layers (PI-HC) and their mixture of experts (PI-HC-MoE) vs soft-constraint PINNs.

Chalapathi, Du & Krishnapriyan, "Scaling physics-informed hard constraints with mixture-of-experts",
ICLR 2024. Public API:

* :func:`solve` / :class:`LeastSquares`: the constraint layer (registry :data:`BACKENDS`: ``cholesky``,
  ``cvxpylayers``, ``lm``);
* :class:`DiffusionSorption`, :class:`Heat2D`, :class:`NavierStokes2D` (registry :data:`PDES`),
  :func:`from_dataset`: PDEs as constraint rows;
* :class:`Router`: expert layout, point sampling, stitching, interface jumps;
* :class:`HardModelConfig`, :class:`HardConstraintModel`: soft / hard / MoE models;
* :class:`HardTrainConfig`, :class:`HardTask`, :func:`train`, :func:`evaluate` (a trained model comes
  back with :func:`operators.model_from_checkpoint`).
"""

from .layer import BACKENDS, ConstraintSolveError, LeastSquares, SolveInfo, solve
from .model import HardConstraintModel, HardModelConfig, HardOutput, loss_terms
from .moe import ExpertLayoutError, Router, expert_index, layout_for
from .pdes import PDES, DiffusionSorption, HardPDE, Heat2D, NavierStokes2D, from_dataset, pde_from_state, pde_state
from .train import HardTask, HardTrainConfig, evaluate, train

__all__ = [
    "BACKENDS",
    "PDES",
    "ConstraintSolveError",
    "DiffusionSorption",
    "ExpertLayoutError",
    "HardConstraintModel",
    "HardModelConfig",
    "HardOutput",
    "HardPDE",
    "HardTask",
    "HardTrainConfig",
    "Heat2D",
    "NavierStokes2D",
    "LeastSquares",
    "Router",
    "SolveInfo",
    "evaluate",
    "expert_index",
    "layout_for",
    "from_dataset",
    "loss_terms",
    "pde_from_state",
    "pde_state",
    "solve",
    "train",
]

"""Physics hard-constraint layers (PI-HC) and their mixture of experts (PI-HC-MoE) vs soft-constraint PINNs.

Chalapathi, Du & Krishnapriyan, "Scaling physics-informed hard constraints with mixture-of-experts",
ICLR 2024. Public API:

* :func:`solve` / :class:`LeastSquares`: the constraint layer (backends ``cholesky``, ``cvxpylayers``, ``lm``);
* :class:`DiffusionSorption`, :class:`Heat2D`, :class:`NavierStokes2D`, :func:`from_dataset`: PDEs as constraint rows;
* :class:`Router`: expert layout, point sampling, stitching, interface jumps;
* :class:`HardModelConfig`, :class:`HardConstraintModel`: soft / hard / MoE models;
* :class:`HardTrainConfig`, :func:`train`, :func:`evaluate`, :func:`model_from_checkpoint`.
"""

from .layer import BACKENDS, ConstraintSolveError, LeastSquares, SolveInfo, solve
from .model import HardConstraintModel, HardModelConfig, HardOutput, loss_terms
from .moe import ExpertLayoutError, Router, expert_index, layout_for
from .pdes import DiffusionSorption, HardPDE, Heat2D, NavierStokes2D, from_dataset
from .train import HardTrainConfig, evaluate, model_from_checkpoint, train

__all__ = [
    "BACKENDS", "ConstraintSolveError", "DiffusionSorption", "ExpertLayoutError", "HardConstraintModel",
    "HardModelConfig", "HardOutput", "HardPDE", "HardTrainConfig", "Heat2D", "NavierStokes2D", "LeastSquares", "Router", "SolveInfo",
    "evaluate", "expert_index", "layout_for", "from_dataset", "loss_terms", "model_from_checkpoint", "solve", "train",
]

"""Neural ODEs trained with solver-error regularization (Pal, Edelman & Rackauckas, ICML 2023).

    train(ODETrainConfig(task="digits", regularizer="local-biased")) -> (model, history)

The model and its training live here; the numerical method (the adaptive solve and the
regularizers) is :mod:`solvers.ode`.
"""

from .model import ODEModel, VectorField
from .tasks import TASKS, Task, load_task
from .train import NodeTask, ODETrainConfig, evaluate, train

__all__ = ["NodeTask", "ODEModel", "ODETrainConfig", "TASKS", "Task", "VectorField", "evaluate", "load_task", "train"]

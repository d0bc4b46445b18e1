"""Neural ODEs with solver-error regularization (Pal, Edelman & Rackauckas, ICML 2023).

    integrate(func, y0, t0, t1, regularizer="local-unbiased", rtol=..., atol=...) -> (y(t1), R)
    train(ODETrainConfig(task="digits", regularizer="local-biased")) -> (model, history)
"""

from .regularize import REGULARIZERS, CountedFunc, StepLimitError, integrate, solve
from .train import ODEModel, ODETrainConfig, evaluate, load_task, train

__all__ = ["REGULARIZERS", "CountedFunc", "ODEModel", "ODETrainConfig", "StepLimitError", "evaluate", "integrate",
           "load_task", "solve", "train"]

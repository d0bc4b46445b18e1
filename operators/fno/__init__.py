"""Neural operators (neuraloperator 2.x): dense FNO, TFNO, MG-TFNO; training on stored datasets."""

from data.errors import CheckpointError
from data.errors import TrainingDivergedError as TrainingDivergedError

from .models import MODELS, OperatorModelConfig, build_model, count_params, grid_channels
from .train import OperatorTask, OperatorTrainConfig, evaluate, input_domain_ratio, pairs, train

#: the name tests and flows catch (one class: :class:`data.errors.CheckpointError`)
CheckpointMismatchError = CheckpointError

__all__ = [
    "CheckpointMismatchError",
    "MODELS",
    "OperatorModelConfig",
    "OperatorTask",
    "OperatorTrainConfig",
    "TrainingDivergedError",
    "build_model",
    "count_params",
    "evaluate",
    "grid_channels",
    "input_domain_ratio",
    "pairs",
    "train",
]

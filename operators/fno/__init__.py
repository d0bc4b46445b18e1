"""Neural operators (neuraloperator 2.x): dense FNO, TFNO, MG-TFNO; training on stored datasets."""

from .models import MODELS, OperatorModelConfig, build_model, count_params, grid_channels
from .train import (CheckpointMismatchError, OperatorTrainConfig, TrainingDivergedError, evaluate, input_domain_ratio,
                    load_checkpoint, model_from_checkpoint, pairs, train)

__all__ = ["CheckpointMismatchError", "MODELS", "OperatorModelConfig", "OperatorTrainConfig", "TrainingDivergedError",
           "build_model", "count_params", "evaluate", "grid_channels", "input_domain_ratio", "load_checkpoint",
           "model_from_checkpoint", "pairs", "train"]

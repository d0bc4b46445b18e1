"""DCDM: the learned search-direction network and its training (Kaneda et al., ICML 2023)."""

from .net import DCDMNet
from .train import DCDMTrainConfig, dcdm_loss, load_checkpoint, model_from_checkpoint, train, training_rhs

__all__ = ["DCDMNet", "DCDMTrainConfig", "dcdm_loss", "load_checkpoint", "model_from_checkpoint", "train", "training_rhs"]

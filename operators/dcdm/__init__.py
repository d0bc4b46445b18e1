"""DCDM: the learned search-direction network and its training (Kaneda et al., ICML 2023)."""

from .net import DCDMNet, MultilevelDCDMNet
from .train import DCDMTask, DCDMTrainConfig, dcdm_loss, train, training_rhs

__all__ = ["DCDMNet", "MultilevelDCDMNet", "DCDMTask", "DCDMTrainConfig", "dcdm_loss", "train", "training_rhs"]

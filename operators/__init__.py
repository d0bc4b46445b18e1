"""Learned models and their training (plain library: no Prefect or MLflow imports).

* :mod:`operators.fno` (FNO / TFNO / MG-TFNO), :mod:`operators.dcdm`, :mod:`operators.hard`,
  :mod:`operators.node` (neural ODEs): the model kinds;
* :func:`fit` (:mod:`operators.training`): the one training loop every kind uses;
* :mod:`operators.checkpoint`: the one checkpoint format; :func:`model_from_checkpoint`
  (:mod:`operators.registry`) rebuilds any kind from its checkpoint;
* :func:`default_device` (:mod:`operators.device`): the one device chooser.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .device import default_device
from .registry import KINDS, model_from_checkpoint
from .training import TrainingTask, World, fit

__all__ = [
    "KINDS",
    "TrainingTask",
    "World",
    "default_device",
    "fit",
    "load_checkpoint",
    "model_from_checkpoint",
    "save_checkpoint",
]

"""Every Prefect flow by name: the one list behind ``sciflow run FLOW``.

:data:`FLOWS` is the flows that are not benchmarks (:data:`CORE`) followed by every benchmark's
flow from :data:`flows.benchmarks.BENCHMARKS`, then the nightly. Each entry is a
``module:function`` string, imported on use (flow modules import torch, PETSc, MLflow, ...).
A test checks that every flow object in ``flows/`` is listed here, under its own name.
"""

from __future__ import annotations

import importlib
from typing import Any

from data.errors import InputError

from .benchmarks import BENCHMARKS

#: Flows that are not benchmarks (the nightly comes last, after the benchmarks it runs).
CORE = {
    "generate-dataset": "flows.generate:generate_dataset",
    "train-dcdm": "flows.dcdm:train_dcdm",
    "train-operator": "flows.operator:train_operator",
    "train-hard-constraint": "flows.hard_constraint:train_hard_constraint",
    "train-neural-ode": "flows.neural_ode:train_neural_ode",
    "optimize": "flows.optimize:optimize",
}
NIGHTLY = {"nightly-benchmark": "flows.nightly:nightly_benchmark"}

#: Flow name -> ``module:function``, in the order ``sciflow run --help`` lists them.
FLOWS: dict[str, str] = {
    **CORE,
    **{b.flow_name: b.flow for b in BENCHMARKS.values() if b.flow and b.flow_name},
    **NIGHTLY,
}

#: Short names ``sciflow run`` also accepts.
ALIASES = {"nightly": "nightly-benchmark"}


def resolve(name: str) -> str:
    """The flow name for ``name`` (an alias resolved); an unknown one is an
    :class:`~data.errors.InputError` listing the known names."""
    name = ALIASES.get(name, name)
    if name not in FLOWS:
        raise InputError(f"flow={name!r} is unknown; choose one of {[*FLOWS, *ALIASES]}")
    return name


def load(name: str) -> Any:
    """The Prefect flow object called ``name`` (or an alias of it)."""
    module, function = FLOWS[resolve(name)].split(":")
    return getattr(importlib.import_module(module), function)


__all__ = ["ALIASES", "CORE", "FLOWS", "NIGHTLY", "load", "resolve"]

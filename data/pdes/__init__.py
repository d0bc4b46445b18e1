"""PDE families: each module assembles/solves with PETSc and produces dataset arrays.

A family module provides ``AXES`` (array name -> axis names), ``shared_arrays(spec)`` (arrays
common to all samples) and ``sample_arrays(spec, rngs)`` (one sample per generator, stacked).
"""

from importlib import import_module
from types import ModuleType

from ..errors import InputError
from . import grid, random_fields

FAMILY_MODULES = {
    "poisson": "data.pdes.poisson",
    "darcy": "data.pdes.darcy",
    "heat": "data.pdes.heat",
    "lotka_volterra": "data.pdes.lotka_volterra",
    "navier_stokes": "data.pdes.navier_stokes",
    "diffusion_sorption": "data.pdes.diffusion_sorption",
}


def family_module(family: str) -> ModuleType:
    """The module implementing ``family`` (``"poisson"``, ``"darcy"``, ``"heat"``)."""
    try:
        return import_module(FAMILY_MODULES[family])
    except KeyError:
        raise InputError(f"unknown PDE family {family!r}; choose one of {sorted(FAMILY_MODULES)}") from None


__all__ = ["FAMILY_MODULES", "family_module", "grid", "random_fields"]

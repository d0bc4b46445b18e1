"""The one error family: every error sciflow raises on purpose is a :class:`SciflowError`.

Each message names the argument, the value it had and the fix. The concrete classes also derive
from the builtin exception a caller would catch without knowing sciflow (``ValueError`` for bad
input, ``RuntimeError`` for a computation that failed), so ``except ValueError`` keeps working.

    SciflowError
    +-- InputError (ValueError)            a bad argument or configuration value
    |   +-- PetscOptionError               a PETSc option value PETSc does not accept
    |   +-- CheckpointError                a checkpoint for another configuration, or unreadable
    +-- DatasetError (RuntimeError)        a dataset missing, unreadable or failing its digest
    +-- SolverDivergedError (RuntimeError) a PETSc KSP/SNES/TS solve that did not converge
    +-- TrainingDivergedError (RuntimeError) a non-finite loss or weights during training

Modules add their own subclasses beside the code that raises them (e.g. ``NotSPDError``,
``ConstraintSolveError``); each derives from one of these.
"""

from __future__ import annotations


class SciflowError(Exception):
    """Base of every error sciflow raises on purpose."""


class InputError(SciflowError, ValueError):
    """An argument or configuration value that cannot be used; the message names it and the fix."""


class PetscOptionError(InputError):
    """A PETSc option (``key=value``) that PETSc refused, e.g. ``ksp_type=nosuchksp: unknown KSP type``."""


class CheckpointError(InputError):
    """A checkpoint that is unreadable or was written for another configuration."""


class DatasetError(SciflowError, RuntimeError):
    """A dataset is missing, unreadable or fails its digest check."""


class SolverDivergedError(SciflowError, RuntimeError):
    """A PETSc KSP/TS solve did not converge; the message carries PETSc's reason."""


class TrainingDivergedError(SciflowError, RuntimeError):
    """The training loss or the weights became NaN or inf; the last good checkpoint is kept."""


__all__ = [
    "CheckpointError",
    "DatasetError",
    "InputError",
    "PetscOptionError",
    "SciflowError",
    "SolverDivergedError",
    "TrainingDivergedError",
]

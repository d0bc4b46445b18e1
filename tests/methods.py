"""The method lists tests parametrise over, read from the registries (never written here).

A new solver, optimizer, backend, model, regularizer, PDE family or benchmark added to its registry
is picked up by every test that iterates over these lists.
"""

from data.spec import FAMILIES
from operators.fno.models import MODELS as OPERATOR_MODELS
from operators.hard.layer import BACKENDS as HARD_BACKENDS
from solvers.linear import SOLVERS
from solvers.ode.regularize import REGULARIZERS
from solvers.optim.bilevel import BILEVEL_METHODS
from solvers.optim.minimize import MINIMIZERS

PDE_FAMILIES = tuple(FAMILIES)
LINEAR_SOLVERS = tuple(SOLVERS)
EQ_OPTIMIZERS = tuple(MINIMIZERS)
BILEVEL = tuple(BILEVEL_METHODS)
OPERATORS = tuple(OPERATOR_MODELS)
BACKENDS = tuple(HARD_BACKENDS)
ODE_REGULARIZERS = tuple(REGULARIZERS)

__all__ = ["BACKENDS", "BILEVEL", "EQ_OPTIMIZERS", "LINEAR_SOLVERS", "ODE_REGULARIZERS", "OPERATORS", "PDE_FAMILIES"]

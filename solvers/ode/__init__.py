"""Solver-error regularization for neural ODEs (Pal, Edelman & Rackauckas, ICML 2023).

    integrate(func, y0, t0, t1, regularizer="local-unbiased", rtol=..., atol=...) -> (y(t1), R)

The numerical method; the neural-ODE model and its training live in :mod:`operators.node`.
"""

from .regularize import REGULARIZERS, CountedFunc, StepLimitError, integrate, solve

__all__ = ["REGULARIZERS", "CountedFunc", "StepLimitError", "integrate", "solve"]

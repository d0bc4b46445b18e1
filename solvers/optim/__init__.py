"""Constrained optimizers.

    minimize_eq(f, c, x0, *, method="al-sketch"|"newton-sqp"|"l1-sqp"|"slsqp"|"trust-constr",
                tol=1e-6, max_iter=500, sketch="kaczmarz"|"block"|"exact", seed=0) -> OptimizeResult
    bilevel(F, f, g, x0, y0, *, method="lv-hba"|"implicit", ...) -> BilevelResult

``minimize_eq`` is AdaSketch-Newton (Hong et al., ICML 2023) and its baselines (:mod:`.sqp`);
``bilevel`` is LV-HBA (Yao et al., ICLR 2024) and the cvxpylayers implicit baseline (:mod:`.bilevel`).
"""

from .bilevel import BilevelInputError, BilevelResult, CvxpyLowerLevel, bilevel
from .derivatives import AutogradDerivatives, Derivatives, NonFiniteError, kkt_residual
from .sketch import SKETCHES, SketchSolver
from .sqp import METHODS, ALParams, OptimizeResult, minimize_eq

__all__ = ["ALParams", "AutogradDerivatives", "BilevelInputError", "BilevelResult", "CvxpyLowerLevel", "Derivatives", "METHODS", "NonFiniteError",
           "OptimizeResult", "SKETCHES", "SketchSolver", "bilevel", "kkt_residual", "minimize_eq"]

"""Constrained optimizers.

    minimize_eq(f, c, x0, *, method="al-sketch"|"newton-sqp"|"l1-sqp"|"l1-sqp-adaptive"|"al-multipliers"|
                "slsqp"|"trust-constr",
                tol=1e-6, max_iter=500, sketch="kaczmarz"|"block"|"gaussian"|"exact",
                precondition="none"|"ilu", seed=0) -> OptimizeResult
    bilevel(F, f, g, x0, y0, *, method="lv-hba"|"implicit", ...) -> BilevelResult

``minimize_eq`` (:mod:`.minimize`, registry :data:`MINIMIZERS`) is AdaSketch-Newton (Hong et al.,
ICML 2023; :mod:`.adasketch`) and its baselines (:mod:`.l1_sqp`, :mod:`.al_multipliers`, :mod:`.scipy_methods`);
``bilevel`` (:mod:`.bilevel`, registry :data:`BILEVEL_METHODS`) is LV-HBA (Yao et al., ICLR 2024;
:mod:`.lv_hba`) and the cvxpylayers implicit baseline (:mod:`.implicit`).
"""

from .adasketch import ALParams
from .bilevel import BILEVEL_METHODS, BilevelInputError, BilevelResult, CvxpyLowerLevel, bilevel
from .derivatives import AutogradDerivatives, Derivatives, NonFiniteError, kkt_residual
from .minimize import METHODS, MINIMIZERS, OptimizeResult, minimize_eq
from .sketch import PRECONDITIONERS, SKETCHES, SketchSolver

__all__ = [
    "BILEVEL_METHODS",
    "METHODS",
    "MINIMIZERS",
    "PRECONDITIONERS",
    "SKETCHES",
    "ALParams",
    "AutogradDerivatives",
    "BilevelInputError",
    "BilevelResult",
    "CvxpyLowerLevel",
    "Derivatives",
    "NonFiniteError",
    "OptimizeResult",
    "SketchSolver",
    "bilevel",
    "kkt_residual",
    "minimize_eq",
]

"""Equality-constrained optimization ``min f(x) s.t. c(x) = 0``: the entry point and its registry.

    minimize_eq(f, c, x0, *, method="al-sketch", ...) -> OptimizeResult

The methods (:data:`MINIMIZERS`, one module each): ``al-sketch``, AdaSketch-Newton (Hong et al.,
ICML 2023; :mod:`.adasketch`), and ``newton-sqp``, the same algorithm with exact KKT solves;
``l1-sqp`` and ``l1-sqp-adaptive``, the inexact l1-merit SQP baselines (:mod:`.l1_sqp`); ``al-multipliers``, the
augmented-Lagrangian method of multipliers (:mod:`.al_multipliers`); ``slsqp`` and ``trust-constr``,
SciPy's (:mod:`.scipy_methods`). Every method reports the KKT residual ``||(grad_x L, c)||`` and is
``converged`` only when it is ``<= tol``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from data.errors import InputError

from .adasketch import ALParams, al_sketch, newton_sqp
from .al_multipliers import al_multipliers
from .derivatives import AutogradDerivatives, Derivatives, check_shapes
from .l1_sqp import l1_sqp, l1_sqp_adaptive
from .minimize_base import MinimizeArgs, OptimizeResult
from .scipy_methods import slsqp, trust_constr
from .sketch import PRECONDITIONERS, SKETCHES


class EqMethod(Protocol):
    """The signature every registered method has: the checked arguments (:class:`MinimizeArgs`)
    and, as keywords, the options of :func:`minimize_eq` that only some methods use; a method
    ignores those it has no use for."""

    def __call__(
        self,
        args: MinimizeArgs,
        *,
        sketch: str,
        seed: int,
        params: ALParams,
        block_size: int | None,
        precondition: str,
    ) -> OptimizeResult: ...


#: method name -> method; the one list of ``minimize_eq`` methods (``METHODS`` and configs derive from it)
MINIMIZERS: dict[str, EqMethod] = {
    "al-sketch": al_sketch,
    "newton-sqp": newton_sqp,
    "l1-sqp": l1_sqp,
    "l1-sqp-adaptive": l1_sqp_adaptive,
    "al-multipliers": al_multipliers,
    "slsqp": slsqp,
    "trust-constr": trust_constr,
}
METHODS = tuple(MINIMIZERS)


def _as_vector(x0) -> np.ndarray:
    x = np.asarray(x0.detach().cpu().numpy() if hasattr(x0, "detach") else x0, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise InputError(f"x0 must be a non-empty 1-D vector, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError("x0 contains NaN or inf")
    return x.copy()


def minimize_eq(
    f: Callable | None,
    c: Callable | None,
    x0,
    *,
    method: str = "al-sketch",
    tol: float = 1e-6,
    max_iter: int = 500,
    sketch: str = "kaczmarz",
    block_size: int | None = None,
    precondition: str = "none",
    seed: int = 0,
    lam0=None,
    derivatives: Derivatives | None = None,
    params: ALParams = ALParams(),  # noqa: B008 (a frozen dataclass)
    max_seconds: float | None = None,
    callback: Callable[[dict], None] | None = None,
) -> OptimizeResult:
    """Minimize ``f(x)`` subject to ``c(x) = 0``.

    Args:
        f: torch function ``(n,) float64 -> ()`` (ignored when ``derivatives`` is given).
        c: torch function ``(n,) -> (m,)``, ``m <= n`` (ignored when ``derivatives`` is given).
        x0: start, shape ``(n,)`` (NumPy or torch).
        method: one of :data:`METHODS`.
        tol: stop when the KKT residual ``||(grad_x L, c)||_2 <= tol``.
        max_iter: outer iterations.
        sketch: one of :data:`~.sketch.SKETCHES` (``"kaczmarz"``, ``"block"``, ``"gaussian"``,
            ``"exact"``; al-sketch only).
        block_size: rows per block (``"block"``) or columns of the Gaussian sketch; at most the KKT
            system's size ``n + m`` (default ``ceil(sqrt(n + m))``).
        precondition: one of :data:`~.sketch.PRECONDITIONERS`: ``"none"`` or ``"ilu"``, the sketch
            run on the KKT system right-preconditioned by its incomplete LU (al-sketch only; see
            :mod:`.sketch`).
        seed: seeds the sketch sampling.
        lam0: starting multipliers ``(m,)`` (default zeros).
        derivatives: a :class:`~.derivatives.Derivatives` for problems with their own (sparse)
            derivatives; default: dense autograd of ``f`` and ``c``.
        max_seconds: wall-clock budget; the result is ``converged=False`` when it runs out.
        callback: called after each outer iteration with a dict (``nit, kkt, fun, alpha, inner,
            seconds``), e.g. for progress logging.

    Returns:
        :class:`OptimizeResult`. ``converged`` is True only when the KKT residual is ``<= tol``.

    Raises:
        InputError (a ValueError): unknown method/sketch/preconditioner, a block size outside ``1..n+m``, callbacks
            (``f``, ``c`` or a ``derivatives`` object's) returning the wrong shape, non-finite input,
            ``tol <= 0``; all before the first iteration.
        NonFiniteError: ``f``, ``c`` or a derivative is NaN/inf at an iterate.
    """
    if method not in MINIMIZERS:
        raise InputError(f"method must be one of {METHODS}, got {method!r}")
    if sketch not in SKETCHES:
        raise InputError(f"sketch must be one of {SKETCHES}, got {sketch!r}")
    if precondition not in PRECONDITIONERS:
        raise InputError(f"precondition must be one of {PRECONDITIONERS}, got {precondition!r}")
    if not (tol > 0 and np.isfinite(tol)):
        raise InputError(f"tol must be a positive finite number, got {tol}")
    if int(max_iter) < 1:
        raise InputError(f"max_iter must be >= 1, got {max_iter}")
    x = _as_vector(x0)
    d = derivatives if derivatives is not None else AutogradDerivatives(f, c, x)
    if d.n != x.size:
        raise InputError(f"x0 has {x.size} entries, the problem has n = {d.n} variables")
    lam = np.zeros(d.m) if lam0 is None else _as_vector(lam0)
    if lam.size != d.m:
        raise InputError(f"lam0 has {lam.size} entries, c has m = {d.m} components")
    if block_size is not None and not 1 <= int(block_size) <= d.n + d.m:
        raise InputError(
            f"block_size={block_size} must be between 1 and the KKT system's size n + m = {d.n + d.m} "
            f"(n = {d.n}, m = {d.m})"
        )
    check_shapes(d, x, lam)
    args = MinimizeArgs(d, x, lam, tol, int(max_iter), max_seconds, callback)
    return MINIMIZERS[method](
        args, sketch=sketch, seed=seed, params=params, block_size=block_size, precondition=precondition
    )


__all__ = ["METHODS", "MINIMIZERS", "ALParams", "EqMethod", "MinimizeArgs", "OptimizeResult", "minimize_eq"]

"""First and second derivatives of an equality-constrained problem ``min f(x) s.t. c(x) = 0``.

Every optimizer in this package talks to the problem through a :class:`Derivatives` object, in
NumPy float64: ``f`` (scalar), ``c`` (shape ``(m,)``), ``grad`` (``(n,)``), ``jac`` (``(m, n)``,
dense or ``scipy.sparse``) and ``hess_lag`` (``(n, n)``, the Hessian of the Lagrangian
``L = f + lam . c`` in ``x``). :class:`AutogradDerivatives` builds them from two torch functions
with ``torch.func`` (dense; fine up to a few thousand variables). Large structured problems (the
Darcy inverse problem) supply their own sparse derivatives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from data.errors import InputError


class NonFiniteError(InputError):
    """The objective, the constraints or a derivative produced NaN or inf."""


class Derivatives(Protocol):
    n: int
    m: int

    def f(self, x: np.ndarray) -> float: ...
    def c(self, x: np.ndarray) -> np.ndarray: ...
    def grad(self, x: np.ndarray) -> np.ndarray: ...
    def jac(self, x: np.ndarray) -> np.ndarray | sp.spmatrix: ...
    def hess_lag(self, x: np.ndarray, lam: np.ndarray) -> np.ndarray | sp.spmatrix: ...


def finite(name: str, value, x: np.ndarray | None = None):
    """Return ``value`` (array or sparse matrix) or raise :class:`NonFiniteError` naming it."""
    data = value.data if sp.issparse(value) else np.asarray(value)
    if not np.all(np.isfinite(data)):
        where = "" if x is None else f" at x with ||x||_inf = {np.max(np.abs(x)):.3g}"
        raise NonFiniteError(f"{name} is not finite{where}")
    return value


class AutogradDerivatives:
    """Dense derivatives of torch functions ``f: (n,) -> ()`` and ``c: (n,) -> (m,)`` by autograd.

    ``f`` and ``c`` receive a float64 tensor of shape ``(n,)``. The shapes are checked once, at
    construction, on ``x0``; a wrong shape raises ``InputError`` (a ``ValueError``) naming the
    function and the shape.
    """

    def __init__(
        self,
        f: Callable[[torch.Tensor], torch.Tensor] | None,
        c: Callable[[torch.Tensor], torch.Tensor] | None,
        x0: np.ndarray,
    ):
        if not callable(f) or not callable(c):
            raise TypeError("f and c must be callables mapping a torch vector to a scalar / an m-vector")
        x0 = np.asarray(x0, dtype=np.float64)
        if x0.ndim != 1 or x0.size == 0:
            raise InputError(f"x0 must be a non-empty 1-D vector, got shape {x0.shape}")
        self.n = x0.size
        self._f, self._c = f, c
        t = torch.as_tensor(x0)
        fv = torch.as_tensor(f(t))
        if fv.numel() != 1:
            raise InputError(f"f must return a scalar, got shape {tuple(fv.shape)}")
        cv = torch.as_tensor(c(t))
        if cv.ndim != 1 or cv.numel() == 0:
            raise InputError(f"c must return a non-empty 1-D vector (m,), got shape {tuple(cv.shape)}")
        self.m = cv.numel()
        if self.m > self.n:
            raise InputError(
                f"more equality constraints (m={self.m}) than variables (n={self.n}): "
                "the constraint Jacobian cannot have full row rank"
            )
        self._fs = lambda x: torch.as_tensor(f(x)).reshape(())
        self._grad = torch.func.grad(self._fs)
        self._jac = torch.func.jacrev(lambda x: torch.as_tensor(c(x)))
        self._hess = torch.func.hessian(lambda x, lam: self._fs(x) + torch.dot(lam, torch.as_tensor(c(x))))

    def f(self, x: np.ndarray) -> float:
        with torch.no_grad():
            v = float(self._fs(torch.as_tensor(x)))
        if not np.isfinite(v):
            raise NonFiniteError(f"f(x) = {v} is not finite")
        return v

    def c(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return finite("c(x)", torch.as_tensor(self._c(torch.as_tensor(x))).numpy().astype(np.float64), x)

    def grad(self, x: np.ndarray) -> np.ndarray:
        return finite("grad f(x)", self._grad(torch.as_tensor(x)).detach().numpy(), x)

    def jac(self, x: np.ndarray) -> np.ndarray:
        return finite(
            "the constraint Jacobian", self._jac(torch.as_tensor(x)).detach().numpy().reshape(self.m, self.n), x
        )

    def hess_lag(self, x: np.ndarray, lam: np.ndarray) -> np.ndarray:
        H = self._hess(torch.as_tensor(x), torch.as_tensor(lam)).detach().numpy()
        return finite("the Hessian of the Lagrangian", 0.5 * (H + H.T), x)


def check_shapes(d: Derivatives, x: np.ndarray, lam: np.ndarray) -> None:
    """Evaluate every callback of ``d`` once at ``(x, lam)`` and raise :class:`~data.errors.InputError`
    naming the callback whose result does not have its shape (``f`` scalar, ``c (m,)``, ``grad (n,)``,
    ``jac (m, n)``, ``hess_lag (n, n)``): a wrong shape is refused before the first iteration, not
    found as a broadcasting error deep inside a solve."""
    n, m = d.n, d.m
    expected = {"f": (), "c": (m,), "grad": (n,), "jac": (m, n), "hess_lag": (n, n)}
    got = {
        "f": np.shape(d.f(x)),
        "c": np.shape(d.c(x)),
        "grad": np.shape(d.grad(x)),
        "jac": d.jac(x).shape,
        "hess_lag": d.hess_lag(x, lam).shape,
    }
    for name, shape in expected.items():
        if tuple(got[name]) != shape:
            raise InputError(
                f"the problem's {name} returns shape {tuple(got[name])}, expected {shape} (n = {n} variables, "
                f"m = {m} constraints)"
            )


def least_squares_multipliers(g: np.ndarray, G) -> np.ndarray:
    """``argmin_lam ||g + G^T lam||`` (the multipliers that best explain a point), shape ``(m,)``."""
    if sp.issparse(G):
        import scipy.sparse.linalg as spla

        GGt = (G @ G.T).tocsc()
        return -spla.splu(GGt).solve(G @ g)
    return -np.linalg.lstsq(G.T, g, rcond=None)[0]


def kkt_residual(d: Derivatives, x: np.ndarray, lam: np.ndarray | None = None) -> float:
    """``||(grad_x L(x, lam), c(x))||_2``; least-squares multipliers when ``lam`` is None."""
    g, G, cx = d.grad(x), d.jac(x), d.c(x)
    if lam is None:
        lam = least_squares_multipliers(g, G)
    return float(np.linalg.norm(np.concatenate([g + G.T @ lam, cx])))

"""What both bilevel methods share: their arguments (:class:`BilevelArgs`, with the lower level as a
cvxpylayers problem, :class:`CvxpyLowerLevel`), the result and the bookkeeping that fills it
(:class:`Progress`), the input error and checks, gradients.

Functions act on float64 torch vectors (:data:`DTYPE`): ``x`` of shape ``(n,)``, ``y`` of shape
``(m,)``; see :mod:`.bilevel` for the problem and the methods.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data.errors import InputError

Tensor = torch.Tensor
Objective = Callable[[Tensor, Tensor], Tensor]
Projection = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
Monitor = Callable[[Tensor, Tensor], Mapping[str, float]]

DTYPE = torch.float64


@dataclass
class BilevelResult:
    """Outcome of one bilevel solve.

    ``x``, ``y``: final iterate (float64, shapes ``(n,)``, ``(m,)``); ``F``: upper objective there.
    ``converged``: the stopping rule of the method held (see :func:`~.bilevel.bilevel`); False when
    ``max_iter`` ran out, an iterate became non-finite or the lower-level solver failed
    (``message`` says which). ``history``: one dict per logged iteration (``k``, ``F``, the
    residuals of the stopping rule, and whatever ``monitor`` returned). ``seconds``: wall time of
    the iterations, excluding ``monitor`` calls. LV-HBA also returns ``theta`` (proximal LL point),
    ``lam`` (LL multipliers, ``g`` entries first, those ``>= 0``) and ``z`` (their proximal anchor).
    """

    x: Tensor
    y: Tensor
    F: float
    nit: int
    converged: bool
    seconds: float
    method: str
    history: list[dict[str, float]] = field(default_factory=list)
    message: str = ""
    theta: Tensor | None = None
    lam: Tensor | None = None
    z: Tensor | None = None


@dataclass(frozen=True)
class CvxpyLowerLevel:
    """The lower level as a cvxpylayers-ready problem, for ``method="implicit"``.

    ``problem``: a convex, DPP ``cvxpy.Problem`` whose parameters are exactly ``parameters``.
    ``variables``: the cvxpy variables that make up y, in order; y is their flattened (C-order)
    concatenation, so it must match the ``y`` that F expects. ``params_of_x(x)`` maps the torch
    vector x to one tensor per parameter (differentiably; default: ``(x,)``, one parameter of
    x's shape). Reparametrize to stay DPP, e.g. ``exp(c_i) xi_i^2`` as
    ``sum_squares(multiply(p, xi))`` with ``p = exp(c / 2)``. ``solver``/``solver_args`` go to
    ``CvxpyLayer``; the default (diffcp) uses Clarabel, tolerances ``solver_args`` may tighten
    (e.g. ``tol_gap_abs``, ``tol_gap_rel``, ``tol_feas``).
    The LL solution must be unique for the derivative to exist (add a selection term if not).
    """

    problem: Any
    parameters: Sequence[Any]
    variables: Sequence[Any]
    params_of_x: Callable[[Tensor], Sequence[Tensor]] | None = None
    solver: str | None = None
    solver_args: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class BilevelArgs:
    """The checked arguments of :func:`~.bilevel.bilevel`, as every method receives them (each
    reads its own options and ignores the others'; see :func:`~.bilevel.bilevel` for their meaning):
    the problem (``F``, ``f``, ``g``, ``h``), the start ``(x0, y0)``, the stopping and logging
    controls, LV-HBA's options (``project`` ... ``multiplier_bound``) and the implicit method's
    (``lower``, ``project_x``, ``lr``)."""

    F: Objective
    f: Objective | None
    g: Objective | None
    h: Objective | None
    x0: Tensor
    y0: Tensor
    max_iter: int
    tol: float
    log_every: int
    monitor: Monitor | None
    project: Projection | None
    project_theta: Callable[[Tensor], Tensor] | None
    alpha: float
    beta: float
    eta: float
    gamma1: float
    gamma2: float
    c0: float
    p: float
    multiplier_bound: float
    lower: CvxpyLowerLevel | None
    project_x: Callable[[Tensor], Tensor] | None
    lr: float


class BilevelInputError(InputError):
    """Bad input to :func:`~.bilevel.bilevel`: shapes, non-finite values, or a lower level that
    cvxpylayers cannot accept."""


def as_vector(name: str, v) -> Tensor:
    """``v`` (array or tensor) as a fresh float64 1-D tensor; :class:`BilevelInputError` naming
    ``name`` if it is empty, not 1-D or not finite."""
    t = torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v), dtype=DTYPE)
    if t.ndim != 1 or t.numel() == 0:
        raise BilevelInputError(f"{name} must be a non-empty 1-D vector, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise BilevelInputError(f"{name} has non-finite entries (nan/inf)")
    return t.clone()


def positive(name: str, value: float, upper: float = math.inf) -> float:
    """``float(value)`` if it lies in ``(0, upper)``; else :class:`BilevelInputError` naming ``name``."""
    value = float(value)
    if not (0.0 < value < upper) or not math.isfinite(value):
        bound = f"(0, {upper})" if math.isfinite(upper) else "(0, inf)"
        raise BilevelInputError(f"{name} must be in {bound}, got {value}")
    return value


def check_scalar(name: str, out, where: str) -> None:
    """Refuse an objective value ``out`` of ``name(x, y)`` that is not a finite scalar tensor."""
    if not isinstance(out, Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise BilevelInputError(f"{name}(x, y) must return a scalar torch tensor, got {shape} {where}")
    if not torch.isfinite(out).all():
        raise BilevelInputError(f"{name}(x, y) is not finite {where}")


def grads(out: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """Gradients of the scalar ``out`` with respect to ``inputs`` (zeros where it does not depend on one)."""
    gs = torch.autograd.grad(out, inputs, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for gi, i in zip(gs, inputs, strict=False)]


class Progress:
    """The bookkeeping of one run of a method: history rows (with the user's ``monitor(x, y)``
    values, whose time is not charged to the method), the stopping message and the result.

    The clock starts at construction; the message is ``"max_iter=N reached"`` unless :meth:`stop`
    ends the run earlier."""

    def __init__(self, max_iter: int, log_every: int, monitor: Monitor | None):
        self.max_iter, self.log_every, self.monitor = max_iter, log_every, monitor
        self.history: list[dict[str, float]] = []
        self.monitor_s = 0.0
        self.converged, self.failed, self.message = False, False, f"max_iter={max_iter} reached"
        self.t0 = time.perf_counter()

    def due(self, k: int) -> bool:
        """Whether iteration ``k`` is logged anyway: every ``log_every``-th and the last."""
        return k % self.log_every == 0 or k == self.max_iter - 1

    def log(self, x: Tensor, y: Tensor, **row: float) -> None:
        """Append ``row`` plus the monitor's values at ``(x, y)`` to the history."""
        tm = time.perf_counter()
        if self.monitor is not None:
            row.update({key: float(v) for key, v in self.monitor(x, y).items()})
        self.history.append(row)
        self.monitor_s += time.perf_counter() - tm

    def stop(self, k: int, failure: str = "") -> None:
        """The run ends at iteration ``k``: converged (the stopping rule held), or not, for the reason ``failure``."""
        self.converged, self.failed = not failure, bool(failure)
        self.message = failure or f"stopping rule met at iteration {k}"

    def result(self, method: str, F: Objective, x: Tensor, y: Tensor, k: int, **extra: Tensor) -> BilevelResult:
        """The :class:`BilevelResult` after iteration ``k`` at ``(x, y)`` (``F`` evaluated there);
        ``extra``: LV-HBA's ``theta``, ``lam``, ``z``."""
        seconds = time.perf_counter() - self.t0 - self.monitor_s
        with torch.no_grad():
            F_end = float(F(x, y))
        return BilevelResult(
            x=x,
            y=y,
            F=F_end,
            nit=k + 1,
            converged=self.converged,
            seconds=seconds,
            method=method,
            history=self.history,
            message=self.message,
            theta=extra.get("theta"),
            lam=extra.get("lam"),
            z=extra.get("z"),
        )


__all__ = [
    "DTYPE",
    "BilevelArgs",
    "BilevelInputError",
    "BilevelResult",
    "CvxpyLowerLevel",
    "Monitor",
    "Objective",
    "Progress",
    "Projection",
    "Tensor",
    "as_vector",
    "check_scalar",
    "grads",
    "positive",
]

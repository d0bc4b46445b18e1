"""What both bilevel methods share: the result, the input error and checks, gradients, history rows.

Functions act on float64 torch vectors (:data:`DTYPE`): ``x`` of shape ``(n,)``, ``y`` of shape
``(m,)``; see :mod:`.bilevel` for the problem and the methods.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

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


def log_row(history: list, monitor, x: Tensor, y: Tensor, **row) -> float:
    """Append ``row`` (plus the user's ``monitor(x, y)`` values) to ``history``; returns the
    seconds spent in the monitor, which are not charged to the method."""
    tm = time.perf_counter()
    if monitor is not None:
        row.update({key: float(v) for key, v in monitor(x, y).items()})
    history.append(row)
    return time.perf_counter() - tm


__all__ = [
    "DTYPE",
    "BilevelInputError",
    "BilevelResult",
    "Monitor",
    "Objective",
    "Projection",
    "Tensor",
    "as_vector",
    "check_scalar",
    "grads",
    "log_row",
    "positive",
]

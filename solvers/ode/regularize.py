"""Solver-error regularizers for neural ODEs (Pal, Edelman & Rackauckas, ICML 2023).

* Local (the paper's method, Section 3 / Algorithm 1): ``R = E_est(t_reg) * |dt|``, the adaptive
  solver's local error estimate of ONE step from ``(t_reg, u(t_reg))``, scaled like the step
  controller's norm, times the step size. ``u(t_reg)`` and ``dt`` are constants; the gradient
  flows through the stages of that one step only.
  - ``unbiased``: ``t_reg ~ U[t0, t1]``; the forward solve outputs ``u`` at ``[t0, t_reg, t1]``
    (output times do not change the step sequence); ``dt`` from the initial-step heuristic.
  - ``biased``: ``t_reg`` is one of the solve's accepted steps (``callback_accept_step``), with
    that step's own ``dt``.
* Global (the ERNODE baseline): ``sum_j E_j |dt_j|`` over every accepted step, differentiated
  through the whole solve. Here each accepted step is re-taken from its recorded start state
  (which carries the graph of the solve): one extra set of stage evaluations per step, counted
  in the NFE.

Every function here counts function evaluations through :class:`CountedFunc`.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torchdiffeq import odeint

from data.errors import InputError, SciflowError

from ._rk import initial_step, one_step_error

Regularizer = Literal["none", "global", "local-unbiased", "local-biased"]
REGULARIZERS: tuple[str, ...] = get_args(Regularizer)


class StepLimitError(SciflowError, RuntimeError):
    """The adaptive solver hit its step limit; the message says where."""


class CountedFunc(torch.nn.Module):
    """Wraps ``f(t, y)``: counts evaluations (``nfe``) and, while ``recording``, records every
    accepted step ``(t0, y0, dt)`` through torchdiffeq's ``callback_accept_step`` hook."""

    def __init__(self, func: torch.nn.Module):
        super().__init__()
        self.func = func
        self.nfe = 0
        self.recording = False
        self.keep_graph = False
        self.steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_t = None

    def forward(self, t, y):
        self.nfe += 1
        self.last_t = t
        out = self.func(t, y)
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"the vector field returned NaN/inf at t={float(t):.4g}")
        return out

    def callback_accept_step(self, t0, y0, dt):
        if self.recording:
            self.steps.append(
                (t0.detach().clone(), y0 if self.keep_graph else y0.detach().clone(), dt.detach().clone())
            )

    def start(self, record: bool = False, keep_graph: bool = False) -> None:
        self.recording, self.keep_graph, self.steps = record, keep_graph, []


def check_tolerances(rtol: float, atol: float) -> None:
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(v) and v > 0):
            raise InputError(f"{name} must be positive and finite, got {v}")


def solve(
    func: CountedFunc,
    y0: torch.Tensor,
    t: torch.Tensor,
    rtol: float,
    atol: float,
    method: str = "dopri5",
    max_steps: int = 10_000,
) -> torch.Tensor:
    """``odeint`` with checked inputs and a step limit that raises :class:`StepLimitError`."""
    check_tolerances(rtol, atol)
    if not torch.isfinite(y0).all():
        raise InputError("initial state contains NaN or inf")
    if t.dim() != 1 or t.numel() < 2 or not bool((t[1:] > t[:-1]).all()):
        raise InputError(f"output times must be a strictly increasing 1-D tensor, got {t.tolist()}")
    try:
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options={"max_num_steps": max_steps})
    except AssertionError as exc:
        if "max_num_steps" in str(exc):
            where = float(func.last_t) if func.last_t is not None else float("nan")
            raise StepLimitError(
                f"adaptive solver hit max_steps={max_steps} near t={where:.4g} (stiff or blowing-up dynamics)"
            ) from exc
        raise


def integrate(
    func: CountedFunc,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    regularizer: Regularizer = "none",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    generator: torch.Generator | None = None,
    max_steps: int = 10_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``y' = func(t, y)`` from ``t0`` to ``t1``; return ``(y(t1), R)`` with ``R`` the
    chosen regularizer (a zero tensor for ``"none"``)."""
    if regularizer not in REGULARIZERS:
        raise InputError(f"unknown regularizer {regularizer!r}; choose one of {REGULARIZERS}")
    zero = torch.zeros((), dtype=y0.dtype, device=y0.device)
    T = lambda *ts: torch.tensor(ts, dtype=torch.float64, device=y0.device)  # noqa: E731
    if regularizer == "local-unbiased":
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        t_reg = t0 + (t1 - t0) * min(max(u, 1e-6), 1 - 1e-6)
        func.start()
        ys = solve(func, y0, T(t0, t_reg, t1), rtol, atol, method, max_steps)
        y_reg = ys[1].detach()
        tr = T(t_reg)[0]
        dt = initial_step(func, tr, y_reg, method, rtol, atol)
        return ys[-1], one_step_error(func, tr, y_reg, dt, method, rtol, atol) * dt.abs()
    func.start(record=regularizer != "none", keep_graph=regularizer == "global")
    ys = solve(func, y0, T(t0, t1), rtol, atol, method, max_steps)
    steps, func.recording = func.steps, False
    if regularizer == "none" or not steps:
        return ys[-1], zero
    if regularizer == "local-biased":
        i = int(torch.randint(len(steps), (), generator=generator))
        t_s, y_s, dt = steps[i]
        return ys[-1], one_step_error(func, t_s, y_s, dt, method, rtol, atol) * dt.abs()
    total = zero
    for t_s, y_s, dt in steps:  # global: through the whole solve
        total = total + one_step_error(func, t_s, y_s, dt, method, rtol, atol) * dt.abs()
    return ys[-1], total

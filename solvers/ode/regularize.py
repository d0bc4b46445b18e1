"""Solver-error regularizers for neural ODEs (Pal, Edelman & Rackauckas, ICML 2023).

* Local (the paper's method, Section 3 / Algorithm 1): ``R = E_est(t_reg) * |dt|``, the adaptive
  solver's local error estimate of ONE step from ``(t_reg, u(t_reg))``, scaled like the step
  controller's norm, times the step size. ``u(t_reg)`` and ``dt`` are constants; the gradient
  flows through the stages of that one step only, so the main solve may use any sensitivity
  method (``adjoint=True``: ``torchdiffeq.odeint_adjoint``).
  - ``unbiased``: ``t_reg ~ U[t0, t1]``; the forward solve outputs ``u`` at ``[t0, t_reg, t1]``
    (output times do not change the step sequence). ``dt`` (``local_dt``):
    ``"controller"`` (default) is the step the adaptive solver accepted over ``t_reg``;
    ``"initial"`` is the initial-step heuristic from ``(t_reg, u(t_reg))``, which is what the
    reference (LocalRegNeuralDE.jl, ``_get_ode_integrator``: a fresh integrator's first step) does.
    Deviation, on purpose: the heuristic aims at an error estimate ~0.01^(1/order) below the
    controller's, so with a smooth field ``E(h) * h`` is ~1e-9 (measured on digits: 3.7e-9 against
    0.48 for the global regularizer) and its gradient ~1e-7 of the task loss's: it regularizes
    nothing (NFE 1.0x in the benchmark). The controller's step sits at ``E ~ 0.5`` like the steps
    the global regularizer sums, and ``t_reg`` stays uniform in time.
  - ``biased``: ``t_reg`` is one of the solve's accepted steps (``callback_accept_step``), with
    that step's own ``dt`` (the reference draws the step boundary, then uses the heuristic ``dt``:
    the same deviation as above).
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
from torchdiffeq import odeint, odeint_adjoint

from data.errors import InputError, SciflowError

from ._rk import initial_step, one_step_error

Regularizer = Literal["none", "global", "local-unbiased", "local-biased"]
REGULARIZERS: tuple[str, ...] = get_args(Regularizer)
#: where the unbiased regularizer's step size comes from (see the module docstring)
LocalDt = Literal["controller", "initial"]
LOCAL_DTS: tuple[str, ...] = get_args(LocalDt)


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


def check_dtypes(func: torch.nn.Module, y0: torch.Tensor) -> None:
    """The state and the vector field's parameters must share a dtype: a float32 field fed a float64
    state (or the reverse) would fail inside the solver with a matmul error, or silently promote."""
    p = next(func.parameters(), None)
    if p is not None and p.is_floating_point() and p.dtype != y0.dtype:
        raise InputError(
            f"dtype mix: the vector field's parameters are {p.dtype}, y0 is {y0.dtype}; "
            f"cast the model (model.to({y0.dtype})) or the state (y0.to({p.dtype}))"
        )


def solve(
    func: CountedFunc,
    y0: torch.Tensor,
    t: torch.Tensor,
    rtol: float,
    atol: float,
    method: str = "dopri5",
    max_steps: int = 10_000,
    adjoint: bool = False,
) -> torch.Tensor:
    """``odeint`` (or ``odeint_adjoint`` when ``adjoint``) with checked inputs and a step limit that
    raises :class:`StepLimitError`. The adjoint integrates the parameters' adjoint with the
    ``seminorm`` (state and its adjoint only in the error norm), as torchdiffeq recommends."""
    check_tolerances(rtol, atol)
    if not torch.isfinite(y0).all():
        raise InputError("initial state contains NaN or inf")
    if t.dim() != 1 or t.numel() < 2 or not bool((t[1:] > t[:-1]).all()):
        raise InputError(f"output times must be a strictly increasing 1-D tensor, got {t.tolist()}")
    check_dtypes(func, y0)
    options = {"max_num_steps": max_steps}
    try:
        if adjoint:
            return odeint_adjoint(
                func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                adjoint_params=tuple(func.parameters()), adjoint_options={**options, "norm": "seminorm"},
            )  # fmt: skip
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError as exc:
        if "max_num_steps" in str(exc):
            where = float(func.last_t) if func.last_t is not None else float("nan")
            raise StepLimitError(
                f"adaptive solver hit max_steps={max_steps} near t={where:.4g} (stiff or blowing-up dynamics)"
            ) from exc
        raise


def _local(func, t, y, dt, method, rtol, atol) -> torch.Tensor:
    """``E_est * |dt|`` of one step from ``(t, y)``, in ``y``'s dtype."""
    return one_step_error(func, t, y, dt, method, rtol, atol) * dt.abs().to(y.dtype)


def step_over(steps: list, t: float) -> torch.Tensor:
    """The size of the accepted step that covers time ``t`` (``t_j <= t < t_j + dt_j``; the last
    step, which may overshoot the end, covers what is left)."""
    for t_j, _, dt_j in steps:
        if float(t_j) <= t < float(t_j + dt_j):
            return dt_j
    return steps[-1][2]


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
    adjoint: bool = False,
    local_dt: LocalDt = "controller",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``y' = func(t, y)`` from ``t0`` to ``t1``; return ``(y(t1), R)`` with ``R`` the
    chosen regularizer in ``y0``'s dtype (a zero tensor for ``"none"``).

    ``adjoint``: gradients of ``y(t1)`` by the adjoint method (``odeint_adjoint``, memory constant
    in the number of steps); the local regularizers keep their own one-step graph. ``"global"``
    differentiates through every step of the solve, which the adjoint does not keep: refused.
    ``local_dt``: the unbiased variant's step size (module docstring)."""
    if regularizer not in REGULARIZERS:
        raise InputError(f"unknown regularizer {regularizer!r}; choose one of {REGULARIZERS}")
    if local_dt not in LOCAL_DTS:
        raise InputError(f"unknown local_dt {local_dt!r}; choose one of {LOCAL_DTS}")
    if adjoint and regularizer == "global":
        raise InputError(
            "regularizer='global' differentiates through every step of the solve, which adjoint=True does "
            "not keep; use a local regularizer with the adjoint (the paper's point) or adjoint=False"
        )
    zero = torch.zeros((), dtype=y0.dtype, device=y0.device)
    T = lambda *ts: torch.tensor(ts, dtype=torch.float64, device=y0.device)  # noqa: E731
    if regularizer == "local-unbiased":
        u = torch.rand((), generator=generator, dtype=torch.float64).item()
        t_reg = t0 + (t1 - t0) * min(max(u, 1e-6), 1 - 1e-6)
        func.start(record=local_dt == "controller")
        ys = solve(func, y0, T(t0, t_reg, t1), rtol, atol, method, max_steps, adjoint)
        steps, func.recording = func.steps, False
        y_reg, tr = ys[1].detach(), T(t_reg)[0]
        if local_dt == "initial" or not steps:
            dt = initial_step(func, tr, y_reg, method, rtol, atol)
        else:
            dt = step_over(steps, t_reg)
        return ys[-1], _local(func, tr, y_reg, dt, method, rtol, atol)
    func.start(record=regularizer != "none", keep_graph=regularizer == "global")
    ys = solve(func, y0, T(t0, t1), rtol, atol, method, max_steps, adjoint)
    steps, func.recording = func.steps, False
    if regularizer == "none" or not steps:
        return ys[-1], zero
    if regularizer == "local-biased":
        i = int(torch.randint(len(steps), (), generator=generator))
        t_s, y_s, dt = steps[i]
        return ys[-1], _local(func, t_s, y_s, dt, method, rtol, atol)
    total = zero
    for t_s, y_s, dt in steps:  # global: through the whole solve
        total = total + _local(func, t_s, y_s, dt, method, rtol, atol)
    return ys[-1], total

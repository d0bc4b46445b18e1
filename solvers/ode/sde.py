"""Neural SDEs with local solver-error regularization, on torchsde (Pal, Edelman & Rackauckas,
ICML 2023, the SDE case: their Section 3 applies the local regularizer to SDE solvers' error
estimates as it does to ODE solvers').

    y1, R = integrate_sde(CountedSDE(sde), y0, 0.0, 1.0, "local-unbiased", rtol=1e-2, atol=1e-2)

The main solve is ``torchsde.sdeint(..., adaptive=True)``. torchsde's error control is step
doubling for every method: one step of size ``h`` against two of ``h/2`` on the same Brownian
path, ``E = rms((y_h - y_{h/2}) / max(atol + rtol max(|y_h|, |y_{h/2}|), 1e-7))``; a step is
accepted when ``E <= 1``. The local regularizer is that estimate for ONE step:

* ``local-unbiased``: ``t_reg ~ U[t0, t1]``, ``u(t_reg)`` from the solve (torchsde's output at an
  interior time, a constant), ``h`` = the step the controller accepted over ``t_reg``;
* ``local-biased``: the start ``(t_j, y_j)`` and size ``h_j`` of a uniformly drawn accepted step;

``R = E(t_reg, u(t_reg), h) * h``, differentiable in the drift and diffusion parameters through
the two small solves (``sdeint`` with ``dt = h`` and ``dt = h/2``, ``adaptive=False``) on a fresh
Brownian increment over ``[t_reg, t_reg + h]`` (the reference draws a fresh increment too).

Deviations from the reference (LocalRegNeuralDE.jl, SOSRI with its embedded estimate, step from
a fresh integrator's initial-step heuristic): torchsde has no embedded SRI estimate, and the
estimate its own controller uses is step doubling, so that is what is penalized here; ``h`` is the
controller's accepted step, not a heuristic one, for the reason given in :mod:`solvers.ode.regularize`.

The accepted steps are read from the drift's call times: ``euler`` and ``milstein`` evaluate the
drift once per step at its start, so each adaptive trial shows as ``(s, s, s + h/2)`` (the full
step, then the two halves) after sdeint's one shape-check call. Other methods (``srk``) evaluate
the drift at stage times as well and are refused with a regularizer.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torchsde

from data.errors import InputError

from .regularize import StepLimitError, check_tolerances

SDERegularizer = Literal["none", "local-unbiased", "local-biased"]
SDE_REGULARIZERS: tuple[str, ...] = get_args(SDERegularizer)
#: methods whose accepted steps can be read from the drift's call times
STEP_READABLE = ("euler", "milstein")


class CountedSDE(torch.nn.Module):
    """Wraps a torchsde SDE module (``f(t, y)``, ``g(t, y)``, ``noise_type``, ``sde_type``): counts
    drift and diffusion evaluations (``nfe_f``, ``nfe_g``) and records the drift's call times."""

    def __init__(self, sde: torch.nn.Module):
        super().__init__()
        for attr in ("noise_type", "sde_type"):
            if not hasattr(sde, attr):
                raise InputError(f"the SDE module needs a {attr!r} attribute (torchsde's convention)")
        self.sde = sde
        self.noise_type: str = str(sde.noise_type)
        self.sde_type: str = str(sde.sde_type)
        self.nfe_f = self.nfe_g = 0
        self.times: list[float] = []
        self.steps: list[tuple[float, float]] = []  # the last regularized solve's accepted (start, size)

    def f(self, t, y):
        self.nfe_f += 1
        self.times.append(float(t))
        out = self.sde.f(t, y)
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"the drift returned NaN/inf at t={float(t):.4g}")
        return out

    def g(self, t, y):
        self.nfe_g += 1
        return self.sde.g(t, y)

    @property
    def nfe(self) -> int:
        return self.nfe_f + self.nfe_g

    def reset(self) -> None:
        self.nfe_f = self.nfe_g = 0
        self.times = []


def accepted_steps(times: list[float], t1: float) -> list[tuple[float, float]]:
    """``(start, size)`` of every accepted step of one adaptive ``sdeint`` call from the drift's call
    times (module docstring): trial ``k`` starts at ``s_k`` with size ``h_k = 2 (m_k - s_k)``, and
    was accepted when the next trial starts later (the last one ends the solve)."""
    calls = times[1:]  # the first is sdeint's shape check
    if len(calls) % 3:
        raise InputError(f"cannot read accepted steps from {len(calls)} drift calls (not full/half/half triples)")
    trials = [(calls[i], 2.0 * (calls[i + 2] - calls[i])) for i in range(0, len(calls), 3)]
    steps = []
    for k, (s, h) in enumerate(trials):
        if k + 1 == len(trials) or trials[k + 1][0] > s:
            steps.append((s, min(h, t1 - s) if k + 1 == len(trials) else h))
    return steps


def step_error(
    sde: CountedSDE, t: float, y: torch.Tensor, h: float, rtol: float, atol: float, method: str, seed: int
) -> torch.Tensor:
    """torchsde's step-doubling error estimate of one step of size ``h`` from ``(t, y)`` on a fresh
    Brownian increment (entropy ``seed``), as a differentiable tensor."""
    ts = torch.tensor([t, t + h], dtype=y.dtype, device=y.device)
    m = y.shape[-1] if sde.noise_type in ("diagonal", "additive") else 1
    bm = torchsde.BrownianInterval(t0=t, t1=t + h, size=(y.shape[0], m), dtype=y.dtype, device=y.device, entropy=seed)
    full = torchsde.sdeint(sde, y, ts, bm=bm, method=method, dt=h, adaptive=False)[-1]
    half = torchsde.sdeint(sde, y, ts, bm=bm, method=method, dt=h / 2, adaptive=False)[-1]
    scale = (rtol * torch.maximum(full.abs(), half.abs()) + atol).clamp_min(1e-7)
    return ((full - half) / scale).pow(2).mean().sqrt()


def check_noise(sde: CountedSDE, y0: torch.Tensor, t0: float) -> None:
    """The diffusion's shape must match the state and the declared noise type (torchsde's convention:
    ``diagonal`` -> ``(batch, d)``, ``additive`` / ``general`` -> ``(batch, d, m)``, ``scalar`` ->
    ``(batch, d, 1)``); refused before solving, naming both shapes."""
    with torch.no_grad():
        g = sde.g(torch.tensor(t0, dtype=y0.dtype, device=y0.device), y0)
    sde.nfe_g -= 1  # a check, not a solver evaluation
    b, d = y0.shape
    ok = {
        "diagonal": g.shape == (b, d),
        "additive": g.dim() == 3 and g.shape[:2] == (b, d),
        "general": g.dim() == 3 and g.shape[:2] == (b, d),
        "scalar": g.shape == (b, d, 1),
    }.get(sde.noise_type)
    if ok is None:
        raise InputError(f"noise_type {sde.noise_type!r} is not one of diagonal, additive, general, scalar")
    if not ok:
        raise InputError(
            f"the diffusion g(t, y) has shape {tuple(g.shape)}, which does not match the state {tuple(y0.shape)} "
            f"for noise_type={sde.noise_type!r} (diagonal: (batch, d); additive/general: (batch, d, m); scalar: (batch, d, 1))"
        )


def integrate_sde(
    sde: CountedSDE,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    regularizer: SDERegularizer = "none",
    rtol: float = 1e-2,
    atol: float = 1e-2,
    dt0: float = 1e-2,
    method: str = "euler",
    generator: torch.Generator | None = None,
    max_steps: int = 10_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the SDE from ``t0`` to ``t1`` adaptively; return ``(y(t1), R)`` (``R`` zero for ``"none"``).

    ``y0``: ``(batch, d)``; ``dt0``: torchsde's first trial step (it has no initial-step heuristic);
    ``generator``: draws the Brownian path's entropy, ``t_reg`` and the regularizer's increment, so
    a seeded generator reproduces the solve. Raises :class:`StepLimitError` past ``max_steps`` trials."""
    if regularizer not in SDE_REGULARIZERS:
        raise InputError(f"unknown SDE regularizer {regularizer!r}; choose one of {SDE_REGULARIZERS}")
    if regularizer != "none" and method not in STEP_READABLE:
        raise InputError(f"method={method!r}: the local regularizer needs one of {STEP_READABLE} (module docstring)")
    check_tolerances(rtol, atol)
    if y0.dim() != 2 or not torch.isfinite(y0).all():
        raise InputError(f"y0 must be a finite (batch, d) tensor, got shape {tuple(y0.shape)}")
    if not (math.isfinite(dt0) and 0 < dt0 <= t1 - t0):
        raise InputError(f"dt0 must be in (0, t1 - t0 = {t1 - t0}], got {dt0}")
    p = next(sde.parameters(), None)
    if p is not None and p.is_floating_point() and p.dtype != y0.dtype:
        raise InputError(f"dtype mix: the SDE's parameters are {p.dtype}, y0 is {y0.dtype}")
    check_noise(sde, y0, t0)
    draw = lambda: int(torch.randint(0, 2**31 - 1, (), generator=generator))  # noqa: E731
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    t_reg = t0 + (t1 - t0) * min(max(u, 1e-6), 1 - 1e-6)
    # output times do not change torchsde's steps (outputs interpolate between accepted states): the
    # biased variant asks for a grid to read a step's start state from
    if regularizer == "local-unbiased":
        ts = [t0, t_reg, t1]
    elif regularizer == "local-biased":
        ts = [t0 + (t1 - t0) * k / 32 for k in range(33)]
    else:
        ts = [t0, t1]
    bm = torchsde.BrownianInterval(
        t0=t0, t1=t1, size=(y0.shape[0], y0.shape[1]), dtype=y0.dtype, device=y0.device, entropy=draw()
    )
    sde.times = []
    ys = torchsde.sdeint(
        sde, y0, torch.tensor(ts, dtype=y0.dtype, device=y0.device), bm=bm, method=method,
        dt=dt0, adaptive=True, rtol=rtol, atol=atol, dt_min=(t1 - t0) / max_steps,
    )  # fmt: skip
    if regularizer == "none":
        return ys[-1], torch.zeros((), dtype=y0.dtype, device=y0.device)
    steps = sde.steps = accepted_steps(sde.times, t1)
    if len(steps) >= max_steps:
        raise StepLimitError(f"the adaptive SDE solve took {len(steps)} steps (max_steps={max_steps})")
    if regularizer == "local-unbiased":
        h = next((h for s, h in steps if s <= t_reg < s + h), steps[-1][1])
        start, y_start = t_reg, ys[1].detach()
    else:
        j = int(torch.randint(len(steps), (), generator=generator))
        start, h = steps[j]
        y_start = _state_at(ys, ts, start)
    h = min(h, t1 - start) if start + h > t1 else h
    err = step_error(sde, start, y_start, h, rtol, atol, method, draw())
    return ys[-1], err * h


def _state_at(ys: torch.Tensor, ts: list[float], t: float) -> torch.Tensor:
    """A detached state at time ``t`` (the biased variant's step start), linearly interpolated
    between the outputs on ``ts`` around it, as torchsde interpolates between accepted states."""
    k = max(i for i, s in enumerate(ts) if s <= t) if t > ts[0] else 0
    if k == len(ts) - 1:
        return ys[-1].detach()
    w = (t - ts[k]) / (ts[k + 1] - ts[k])
    return ((1 - w) * ys[k] + w * ys[k + 1]).detach()


__all__ = [
    "SDE_REGULARIZERS", "STEP_READABLE", "CountedSDE", "SDERegularizer", "accepted_steps", "check_noise",
    "integrate_sde", "step_error",
]  # fmt: skip

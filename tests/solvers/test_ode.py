"""Solver-error regularizers: the estimate against a hand-computed Dormand-Prince step, its dt
scaling, NFE counting, the regularizer's gradient, and bad input."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from data.errors import InputError
from operators.node import ODETrainConfig
from solvers.ode import CountedFunc, StepLimitError, integrate, solve
from solvers.ode._rk import initial_step, one_step_error

from methods import ODE_REGULARIZERS

# Dormand-Prince 5(4): stages, 5th-order weights, and the embedded 4th-order weights torchdiffeq
# uses (Shampine's alternative set, 1951/21600 ..., not Dormand-Prince's 5179/57600 ...)
C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]
A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
B5 = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
B4 = np.array([1951 / 21600, 0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60])


def _hand_step(lam, y0, dt, rtol, atol):
    """The error ratio, and the cancellation factor max sum|dt (b5 - b4)_i k_i| / |err| of its estimate."""
    k = []
    for i in range(7):
        yi = y0 + dt * sum(a * kj for a, kj in zip(A[i], k, strict=False))
        k.append(lam * yi)
    k = np.array(k)
    y1 = y0 + dt * B5 @ k
    err = dt * (B5 - B4) @ k
    cancellation = np.max(dt * np.abs(B5 - B4) @ np.abs(k) / np.abs(err))
    return np.sqrt(np.mean((err / (atol + rtol * np.maximum(abs(y0), abs(y1)))) ** 2)), cancellation


class Linear(torch.nn.Module):
    def __init__(self, lam):
        super().__init__()
        self.lam = torch.nn.Parameter(torch.tensor(lam, dtype=torch.float64))

    def forward(self, t, y):
        return self.lam * y


@pytest.mark.parametrize("dt", [0.5, 0.1, 0.02])
def test_error_estimate_matches_a_hand_computed_dopri5_step(dt):
    lam, y0, rtol, atol = -1.3, np.array([0.7, -2.0, 1.1]), 1e-6, 1e-6
    t0, dt64 = torch.tensor(0.0, dtype=torch.float64), torch.tensor(dt, dtype=torch.float64)  # not float32-rounded
    got = one_step_error(Linear(lam), t0, torch.tensor(y0), dt64, "dopri5", rtol, atol)
    want, cancellation = _hand_step(lam, y0, dt, rtol, atol)
    # err = dt (b5 - b4) . k cancels digits: its relative rounding error is ~eps x the cancellation
    # factor (4e2 / 6e5 / 4e8 for dt = 0.5 / 0.1 / 0.02). Two float64 computations (7 stages, a 7-term
    # sum each): 32 eps x cancellation. Measured <= 0.25 eps x cancellation (the hand step's dot
    # products under OpenBLAS' Haswell and Prescott kernels).
    assert float(got.detach()) == pytest.approx(want, rel=32 * np.finfo(np.float64).eps * cancellation)


def test_error_estimate_scales_as_dt_to_the_fifth():
    f, y0 = Linear(-1.3), torch.tensor([0.7, -2.0, 1.1], dtype=torch.float64)
    t0 = torch.tensor(0.0, dtype=torch.float64)
    e = [
        float(one_step_error(f, t0, y0, torch.tensor(dt, dtype=torch.float64), "dopri5", 1e-6, 1e-6).detach())
        for dt in (0.04, 0.02, 0.01)
    ]
    # the embedded estimate (already multiplied by dt) is O(dt^5): a halving divides it by 2^5 = 32, up
    # to the O(dt) next term (measured 32.33, 32.17); +-4 admits a 12 % correction. Rounding (eps x
    # cancellation ~ 1e-7) cannot move a ratio by that.
    assert 28 < e[0] / e[1] < 36 and 28 < e[1] / e[2] < 36


def test_nfe_counting():
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, t, y):
            calls.append(1)
            return -y

    f = CountedFunc(Spy())
    y = solve(f, torch.ones(3, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), 1e-6, 1e-6)
    assert f.nfe == len(calls) > 0
    # dopri5 at rtol = atol = 1e-6 keeps each step's local error below ~1e-6; the global error on
    # [0, 1] is a few times that: 10 x tol (measured 1.2e-7)
    assert torch.allclose(y[-1], torch.full((3,), np.exp(-1.0), dtype=torch.float64), rtol=0, atol=1e-5)
    f.nfe = 0
    f.start(record=True)
    solve(f, torch.ones(3, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64), 1e-6, 1e-6)
    # dopri5 is FSAL: f0 and one more evaluation to pick the first step, then 6 per step attempt
    assert (f.nfe - 2) % 6 == 0 and 0 < len(f.steps) <= (f.nfe - 2) // 6


def test_regularizer_gradient_matches_finite_differences():
    y0, t, dt = torch.tensor([0.7, -2.0], dtype=torch.float64), torch.tensor(0.3), torch.tensor(0.2)
    f = Linear(-1.3)
    R = one_step_error(f, t, y0, dt, "dopri5", 1e-6, 1e-6) * dt
    (g,) = torch.autograd.grad(R, f.lam)
    h = 1e-6
    with torch.no_grad():
        rp = one_step_error(Linear(-1.3 + h), t, y0, dt, "dopri5", 1e-6, 1e-6) * dt
        rm = one_step_error(Linear(-1.3 - h), t, y0, dt, "dopri5", 1e-6, 1e-6) * dt
    # central differences: truncation ~h^2 (negligible at h = 1e-6), noise ~eps x cancellation (~5e2 at
    # dt = 0.2) x R / h ~ 1e-8 of |g|; measured 2.5e-8 relative, so 1e-5 leaves a 400x margin
    assert float(g) == pytest.approx(float((rp - rm) / (2 * h)), rel=1e-5)


@pytest.mark.parametrize("reg", [r for r in ODE_REGULARIZERS if r != "none"])
def test_each_regularizer_is_positive_and_differentiable(reg):
    f = CountedFunc(Linear(-1.3))
    y0 = torch.tensor([0.7, -2.0], dtype=torch.float64)
    y1, R = integrate(f, y0, 0.0, 1.0, reg, 1e-6, 1e-6, generator=torch.Generator().manual_seed(0))
    assert R.item() > 0
    (g,) = torch.autograd.grad(R, f.func.lam)
    assert torch.isfinite(g)
    assert torch.allclose(y1, y0 * np.exp(-1.3), rtol=0, atol=1e-5)  # 10 x tol, as above (measured 8.8e-8)


def test_unbiased_uses_the_initial_step_heuristic_and_detached_state():
    f = CountedFunc(Linear(-1.3))
    dt = initial_step(
        f, torch.tensor(0.5, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64), "dopri5", 1e-6, 1e-6
    )
    assert 0 < float(dt) < 1


class Tanh(torch.nn.Module):
    """A small smooth field, like the neural ODEs' (3 -> 16 -> 3)."""

    def __init__(self, dtype=torch.float64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)

    def forward(self, t, y):
        return self.net(y)


def test_unbiased_takes_the_controllers_step_and_the_reference_heuristic_regularizes_nothing():
    f = CountedFunc(Tanh())
    y0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    _, r_ctrl = integrate(f, y0, 0.0, 1.0, "local-unbiased", 1e-5, 1e-5, generator=g())
    _, r_init = integrate(f, y0, 0.0, 1.0, "local-unbiased", 1e-5, 1e-5, generator=g(), local_dt="initial")
    _, r_biased = integrate(f, y0, 0.0, 1.0, "local-biased", 1e-5, 1e-5, generator=g())
    # the accepted steps sit at error ratios ~0.1-1 (the controller's target); the initial-step
    # heuristic aims ~0.01^(1/5) lower in step size, i.e. an error ratio ~1e-5-1e-8 smaller
    assert float(r_ctrl) > 1e-4 and float(r_init) < 1e-3 * float(r_ctrl)
    assert 0.1 < float(r_ctrl) / float(r_biased) < 10  # same kind of step, another time in it


@pytest.mark.parametrize("reg", [r for r in ODE_REGULARIZERS if r != "none"])
def test_regularizers_work_in_float32_and_return_the_states_dtype(reg):
    f32, f64 = CountedFunc(Tanh(torch.float32)), CountedFunc(Tanh(torch.float64))
    y0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = {}
    for f, y in ((f32, y0.float()), (f64, y0)):
        y1, r = integrate(f, y, 0.0, 1.0, reg, 1e-5, 1e-5, generator=torch.Generator().manual_seed(1))
        assert y1.dtype == y.dtype and r.dtype == y.dtype
        r.backward()
        assert all(torch.isfinite(p.grad).all() for p in f.parameters())
        out[y.dtype] = (y1.detach().double(), float(r), f.nfe)
    # the same field in float32: the solution to ~tol (1e-5, plus float32 rounding of the weights),
    # R to a few percent (a ratio of small differences of stages, rounded in float32)
    (y32, r32, _), (y64, r64, _) = out[torch.float32], out[torch.float64]
    assert (y32 - y64).abs().max() < 1e-4 * y64.abs().max() + 1e-4
    assert r32 == pytest.approx(r64, rel=0.05)


def test_a_dtype_mix_is_refused_naming_both_dtypes():
    f = CountedFunc(Tanh(torch.float32))
    with pytest.raises(
        InputError, match=r"dtype mix: the vector field's parameters are torch.float32, y0 is torch.float64"
    ):
        integrate(f, torch.ones(2, 3, dtype=torch.float64), 0.0, 1.0, "local-biased")


@pytest.mark.parametrize("reg", ["none", "local-unbiased", "local-biased"])
def test_adjoint_gradients_match_the_direct_ones(reg):
    """``adjoint=True`` solves the main ODE with odeint_adjoint; the local regularizer keeps its own
    one-step graph. Gradients agree to the solvers' tolerance (1e-8; measured 8e-8 relative: the
    backward adjoint solve's error, ~tol times the flow's sensitivity), so 1e-5 is a safe bound."""
    f = CountedFunc(Tanh())
    y0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for adjoint in (False, True):
        f.zero_grad()
        y1, r = integrate(f, y0, 0.0, 1.0, reg, 1e-8, 1e-8, generator=torch.Generator().manual_seed(1), adjoint=adjoint)
        (y1.pow(2).sum() + 10 * r).backward()
        grads.append(torch.cat([p.grad.flatten() for p in f.parameters()]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


def test_the_global_regularizer_refuses_the_adjoint():
    with pytest.raises(InputError, match="adjoint=True does not keep"):
        integrate(CountedFunc(Tanh()), torch.ones(2, 3, dtype=torch.float64), 0.0, 1.0, "global", adjoint=True)


def test_bad_input():
    f = CountedFunc(Linear(-1.0))
    y0 = torch.ones(2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="rtol must be positive"):
        solve(f, y0, t, -1e-6, 1e-6)
    with pytest.raises(ValueError, match="NaN or inf"):
        solve(f, torch.tensor([np.nan, 1.0], dtype=torch.float64), t, 1e-6, 1e-6)
    with pytest.raises(ValueError, match="strictly increasing"):
        solve(f, y0, torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64), 1e-6, 1e-6)
    with pytest.raises(ValueError, match="unknown regularizer"):
        integrate(f, y0, 0.0, 1.0, "l2")

    class Blowup(torch.nn.Module):
        def forward(self, t, y):
            return y**2

    with pytest.raises(StepLimitError, match="max_steps=50 near t="):
        solve(CountedFunc(Blowup()), y0, torch.tensor([0.0, 2.0], dtype=torch.float64), 1e-8, 1e-8, max_steps=50)
    with pytest.raises(ValidationError, match="w_start"):
        ODETrainConfig(w_start=-1.0)
    with pytest.raises(ValidationError, match="regularizer"):
        ODETrainConfig(regularizer="l2")


def test_regularizer_names_are_written_once_and_step_limit_is_a_sciflow_error():
    from typing import get_args

    from data.errors import SciflowError
    from solvers.ode.regularize import REGULARIZERS, Regularizer

    assert REGULARIZERS == get_args(Regularizer) == ("none", "global", "local-unbiased", "local-biased")
    assert issubclass(StepLimitError, SciflowError) and issubclass(StepLimitError, RuntimeError)

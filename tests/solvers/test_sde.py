"""Neural SDEs on torchsde with the local regularizer (solvers.ode.sde): the accepted steps read
from the drift's call times, a differentiable step-doubling estimate, and bad input."""

import pytest
import torch

from data.errors import InputError
from solvers.ode.sde import CountedSDE, accepted_steps, integrate_sde, step_error


class OU(torch.nn.Module):
    """dX = -a X dt + s dW (additive noise), learnable a and s."""

    noise_type, sde_type = "additive", "ito"

    def __init__(self, a=1.5, s=0.4):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.s = torch.nn.Parameter(torch.tensor(s, dtype=torch.float64))

    def f(self, t, y):
        return -self.a * y

    def g(self, t, y):
        return (self.s * torch.eye(y.shape[1], dtype=y.dtype)).expand(y.shape[0], -1, -1)


def test_accepted_steps_are_read_from_full_half_half_triples():
    # shape check at 0; trial (0, 0.1) rejected, (0, 0.05) accepted, (0.05, 0.07) accepted, last clipped
    times = [0.0, 0.0, 0.0, 0.05, 0.0, 0.0, 0.025, 0.05, 0.05, 0.085, 0.12, 0.12, 0.5]
    steps = accepted_steps(times, 1.0)
    assert [x for step in steps for x in step] == pytest.approx([0.0, 0.05, 0.05, 0.07, 0.12, 0.76])
    with pytest.raises(InputError, match="not full/half/half triples"):
        accepted_steps(times[:-1], 1.0)


def test_the_solve_covers_the_interval_and_each_regularizer_is_differentiable():
    sde = CountedSDE(OU())
    y0 = torch.ones(64, 2, dtype=torch.float64)
    for reg in ("local-unbiased", "local-biased"):
        sde.reset()
        y1, r = integrate_sde(sde, y0, 0.0, 1.0, reg, 1e-3, 1e-3, dt0=0.1, generator=torch.Generator().manual_seed(0))
        assert sum(h for _, h in sde.steps) == pytest.approx(1.0)  # accepted steps tile [0, 1]
        assert r > 0 and r.requires_grad
        (ga,) = torch.autograd.grad(r, sde.sde.a)
        assert torch.isfinite(ga) and ga != 0
    # E(X_1) = exp(-a) X_0: 64 paths, std of the mean ~0.4 sqrt((1 - e^-3)/3) / 8 ~ 0.016 per coordinate
    assert float(y1.mean()) == pytest.approx(float(torch.exp(torch.tensor(-1.5))), abs=0.1)


def test_the_step_doubling_estimate_shrinks_with_the_step():
    """For additive noise, one Euler step of h against two of h/2 differ by O(h^1.5) (the drift's
    response to the first half's noise): E(h) * h falls like ~h^1.5 as h halves (here a factor ~2.8)."""
    sde = CountedSDE(OU(a=3.0, s=1.0))
    y = torch.ones(4096, 1, dtype=torch.float64)
    e = [float(step_error(sde, 0.0, y, h, 1e-3, 1e-3, "euler", seed=1)) for h in (0.2, 0.1, 0.05)]
    assert e[0] > e[1] > e[2]
    assert 1.8 < e[0] / e[1] < 4.5 and 1.8 < e[1] / e[2] < 4.5


def test_bad_input_is_refused_before_solving():
    y0 = torch.ones(8, 2, dtype=torch.float64)
    with pytest.raises(InputError, match="unknown SDE regularizer 'global'"):
        integrate_sde(CountedSDE(OU()), y0, 0.0, 1.0, "global")
    with pytest.raises(InputError, match="method='srk': the local regularizer needs one of"):
        integrate_sde(CountedSDE(OU()), y0, 0.0, 1.0, "local-unbiased", method="srk")

    class WrongNoise(OU):
        noise_type = "diagonal"  # but g returns (batch, d, d)

    with pytest.raises(InputError, match=r"has shape \(8, 2, 2\), which does not match the state \(8, 2\)"):
        integrate_sde(CountedSDE(WrongNoise()), y0, 0.0, 1.0)
    with pytest.raises(InputError, match="dtype mix"):
        integrate_sde(CountedSDE(OU()), y0.float(), 0.0, 1.0)
    with pytest.raises(InputError, match="dt0 must be in"):
        integrate_sde(CountedSDE(OU()), y0, 0.0, 1.0, dt0=2.0)

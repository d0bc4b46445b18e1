"""The one place that touches torchdiffeq's private API (pinned: torchdiffeq==0.2.5).

``one_step_error`` takes a single adaptive Runge-Kutta step with the solver's own tableau and
returns the error ratio the step controller would see; ``initial_step`` is torchdiffeq's
initial step-size heuristic (Hairer, Norsett & Wanner, Sec. II.4).
"""

from __future__ import annotations

import torch
import torchdiffeq
from torchdiffeq._impl.dopri5 import _DORMAND_PRINCE_SHAMPINE_TABLEAU
from torchdiffeq._impl.misc import _compute_error_ratio, _rms_norm, _select_initial_step
from torchdiffeq._impl.rk_common import _runge_kutta_step

from data.errors import InputError

if torchdiffeq.__version__ != "0.2.5":  # private names below are those of 0.2.5
    raise ImportError(f"solvers.ode needs torchdiffeq 0.2.5, found {torchdiffeq.__version__}")

#: method name -> (Butcher tableau, order of the error estimate used for the initial step)
TABLEAUS = {"dopri5": (_DORMAND_PRINCE_SHAMPINE_TABLEAU, 5)}


class _AcceptPerturb(torch.nn.Module):
    """``func(t, y)`` with the ``perturb=`` keyword that ``_runge_kutta_step`` passes."""

    def __init__(self, func):
        super().__init__()
        self.func = func

    def forward(self, t, y, perturb=None):
        return self.func(t, y)


def _tableau(method: str):
    try:
        return TABLEAUS[method]
    except KeyError:
        raise InputError(
            f"local error estimates need an embedded RK method; {method!r} is not one of {sorted(TABLEAUS)}"
        ) from None


def initial_step(func, t: torch.Tensor, y: torch.Tensor, method: str, rtol: float, atol: float) -> torch.Tensor:
    """torchdiffeq's initial step size from ``(t, y)`` (no gradient)."""
    _, order = _tableau(method)
    with torch.no_grad():
        return _select_initial_step(func, t, y, order - 1, rtol, atol, _rms_norm)


_CAST: dict[tuple[str, torch.dtype, torch.device], object] = {}


def tableau_for(method: str, dtype: torch.dtype, device: torch.device):
    """The method's Butcher tableau in the state's dtype and on its device (cached), as torchdiffeq's
    own solver copies it (``RKAdaptiveStepsizeODESolver.__init__``): the module-level tableau is
    float64 on the CPU, and a float64 stage weight would promote a float32 state."""
    key = (method, dtype, device)
    if key not in _CAST:
        tableau, _ = _tableau(method)
        _CAST[key] = type(tableau)(
            alpha=tableau.alpha.to(device=device, dtype=dtype),
            beta=[b.to(device=device, dtype=dtype) for b in tableau.beta],
            c_sol=tableau.c_sol.to(device=device, dtype=dtype),
            c_error=tableau.c_error.to(device=device, dtype=dtype),
        )
    return _CAST[key]


def one_step_error(
    func, t: torch.Tensor, y: torch.Tensor, dt: torch.Tensor, method: str, rtol: float, atol: float
) -> torch.Tensor:
    """Error ratio of one step of size ``dt`` from ``(t, y)``:
    ``sqrt(mean((err / (atol + rtol * max(|y0|, |y1|)))**2))``, where ``err`` is the embedded
    estimate (already scaled by ``dt``). Differentiable in ``func``'s parameters (and ``y``).
    Works in ``y``'s dtype and device (float32 or float64, CPU or GPU); time stays float64."""
    tableau = tableau_for(method, y.dtype, y.device)
    f = _AcceptPerturb(func)
    t = torch.as_tensor(t, dtype=torch.float64, device=y.device)
    dt = torch.as_tensor(dt, dtype=torch.float64, device=y.device)
    f0 = f(t, y)
    y1, _, err, _ = _runge_kutta_step(f, y, f0, t, dt, t + dt, tableau)
    return _compute_error_ratio(err, rtol, atol, y, y1, _rms_norm)

"""The neural-ODE model: a linear encoder, an ODE block on [0, 1] with a learned vector field, a
linear decoder (Pal, Edelman & Rackauckas, ICML 2023, Section 5's MNIST model).

The ODE block integrates with :func:`solvers.ode.integrate` (adaptive dopri5), which also returns
the solver-error regularizer; the vector field is wrapped in :class:`solvers.ode.CountedFunc`, so
``model.func.nfe`` counts its evaluations. Shapes ``(B, d_in) -> (B, d_out)``, in the config's dtype (float64 by default, or float32). The whole
integration runs on the model's device (inputs on another device are refused, not copied).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from data.errors import InputError
from solvers.ode.regularize import CountedFunc, LocalDt, Regularizer, integrate

from ..device import check_device, module_device


class Tolerances(Protocol):
    """What the ODE block reads of a config (e.g. :class:`operators.node.train.ODETrainConfig`)."""

    @property
    def rtol(self) -> float: ...

    @property
    def atol(self) -> float: ...

    @property
    def max_steps(self) -> int: ...

    @property
    def adjoint(self) -> bool: ...

    @property
    def local_dt(self) -> LocalDt: ...


class VectorField(torch.nn.Module):
    """``f(t, y) = W2 tanh(W1 [y, t] + b1) + b2``; shapes ``(B, d) -> (B, d)``."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(width + 1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, width)
        )

    def forward(self, t: Any, y: torch.Tensor) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(y.shape[0], 1)
        return self.net(torch.cat([y, tt], dim=1))


class ODEModel(torch.nn.Module):
    """encoder -> ODE block on [0, 1] -> decoder. ``config``: the default tolerances and step limit
    of :meth:`forward` (a rebuilt model has its training config)."""

    def __init__(
        self, d_in: int, d_out: int, width: int, hidden: int, encode: bool = True, config: Tolerances | None = None
    ):
        super().__init__()
        self.encoder = torch.nn.Linear(d_in, width) if encode else torch.nn.Identity()
        self.func = CountedFunc(VectorField(width, hidden))
        self.decoder = torch.nn.Linear(width, d_out) if encode else torch.nn.Identity()
        self.config = config

    def forward(
        self,
        x: torch.Tensor,
        cfg: Tolerances | None = None,
        regularizer: Regularizer = "none",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction, R)`` for inputs ``x (B, d_in)``; ``R`` is the ``regularizer`` (zero for
        ``"none"``); ``cfg`` (default: the model's ``config``) gives the tolerances, the step limit, whether
        gradients go through the adjoint, and the unbiased variant's step (``local_dt``)."""
        check_device(x, module_device(self), "the neural ODE's input")
        cfg = cfg or self.config
        if cfg is None:
            raise InputError(
                "ODEModel.forward needs cfg (rtol, atol, max_steps): pass the training config, "
                "or build the model with config="
            )
        y1, reg = integrate(
            self.func,
            self.encoder(x),
            0.0,
            1.0,
            regularizer,
            cfg.rtol,
            cfg.atol,
            generator=generator,
            max_steps=cfg.max_steps,
            adjoint=cfg.adjoint,
            local_dt=cfg.local_dt,
        )
        return self.decoder(y1), reg


__all__ = ["ODEModel", "Tolerances", "VectorField"]

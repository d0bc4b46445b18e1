"""Typed configuration of one constrained solve, the parameters of the ``optimize`` flow."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from data.errors import InputError

from .minimize import METHODS, ALParams, OptimizeResult, minimize_eq
from .problems import PROBLEMS
from .sketch import PRECONDITIONERS, SKETCHES

if TYPE_CHECKING:  # a type checker cannot read a Literal built from a tuple; it sees plain names
    Method = str
    Sketch = str
    Precondition = str
else:  # the registries' names: pydantic validates them, Prefect and the CLI offer them as choices
    Method = Literal[METHODS]
    Sketch = Literal[SKETCHES]
    Precondition = Literal[PRECONDITIONERS]


class OptimizeConfig(BaseModel):
    """One equality-constrained solve: a Hock-Schittkowski / Boggs-Tolle problem by name, or the
    Darcy inverse problem (``problem="darcy-inverse"`` with ``n``, ``noise``, ``beta``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    problem: str = Field("hs007", description="'darcy-inverse' or an HS/BT name such as 'hs007', 'bt4'")
    method: Method = "al-sketch"
    sketch: Sketch = "kaczmarz"
    block_size: int | None = Field(
        None, ge=1, description="rows per block (block) or Gaussian sketch columns; None: ceil(sqrt(n + m))"
    )
    precondition: Precondition = Field(
        "none", description="al-sketch: sketch the KKT system right-preconditioned by its incomplete LU ('ilu')"
    )
    superlinear: bool = Field(
        False, description="al-sketch: sharpen the accuracy condition over iterations (theta_k -> 0)"
    )
    tol: float = Field(1e-6, gt=0, le=1.0, description="KKT residual tolerance")
    max_iter: int = Field(500, ge=1, le=100_000)
    max_seconds: float | None = Field(None, gt=0, description="wall-clock budget (None: unlimited)")
    seed: int = Field(0, ge=0)
    n: int = Field(32, ge=4, le=1024, description="darcy-inverse: cells per side")
    noise: float = Field(0.01, ge=0, le=1.0, description="darcy-inverse: noise / max|u|")
    beta: float = Field(1e-2, ge=0, description="darcy-inverse: gradient regularization weight")

    @field_validator("problem")
    @classmethod
    def _known(cls, v: str) -> str:
        if v != "darcy-inverse" and v not in PROBLEMS:
            raise InputError(f"unknown problem {v!r}; choose 'darcy-inverse' or one of {sorted(PROBLEMS)}")
        return v


def run_optimize(config: OptimizeConfig, callback: Callable[[dict], None] | None = None):
    """Build the problem and solve it. Returns ``(result, summary)``; ``summary`` holds the
    problem-specific quality numbers (error to the published optimum, or the recovered
    coefficient's error and the data misfit) and, for the inverse problem, the problem object."""
    kw: dict[str, Any] = dict(
        method=config.method,
        sketch=config.sketch,
        block_size=config.block_size,
        precondition=config.precondition,
        params=ALParams(superlinear=config.superlinear),
        tol=config.tol,
        max_iter=config.max_iter,
        seed=config.seed,
        max_seconds=config.max_seconds,
        callback=callback,
    )
    if config.problem == "darcy-inverse":
        from .darcy_inverse import make_problem

        P = make_problem(config.n, noise=config.noise, beta=config.beta, seed=config.seed)
        r: OptimizeResult = minimize_eq(None, None, P.start(), derivatives=P, **kw)
        return r, {"coef_error": P.coefficient_error(r.x), "misfit": P.misfit(r.x), "inverse_problem": P}
    p = PROBLEMS[config.problem]
    r = minimize_eq(p.f, p.c, np.array(p.x0), **kw)
    return r, {"f_star": p.f_star, "f_error": abs(r.fun - p.f_star)}

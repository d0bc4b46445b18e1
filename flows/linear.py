"""``benchmark-linear-solvers`` flow: DCDM (Kaneda et al., ICML 2023) vs CG / ICPCG / DPCG / PETSc GAMG;
``benchmark-linear-budget``: DCDM's iterations against its training budget (:mod:`flows.benchmarks.linear_budget`);
``benchmark-linear-diagnosis``: its directions against the ideal one (:mod:`flows.benchmarks.linear_diagnosis`).

The DCDM networks it compares are trained (or reused) through the ``train-dcdm`` flow
(:mod:`flows.dcdm`); the benchmark itself is :mod:`flows.benchmarks.linear`.
"""

from __future__ import annotations

from .names import run_name
from .scales import Scale
from .settings import flow


@flow(name="benchmark-linear-solvers", validate_parameters=True, flow_run_name=run_name("bench-linear-{scale}"))
def benchmark_linear_solvers(
    scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None, retrain: bool = False
) -> list[dict]:
    """Every linear solver on the same held-out systems at ``scale``; returns the table.

    DCDM uses the shipped 2D network (``operators/dcdm/weights``); ``retrain``: train the
    scale's network from scratch instead (``train-dcdm``, cached by config)."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("linear", scale, out, parent_run_id, retrain=retrain)
    return rows


@flow(name="benchmark-linear-budget", validate_parameters=True, flow_run_name=run_name("bench-linear-budget-{scale}"))
def benchmark_linear_budget(
    scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None
) -> list[dict]:
    """DCDM's training-budget curve at ``scale`` (both networks, several budgets) against ICPCG
    and GAMG on the linear benchmark's held-out systems; returns the table."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("linear-budget", scale, out, parent_run_id)
    return rows


@flow(
    name="benchmark-linear-diagnosis",
    validate_parameters=True,
    flow_run_name=run_name("bench-linear-diagnosis-{scale}"),
)
def benchmark_linear_diagnosis(
    scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None
) -> list[dict]:
    """DCDM's directions against the ideal ``A^+ r`` and its error spectrum against CG / ICPCG at
    ``scale`` (the budget curve's largest models); returns the table."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("linear-diagnosis", scale, out, parent_run_id)
    return rows

"""``benchmark-linear-solvers`` flow: DCDM (Kaneda et al., ICML 2023) vs CG / ICPCG / DPCG / PETSc GAMG.

The DCDM networks it compares are trained (or reused) through the ``train-dcdm`` flow
(:mod:`flows.dcdm`); the benchmark itself is :mod:`flows.benchmarks.linear`.
"""

from __future__ import annotations

from .names import run_name
from .scales import Scale
from .settings import flow


@flow(name="benchmark-linear-solvers", validate_parameters=True, flow_run_name=run_name("bench-linear-{scale}"))
def benchmark_linear_solvers(
    scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None
) -> list[dict]:
    """Every linear solver on the same held-out systems at ``scale``; returns the table."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("linear", scale, out, parent_run_id)
    return rows

"""``benchmark-datagen`` flow: the ``generate-dataset`` flow vs a bare petsc4py loop, and GAMG scaling.

The benchmark itself is :mod:`flows.benchmarks.datagen`; the flows it times are
``generate-dataset`` (:mod:`flows.generate`) runs, subflows of this one.
"""

from __future__ import annotations

from .names import run_name
from .scales import Scale
from .settings import flow


@flow(name="benchmark-datagen", validate_parameters=True, flow_run_name=run_name("bench-datagen-{scale}"))
def benchmark_datagen(scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None) -> list[dict]:
    """Darcy samples/second through ``generate-dataset`` vs a bare petsc4py loop, and PETSc CG +
    GAMG time per unknown across grids, at ``scale``; returns the table."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("datagen", scale, out, parent_run_id)
    return rows

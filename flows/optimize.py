"""``optimize`` and ``benchmark-optimizers`` flows (Hong et al., ICML 2023; Yao et al., ICLR 2024)."""

from __future__ import annotations

from prefect import get_run_logger

from solvers.optim.config import OptimizeConfig

from . import tracking
from .names import run_name
from .scales import Scale
from .settings import flow


@flow(name="optimize", validate_parameters=True, flow_run_name=run_name("optimize-{config.problem}-{config.method}"))
def optimize(config: OptimizeConfig = OptimizeConfig(), parent_run_id: str | None = None) -> dict:
    """Solve one equality-constrained problem. Per outer iteration the KKT residual, objective,
    step size and sketch steps go to MLflow; the solution (x, lam) is logged as JSON and, for the
    Darcy inverse problem, a PNG of the true / recovered log-coefficient and the data. Returns the
    summary row (``converged`` is True only when the KKT residual reached ``tol``)."""
    import numpy as np

    from solvers.optim.config import run_optimize

    logger = get_run_logger()
    with tracking.mlflow_run(
        f"optimize-{config.problem}-{config.method}",
        {"config": config.model_dump(mode="json")},
        {"sciflow.stage": "optimize"},
        parent_run_id,
    ) as run_id:

        def on_iteration(info: dict) -> None:
            tracking.log_metrics(run_id, {k: float(v) for k, v in info.items() if k != "nit"}, step=info["nit"])
            logger.info(
                "iteration %d: KKT %.3e f %.6g step %.3g (%d sketch steps)",
                info["nit"],
                info["kkt"],
                info["fun"],
                info["alpha"],
                info["inner"],
            )

        result, summary = run_optimize(config, on_iteration)
        P = summary.pop("inverse_problem", None)
        row = {
            "problem": config.problem,
            "method": config.method,
            "converged": result.converged,
            "kkt": result.kkt,
            "fun": result.fun,
            "nit": result.nit,
            "inner_iterations": result.inner_iterations,
            "seconds": result.seconds,
            "constraint_violation": result.constraint_violation,
            "message": result.message,
            **summary,
        }
        tracking.log_metrics(run_id, {k: float(v) for k, v in row.items() if isinstance(v, (int, float))})
        tracking.log_json(
            run_id, {"x": np.asarray(result.x).tolist(), "lam": np.asarray(result.lam).tolist()}, "solution.json"
        )
        if P is not None:
            from .plots import inverse_problem_figure

            tracking.log_figure(run_id, inverse_problem_figure(P, result.x), "coefficient.png")
        (logger.info if result.converged else logger.warning)("%s: %s", config.method, result.message)
    return row


@flow(name="benchmark-optimizers", validate_parameters=True, flow_run_name=run_name("bench-optimizers-{scale}"))
def benchmark_optimizers(
    scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None
) -> list[dict]:
    """AdaSketch-Newton vs newton-sqp / l1-SQP / SLSQP / trust-constr on the HS+BT set and the
    Darcy inverse problem, and LV-HBA vs the cvxpylayers implicit baseline, at ``scale``."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("optimizers", scale, out, parent_run_id)
    return rows

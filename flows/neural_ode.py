"""``train-neural-ode`` and ``benchmark-neural-odes`` flows (Pal et al., ICML 2023).

``train-neural-ode`` checkpoints every epoch under
``$SCIFLOW_HOME/models/node-<config key>/checkpoint.pt`` (a rerun resumes, or returns at once when
finished), logs that checkpoint, and registers the model as ``node-<task>-<regularizer>``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from operators.node import ODETrainConfig

from . import settings, tracking
from .names import run_name
from .progress import Progress
from .scales import Scale
from .settings import flow


def checkpoint_path(cfg: ODETrainConfig) -> Path:
    return settings.sciflow_home() / "models" / f"node-{cfg.key()}" / "checkpoint.pt"


@flow(
    name="train-neural-ode",
    validate_parameters=True,
    flow_run_name=run_name("train-neural-ode-{config.task}-{config.regularizer}"),
)
def train_neural_ode(
    config: ODETrainConfig = ODETrainConfig(), parent_run_id: str | None = None, register_model: bool = True
) -> dict:
    """Train one neural ODE (or resume it); per-epoch NFE (train and predict), times and the task
    metric go to MLflow; the checkpoint is logged (artifact ``checkpoint``) and the model registered
    as ``node-<task>-<regularizer>``. Returns the last epoch's row."""
    from operators.node import load_task, train

    logger = get_run_logger()
    with tracking.mlflow_run(
        f"train-neural-ode-{config.task}-{config.regularizer}",
        {"config": config.model_dump(mode="json")},
        {"sciflow.stage": "train-neural-ode"},
        parent_run_id,
    ) as run_id:
        progress = Progress(config.epochs, f"train-neural-ode {config.task}-{config.regularizer}", unit="epoch")

        def on_epoch(epoch: int, row: dict) -> None:
            progress.set(epoch)
            tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            logger.info("epoch %d/%d loss %.4g predict NFE %d", epoch, config.epochs, row["loss"], row["predict_nfe"])

        ckpt = checkpoint_path(config)
        with progress:
            model, history = train(config, checkpoint=ckpt, on_epoch=on_epoch)
        tracking.log_artifact(run_id, ckpt, "checkpoint")
        if register_model:
            d_in = load_task(config.task).d_in
            tracking.log_model(
                run_id, model, f"node-{config.task}-{config.regularizer}", (-1, d_in), dtype=config.dtype, output=False
            )
    return history[-1]


@flow(name="benchmark-neural-odes", validate_parameters=True, flow_run_name=run_name("bench-neural-odes-{scale}"))
def benchmark_neural_odes(
    scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None
) -> list[dict]:
    """Unregularized vs global vs local regularization on every task at ``scale``."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("neural-odes", scale, out, parent_run_id)
    return rows

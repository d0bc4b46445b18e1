"""``train-dcdm`` flow (the linear-solver benchmark that uses it: :mod:`flows.linear`).

``train-dcdm`` trains the DCDM network for a :class:`DCDMTrainConfig`, checkpointing every epoch
under ``$SCIFLOW_HOME/models/dcdm-<config key>/checkpoint.pt``; a rerun resumes from the last
epoch (and does nothing if training finished). Per-epoch loss goes to MLflow, the final model to
MLflow's model registry (``dcdm-2d`` / ``dcdm-3d``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from operators import load_checkpoint
from operators.dcdm import DCDMTrainConfig

from . import plots, settings, tracking
from .names import run_name
from .progress import Progress
from .settings import flow


def checkpoint_path(cfg: DCDMTrainConfig) -> Path:
    return settings.sciflow_home() / "models" / f"dcdm-{cfg.key()}" / "checkpoint.pt"


def _register(run_id: str, model, cfg: DCDMTrainConfig) -> None:
    """Log the model to the run and register it as ``dcdm-<dim>d`` (:func:`flows.tracking.log_model`:
    pickled with the project's code and pinned requirements, so it loads outside the repository;
    any grid size: the network is convolutional)."""
    tracking.log_model(run_id, model, f"dcdm-{cfg.dim}d", (-1, 1, *(-1,) * cfg.dim))


@flow(name="train-dcdm", validate_parameters=True, flow_run_name=run_name("train-dcdm-n{config.n}-{config.dim}d"))
def train_dcdm(
    config: DCDMTrainConfig = DCDMTrainConfig(), parent_run_id: str | None = None, register_model: bool = True
) -> str:
    """Train (or resume, or reuse) the DCDM network; returns the checkpoint path."""
    from operators.dcdm import train

    logger = get_run_logger()
    ckpt = checkpoint_path(config)
    if ckpt.exists():
        done = load_checkpoint(ckpt)
        if done.get("epoch") == config.epochs:
            logger.info("DCDM %s already trained (%d epochs): %s", config.key(), config.epochs, ckpt)
            return str(ckpt)
    with tracking.mlflow_run(
        f"train-dcdm-{config.n}",
        {"config": config.model_dump(mode="json"), "config_key": config.key()},
        {"sciflow.stage": "train-dcdm"},
        parent_run_id,
    ) as run_id:
        progress = Progress(config.epochs, f"train-dcdm {config.key()}", unit="epoch")

        def on_epoch(epoch: int, row: dict) -> None:
            progress.set(epoch)
            tracking.log_metrics(run_id, {"loss": row["loss"], "epoch_seconds": row["seconds"]}, step=epoch)
            logger.info("epoch %d/%d loss %.4e (%.1f s)", epoch, config.epochs, row["loss"], row["seconds"])

        with progress:
            model, history = train(config, checkpoint=ckpt, on_epoch=on_epoch)
        fig = plots.loss_plot(history, f"DCDM training, {config.n}^{config.dim}")
        tracking.log_figure(run_id, fig, "loss.png")
        plots.plt.close(fig)
        tracking.log_artifact(run_id, ckpt, "checkpoint")
        if register_model:
            _register(run_id, model, config)
    return str(ckpt)

"""``train-operator``, ``benchmark-operators`` and ``benchmark-operators-budget`` flows (MG-TFNO, Kossaifi et al., TMLR 2024).

``train-operator`` generates (or finds, cached by spec hash) the dataset through
``generate-dataset``, trains the chosen model with a checkpoint after every epoch under
``$SCIFLOW_HOME/models/operator-<config key>-<dataset digest[:12]>/checkpoint.pt`` (a rerun resumes,
or does nothing when finished), logs per-epoch metrics, a PNG of input / truth / prediction / error
for test samples, and registers the final model in MLflow's registry as ``operator-<name>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from prefect import get_run_logger
from pydantic import Field

from data.spec import DarcySpec, NavierStokesSpec
from operators.fno import OperatorTrainConfig

from . import plots, settings, tracking
from .names import run_name
from .progress import Progress
from .scales import Scale
from .settings import flow


def checkpoint_path(cfg: OperatorTrainConfig, digest: str) -> Path:
    return settings.sciflow_home() / "models" / f"operator-{cfg.key()}-{digest[:12]}" / "checkpoint.pt"


def _register(run_id: str, model, name: str) -> None:
    """Log the model and register it as ``operator-<name>`` (:func:`flows.tracking.log_model`:
    pickled with the project's code and pinned requirements, so it loads outside the repository;
    any resolution)."""
    tracking.log_model(run_id, model, f"operator-{name}", (-1, 1, -1, -1))


@flow(
    name="train-operator",
    validate_parameters=True,
    flow_run_name=run_name("train-operator-{config.model.name}-{dataset.family}-n{dataset.n}"),
)
def train_operator(
    dataset: Annotated[NavierStokesSpec | DarcySpec, Field(discriminator="family")] = NavierStokesSpec(
        n=64, n_train=1000, n_test=200, viscosity=1e-4, horizon=5.0
    ),
    config: OperatorTrainConfig = OperatorTrainConfig(),
    parent_run_id: str | None = None,
    register_model: bool = True,
) -> dict:
    """Train one neural operator on ``dataset``; returns the last epoch's metrics and the checkpoint path."""
    import torch

    import data
    from operators import load_checkpoint, model_from_checkpoint
    from operators.fno import pairs, train

    from .generate import generate_dataset

    logger = get_run_logger()
    ref = generate_dataset(spec=dataset, parent_run_id=parent_run_id)
    train_xy, test_xy = pairs(data.load(ref, "train")), pairs(data.load(ref, "test"))
    periodic = dataset.family == "navier_stokes"
    ckpt = checkpoint_path(config, ref.digest)
    if ckpt.exists():
        done = load_checkpoint(ckpt)
        if done.get("epoch") == config.epochs and done.get("config") == config.model_dump(mode="json"):
            logger.info("operator %s already trained (%d epochs): %s", config.key(), config.epochs, ckpt)
            return {**done["history"][-1], "checkpoint": str(ckpt)}
    name = config.model.name
    with tracking.mlflow_run(
        f"train-operator-{name}-{dataset.family}-{dataset.n}",
        {"config": config.model_dump(mode="json"), "config_key": config.key()},
        {"sciflow.stage": "train-operator"},
        parent_run_id,
    ) as run_id:
        tracking.log_dataset(run_id, ref, "training")

        progress = Progress(config.epochs, f"train-operator {name}", unit="epoch")

        def on_epoch(epoch: int, row: dict) -> None:
            progress.set(epoch)
            tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            logger.info(
                "epoch %d/%d loss %.4f test L2 %.4f H1 %.4f (%.1f s)",
                epoch,
                config.epochs,
                row["loss"],
                row.get("test_l2", float("nan")),
                row.get("test_h1", float("nan")),
                row["seconds"],
            )

        with progress:
            model, history = train(config, train_xy, test_xy, checkpoint=ckpt, periodic=periodic, on_epoch=on_epoch)
        model = model_from_checkpoint(ckpt, periodic=periodic)
        with torch.no_grad():
            pred = model(test_xy[0][:3])
        fig = plots.operator_predictions(test_xy[0][:3], test_xy[1][:3], {name: pred})
        tracking.log_figure(run_id, fig, "predictions.png")
        plots.plt.close(fig)
        if register_model:
            _register(run_id, model, name)
    return {**history[-1], "checkpoint": str(ckpt)}


@flow(name="benchmark-operators", validate_parameters=True, flow_run_name=run_name("bench-operators-{scale}"))
def benchmark_operators(scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None) -> list[dict]:
    """Dense FNO vs TFNO vs MG-TFNO on the same Navier-Stokes data and budget at ``scale``."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("operators", scale, out, parent_run_id)
    return rows


@flow(
    name="benchmark-operators-budget",
    validate_parameters=True,
    flow_run_name=run_name("bench-operators-budget-{scale}"),
)
def benchmark_operators_budget(
    scale: Scale = "smoke",
    out: str | None = None,
    parent_run_id: str | None = None,
    parts: list[Literal["curves", "pareto", "seeds"]] | None = None,
) -> list[dict]:
    """Convergence curves (test error per epoch) of dense FNO, TFNO and MG-TFNO, the error
    against parameter count over Tucker ranks, per-layer vs joint, with and without multigrid,
    and the per-layer vs joint pairs with more seeds, at ``scale``; ``parts``: a subset (default
    all); returns the table."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("operators-budget", scale, out, parent_run_id, parts=parts)
    return rows

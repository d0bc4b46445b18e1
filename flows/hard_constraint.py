"""``train-hard-constraint`` and ``benchmark-hard-constraints`` flows (PI-HC-MoE, Chalapathi et al., ICLR 2024).

``train-hard-constraint`` generates (or finds, cached by spec hash) a diffusion-sorption or 2D heat
dataset through ``generate-dataset``, trains a soft-constraint PINN, a single hard constraint or a
PI-HC-MoE model (physics-only: the trajectories are used for the test error only) with an atomic
checkpoint every ``checkpoint_every`` steps under
``$SCIFLOW_HOME/models/hard-<config hash>-<dataset digest[:12]>/checkpoint.pt`` (a rerun resumes,
or returns at once when finished), logs the loss terms, LM iterations and condition numbers per
logged step, the test metrics and a truth / prediction / error figure to MLflow, and registers the
model as ``hard-<problem>-<label>`` (``label`` as the benchmark names it: ``soft-pinn``, ``pi-hc``,
``pi-hc-moe-k4``, ...).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

from prefect import get_run_logger
from pydantic import Field

from data.spec import DiffusionSorptionSpec, HeatSpec
from operators.hard import HardModelConfig, HardTrainConfig

from . import plots, settings, tracking
from .names import run_name
from .progress import Progress
from .scales import Scale
from .settings import flow


def checkpoint_path(cfg: HardTrainConfig, digest: str) -> Path:
    key = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]
    return settings.sciflow_home() / "models" / f"hard-{key}-{digest[:12]}" / "checkpoint.pt"


DEFAULT_DATA = DiffusionSorptionSpec(n=64, n_times=40, n_train=64, n_test=16)
DEFAULT_CONFIG = HardTrainConfig(model=HardModelConfig(experts=(1, 4), points=256), steps=400)  # 256 per expert


@flow(
    name="train-hard-constraint",
    validate_parameters=True,
    flow_run_name=run_name("train-hard-constraint-{config.model.mode}-{dataset.family}"),
)
def train_hard_constraint(
    dataset: Annotated[DiffusionSorptionSpec | HeatSpec, Field(discriminator="family")] = DEFAULT_DATA,
    config: HardTrainConfig = DEFAULT_CONFIG,
    parent_run_id: str | None = None,
    register_model: bool = True,
) -> dict:
    """Train one soft / hard / MoE model on ``dataset`` (diffusion-sorption, or heat with ``dim=2``);
    returns the test metrics (``rel_l2``, ``residual``, ``conditions``, ``infer_seconds``, jumps) and the checkpoint."""
    import torch

    import data
    from operators import load_checkpoint, model_from_checkpoint
    from operators.hard import evaluate, from_dataset, train

    from .generate import generate_dataset

    logger = get_run_logger()
    ref = generate_dataset(spec=dataset, parent_run_id=parent_run_id)
    tr, te = data.load(ref, "train"), data.load(ref, "test")
    pde = from_dataset(dataset.family, dataset, tr.arrays)
    config.model.check(pde)
    u0 = torch.as_tensor(tr["u"][:, 0], dtype=torch.float32)
    u0_test, u_test = torch.as_tensor(te["u"][:, 0], dtype=torch.float32), torch.as_tensor(te["u"])
    ckpt = checkpoint_path(config, ref.digest)
    label = f"{config.model.mode}-k{config.model.n_experts}"
    with tracking.mlflow_run(
        f"train-hard-constraint-{label}-{dataset.family}",
        {"config": config.model_dump(mode="json"), "problem": pde.name},
        {"sciflow.stage": "train-hard-constraint"},
        parent_run_id,
    ) as run_id:
        tracking.log_dataset(run_id, ref, "training")
        done = ckpt.exists() and load_checkpoint(ckpt).get("step") == config.steps
        if done:
            logger.info("model already trained (%d steps): %s", config.steps, ckpt)
        else:
            progress = Progress(config.steps, f"train-hard-constraint {label}", unit="step")

            def on_epoch(step: int, row: dict) -> None:
                progress.set(step)
                tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "step"}, step=step)
                logger.info(
                    "step %d/%d loss %.4g (pde %.3g, conditions %.3g) %.3f s/step",
                    step,
                    config.steps,
                    row["loss"],
                    row["pde"],
                    row["conditions"],
                    row["seconds"],
                )

            with progress:
                train(config, pde, u0, checkpoint=ckpt, on_epoch=on_epoch, log_every=max(config.steps // 20, 1))
        model = model_from_checkpoint(ckpt, kind="hard", pde=pde)
        metrics = evaluate(model, u0_test, u_test)
        tracking.log_metrics(run_id, {f"test_{k}": v for k, v in metrics.items()})
        with torch.no_grad():
            pred = model(u0_test[:1]).u[0].float()
        fig = plots.space_time_predictions(u_test[0], {label: pred}, pde.grid, title=pde.name)
        tracking.log_figure(run_id, fig, "predictions.png")
        plots.plt.close(fig)
        tracking.log_artifact(run_id, ckpt, "checkpoint")
        if register_model:
            from .benchmarks.hard_constraints import model_label

            name = f"hard-{pde.name}-{model_label(config.model.model_dump())}"
            tracking.log_model(run_id, model, name, (-1, *(-1,) * (len(pde.grid) - 1)), output=False)
    logger.info(
        "test relative L2 %.4f, residual %.3g, conditions %.3g",
        metrics["rel_l2"],
        metrics["residual"],
        metrics["conditions"],
    )
    return {**metrics, "checkpoint": str(ckpt)}


@flow(
    name="benchmark-hard-constraints",
    validate_parameters=True,
    flow_run_name=run_name("bench-hard-constraints-{scale}"),
)
def benchmark_hard_constraints(
    scale: Scale = "smoke", out: str | None = None, parent_run_id: str | None = None
) -> list[dict]:
    """Soft-constraint PINN vs PI-HC vs PI-HC-MoE (K = 2, 4, 8, and random assignment) on
    diffusion-sorption and 2D heat, the step-time scaling curve and the cvxpylayers check, at ``scale``."""
    from .benchmarks import run_benchmark

    rows, _ = run_benchmark("hard-constraints", scale, out, parent_run_id)
    return rows

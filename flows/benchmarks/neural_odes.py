"""Neural-ODE benchmark: unregularized vs global (ERNODE) vs local (unbiased, biased) regularization.

Same seeds, data and budget for every variant of a task, in one run. Each row reports the final
model's prediction NFE and prediction seconds on the held-out split (median of repeats), the total
training seconds, the task metric, and each as a ratio to the unregularized model.
"""

from __future__ import annotations

import statistics

from data.spec import PDESpec
from operators.node import ODETrainConfig, evaluate, load_task, train
from operators.node.tasks import dataset_spec
from solvers.ode import REGULARIZERS

CONFIGS = {
    "smoke": {
        "digits": dict(epochs=2, batch_size=256, hidden=32),
        "lotka-volterra": dict(epochs=2, batch_size=200, hidden=16),
        "spiral": dict(epochs=2, batch_size=250, hidden=16),
    },
    "small": {
        "digits": dict(epochs=12, batch_size=128, hidden=64),
        "lotka-volterra": dict(epochs=12, batch_size=50, hidden=32, lr=5e-3),
        "spiral": dict(epochs=12, batch_size=100, hidden=32, lr=5e-3),
    },
    "paper": {
        "digits": dict(epochs=40, batch_size=128, hidden=128),
        "lotka-volterra": dict(epochs=60, batch_size=50, hidden=64, lr=5e-3),
        "spiral": dict(epochs=60, batch_size=100, hidden=64, lr=5e-3),
    },
}
TOL = {"digits": 1e-6, "lotka-volterra": 1e-6, "spiral": 1e-6}
META = {
    "targets": "local on digits: predict NFE <= 0.65x, predict time <= 0.6x, accuracy within 0.5 point; "
    "Lotka-Volterra: NFE <= 0.7x with final-state MSE within 1.1x; local training time <= 0.8x global's"
}


def datasets(scale: str) -> list[PDESpec]:
    """The stored datasets this benchmark reads at ``scale`` (the tasks' data made in memory are not listed)."""
    return [spec for name in CONFIGS[scale] if (spec := dataset_spec(name, ODETrainConfig().seed)) is not None]


def run(scale: str, run_id: str | None = None) -> tuple[list[dict], dict]:
    from .. import plots
    from ..generate import get_dataset
    from . import progress_logger
    from .training import train_model

    log = progress_logger()
    rows: list[dict] = []
    curves: dict[str, dict[str, list[float]]] = {}
    train(ODETrainConfig(task="spiral", epochs=1, batch_size=1000, hidden=8))  # warm-up: first-call costs untimed
    for task_name, kw in CONFIGS[scale].items():
        spec = dataset_spec(task_name, ODETrainConfig().seed)
        digest = get_dataset(spec, run_id).digest if spec is not None else None  # stored before load_task reads it
        task = load_task(task_name)
        found = {}
        for reg in REGULARIZERS:
            cfg = ODETrainConfig(task=task_name, regularizer=reg, rtol=TOL[task_name], atol=TOL[task_name], **kw)
            trained = train_model(
                "node",
                f"{task_name}-{reg}",
                cfg,
                lambda ckpt, on_epoch, cfg=cfg: train(cfg, checkpoint=ckpt, on_epoch=on_epoch),
                digest=digest,
            )
            model, history, train_seconds = trained.model, trained.history, trained.seconds
            evals = [evaluate(model, task, cfg) for _ in range(5)]
            found[reg] = {
                "train_seconds": train_seconds,
                "predict_nfe": evals[0]["predict_nfe"],
                "predict_seconds": statistics.median(e["predict_seconds"] for e in evals),
                "metric": evals[0][task.metric_name],
            }
            curves.setdefault(task_name, {})[reg] = [h["predict_nfe"] for h in history]
            log(
                f"{task_name:7s} {reg:15s} predict NFE {found[reg]['predict_nfe']:5d}  {task.metric_name} "
                f"{found[reg]['metric']:.4g}  train {train_seconds:.1f} s"
            )
        base = found["none"]
        for reg, f in found.items():
            rows.append(
                {
                    "method": reg,
                    "problem": task_name,
                    "scale": scale,
                    "metric": task.metric_name,
                    "value": round(f["metric"], 5),
                    "predict_nfe": f["predict_nfe"],
                    "predict_seconds": round(f["predict_seconds"], 5),
                    "train_seconds": round(f["train_seconds"], 2),
                    "nfe_ratio": round(f["predict_nfe"] / base["predict_nfe"], 3),
                    "predict_time_ratio": round(f["predict_seconds"] / base["predict_seconds"], 3),
                    "train_time_ratio": round(f["train_seconds"] / base["train_seconds"], 3),
                    "train_time_vs_global": round(f["train_seconds"] / found["global"]["train_seconds"], 3),
                    "metric_delta": round(f["metric"] - base["metric"], 5),
                }
            )
    return rows, {"nfe_over_training": plots.nfe_curves(curves)}

"""Neural-ODE benchmark: unregularized vs global (ERNODE) vs local (unbiased, biased) regularization,
and on digits the variants of :data:`VARIANTS` (float32, adjoint, the initial-step heuristic).

Same seeds, data and budget for every variant of a task, in one run. Each row reports the final
model's prediction NFE and prediction seconds on the held-out split (median of repeats), the total
training seconds, the task metric, and each as a ratio to the unregularized model.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from data.spec import PDESpec
from operators.node import ODETrainConfig, evaluate, load_task, train
from operators.node import sde as node_sde
from operators.node.tasks import dataset_spec
from solvers.ode import REGULARIZERS
from solvers.ode.sde import SDE_REGULARIZERS

if TYPE_CHECKING:
    from ..tracking import MethodRuns

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
#: Variants of a regularized run on digits, each against the run it varies (``reference``):
#: a float32 model, gradients by the adjoint, and the unbiased variant with the reference
#: implementation's initial-step heuristic instead of the controller's step.
VARIANTS: dict[str, tuple[str, dict]] = {
    "local-biased-float32": ("local-biased", {"dtype": "float32"}),
    "none-float32": ("none", {"dtype": "float32"}),
    "local-biased-adjoint": ("local-biased", {"adjoint": True}),
    "none-adjoint": ("none", {"adjoint": True}),
    "local-unbiased-initial-dt": ("local-unbiased", {"local_dt": "initial"}),
}
VARIANT_TASK = "digits"
#: Neural SDEs (operators.node.sde), per scale: each problem's config; every SDE regularizer
#: (none, local-unbiased, local-biased) trains on it with the same seed and budget.
SDE_CONFIGS = {
    "smoke": {"sde-digits": dict(task="digits", epochs=2, steps_per_epoch=5, batch_size=64, paths=1)},
    "small": {
        "sde-digits": dict(task="digits", epochs=15, steps_per_epoch=20, batch_size=64, paths=1, w_start=1, w_end=1),
        "sde-ou": dict(task="ou", epochs=10, steps_per_epoch=20, w_start=1, w_end=1),
    },
    "paper": {
        "sde-digits": dict(task="digits", epochs=40, steps_per_epoch=40, batch_size=128, paths=2, w_start=1, w_end=1),
        "sde-ou": dict(task="ou", epochs=40, steps_per_epoch=20, w_start=1, w_end=1),
    },
}
META = {
    "targets": "local on digits: predict NFE <= 0.65x, predict time <= 0.6x, accuracy within 0.5 point; "
    "Lotka-Volterra: NFE <= 0.7x with final-state MSE within 1.1x; local training time <= 0.8x global's; "
    "float32 within 1 % of float64 in NFE and metric (vs_reference rows)"
}


def datasets(scale: str) -> list[PDESpec]:
    """The stored datasets this benchmark reads at ``scale`` (the tasks' data made in memory are not listed)."""
    return [spec for name in CONFIGS[scale] if (spec := dataset_spec(name, ODETrainConfig().seed)) is not None]


def run(scale: str, run_id: str | None = None, methods: MethodRuns | None = None) -> tuple[list[dict], dict]:
    """Every task and regularizer of the scale. ``methods``: each regularizer's MLflow child run
    gets its config per task, per-epoch metrics (``<task>/train/<name>``) and the trained model
    (registered as ``node-<task>-<regularizer>``)."""
    from .. import plots
    from ..generate import get_dataset
    from ..tracking import MethodRuns
    from . import progress_logger
    from .training import train_model

    log = progress_logger()
    methods = methods or MethodRuns(None)
    rows: list[dict] = []
    curves: dict[str, dict[str, list[float]]] = {}
    train(ODETrainConfig(task="spiral", epochs=1, batch_size=1000, hidden=8))  # warm-up: first-call costs untimed
    for task_name, kw in CONFIGS[scale].items():
        spec = dataset_spec(task_name, ODETrainConfig().seed)
        digest = get_dataset(spec).digest if spec is not None else None  # stored before load_task reads it
        task = load_task(task_name)
        found = {}
        runs: dict[str, tuple[str, dict]] = {reg: (reg, {}) for reg in REGULARIZERS}
        if task_name == VARIANT_TASK:
            runs.update(VARIANTS)
        for reg, (regularizer, extra) in runs.items():
            cfg = ODETrainConfig(
                task=task_name, regularizer=regularizer, rtol=TOL[task_name], atol=TOL[task_name], **kw, **extra
            )
            methods.log_params(reg, {task_name: cfg.model_dump(mode="json")})
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
                "reference": VARIANTS[reg][0] if reg in VARIANTS else None,
                "train_seconds": train_seconds,
                "predict_nfe": evals[0]["predict_nfe"],
                "predict_seconds": statistics.median(e["predict_seconds"] for e in evals),
                "metric": evals[0][task.metric_name],
            }
            curves.setdefault(task_name, {})[reg] = [h["predict_nfe"] for h in history]
            for row in history:  # after the timings: logging is not training time
                methods.on_epoch(reg, task_name)(row["epoch"], row)
            methods.log_model(reg, model, f"node-{task_name}-{reg}", (-1, task.d_in), dtype=cfg.dtype, output=False)
            log(
                f"{task_name:7s} {reg:15s} predict NFE {found[reg]['predict_nfe']:5d}  {task.metric_name} "
                f"{found[reg]['metric']:.4g}  train {train_seconds:.1f} s"
            )
        rows += _rows(task_name, scale, task.metric_name, found)
    for problem, kw in SDE_CONFIGS[scale].items():
        found = {}
        for reg in SDE_REGULARIZERS:
            cfg = node_sde.SDETrainConfig(regularizer=reg, **kw)  # type: ignore[arg-type]
            methods.log_params(reg, {problem: cfg.model_dump(mode="json")})
            trained = train_model(
                "sde",
                f"{problem}-{reg}",
                cfg,
                lambda ckpt, on_epoch, cfg=cfg: node_sde.train(cfg, checkpoint=ckpt, on_epoch=on_epoch),
            )
            model, history, train_seconds = trained.model, trained.history, trained.seconds
            metric = "accuracy" if cfg.task == "digits" else "moment_error"
            last = history[-1]  # evaluated after the last epoch: one prediction solve of the test set
            found[reg] = {"train_seconds": train_seconds, "metric": last[metric]} | {
                k: last[k] for k in ("predict_nfe", "predict_seconds")
            }
            curves.setdefault(problem, {})[reg] = [h["predict_nfe"] for h in history]
            for row in history:
                methods.on_epoch(reg, problem)(row["epoch"], row)
            log(f"{problem} {reg:15s} predict NFE {found[reg]['predict_nfe']:5d}  {metric} {found[reg]['metric']:.4g}")
        rows += _rows(problem, scale, metric, found)
    return rows, {"nfe_over_training": plots.nfe_curves(curves)}


def _rows(problem: str, scale: str, metric: str, found: dict[str, dict]) -> list[dict]:
    """One row per method, with its ratios to the unregularized run (and to the global one where
    there is one); a variant's row also against the run it varies."""
    base, rows = found["none"], []
    for method, f in found.items():
        row = {
            "method": method,
            "problem": problem,
            "scale": scale,
            "metric": metric,
            "value": round(f["metric"], 5),
            "predict_nfe": f["predict_nfe"],
            "predict_seconds": round(f["predict_seconds"], 5),
            "train_seconds": round(f["train_seconds"], 2),
            "nfe_ratio": round(f["predict_nfe"] / base["predict_nfe"], 3),
            "predict_time_ratio": round(f["predict_seconds"] / base["predict_seconds"], 3),
            "train_time_ratio": round(f["train_seconds"] / base["train_seconds"], 3),
            "metric_delta": round(f["metric"] - base["metric"], 5),
        }
        if "global" in found:
            row["train_time_vs_global"] = round(f["train_seconds"] / found["global"]["train_seconds"], 3)
        if f.get("reference"):
            ref = found[f["reference"]]
            row |= {
                "reference": f["reference"],
                "nfe_vs_reference": round(f["predict_nfe"] / ref["predict_nfe"], 3),
                "metric_vs_reference": round(f["metric"] / ref["metric"], 4),
                "train_time_vs_reference": round(f["train_seconds"] / ref["train_seconds"], 3),
            }
        rows.append(row)
    return rows

"""Neural-operator benchmark: dense FNO vs TFNO vs MG-TFNO on PETSc-TS Navier-Stokes data.

Same data (one stored dataset), same seed, epochs, optimizer and loss for every model, in one run.
Per model: parameter count (``neuralop.utils.count_model_params``) and its compression against
the dense FNO, relative L2 and H1 test errors at the training resolution and zero-shot at twice
the resolution (a second dataset, same distribution), each error's ratio to the dense FNO's,
seconds per epoch, peak memory (resident-set growth on CPU, CUDA peak on GPU) and the fraction of
the domain one network sample sees (MG-TFNO: patch incl. padding).
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

from data.spec import NavierStokesSpec

if TYPE_CHECKING:
    from ..tracking import MethodRuns

MODELS = {  # label -> model config fields (beyond the scale's width / modes)
    "fno": dict(name="fno"),
    "tfno-r0.05": dict(name="tfno", rank=0.05),
    "tfno-r0.02": dict(name="tfno", rank=0.02),
    "mg-tfno-r0.05": dict(name="mg-tfno", rank=0.05, levels=1, padding_fraction=0.0625),
    "mg-tfno-r0.02": dict(name="mg-tfno", rank=0.02, levels=1, padding_fraction=0.0625),
    "mg-tfno-r0.005": dict(name="mg-tfno", rank=0.005, levels=1, padding_fraction=0.0625),
    # the paper's global factorization: one Tucker tensor for all layers (operators/fno/joint.py)
    "tfno-joint-r0.05": dict(name="tfno", rank=0.05, factorization="joint"),
    "mg-tfno-joint-r0.02": dict(name="mg-tfno", rank=0.02, levels=1, padding_fraction=0.0625, factorization="joint"),
    # two multigrid levels: 4x4 patches of 1/4 side + 1/16 padding each way, (1/4 + 1/8)^2 = 0.14
    # of the domain per sample (the paper's ~7x reduction)
    "mg-tfno-l2-r0.02": dict(name="mg-tfno", rank=0.02, levels=2, padding_fraction=0.0625),
}
CONFIGS = {
    "smoke": dict(
        n=32,
        n_train=32,
        n_test=8,
        n_test_2x=4,
        epochs=2,
        step_size=1,
        batch_size=8,
        hidden=16,
        modes=8,
        models=[
            "fno",
            "tfno-r0.05",
            "tfno-r0.02",
            "mg-tfno-r0.05",
            "mg-tfno-r0.02",
            "tfno-joint-r0.05",
            "mg-tfno-l2-r0.02",
        ],
    ),
    # 2 CPU cores: about 45 s per epoch and model at this width, so 8 epochs and four models
    "small": dict(
        n=64,
        n_train=1000,
        n_test=200,
        n_test_2x=50,
        epochs=8,
        step_size=4,
        batch_size=16,
        hidden=32,
        modes=16,
        models=["fno", "tfno-r0.05", "tfno-r0.02", "mg-tfno-r0.02"],
    ),
    "paper": dict(
        n=128,
        n_train=10000,
        n_test=1000,
        n_test_2x=200,
        epochs=100,
        step_size=25,
        batch_size=32,
        hidden=64,
        modes=32,
        models=list(MODELS),
    ),
}
FLOW = dict(viscosity=1e-4, t0=0.0, horizon=5.0)  # w(0) -> w(5) at nu = 1e-4
META = {
    "targets": "small: mg-tfno >= 20x fewer parameters than dense FNO with test L2 <= 1.0x; mg-tfno input "
    "domain <= 0.5x; paper (GPU, 128^2, 10k samples, nu=1e-4): >= 150x compression with L2 <= 0.5x",
    "data": f"navier_stokes {FLOW}",
}


def datasets(scale: str) -> list[NavierStokesSpec]:
    """The specs this benchmark reads at ``scale``: training resolution, and twice it (zero-shot test)."""
    c = CONFIGS[scale]
    return [
        NavierStokesSpec(n=c["n"], n_train=c["n_train"], n_test=c["n_test"], seed=0, **FLOW),
        NavierStokesSpec(n=2 * c["n"], n_train=1, n_test=c["n_test_2x"], seed=1, **FLOW),
    ]


def train_config(c: dict, fields: dict, seed: int = 0):
    """The benchmark recipe for one model: ``c``'s width, modes, epochs, schedule and batch, H1
    loss, ``seed``; ``fields``: the model config beyond width and modes (a :data:`MODELS` entry)."""
    from operators.fno import OperatorModelConfig, OperatorTrainConfig

    return OperatorTrainConfig(
        model=OperatorModelConfig(hidden_channels=c["hidden"], n_modes=c["modes"], **fields),
        epochs=c["epochs"],
        step_size=c["step_size"],
        batch_size=c["batch_size"],
        loss="h1",
        seed=seed,
    )


def train_operator(label: str, cfg, train_xy, test_xy, digest: str):
    """Train (or reuse, or resume) one model through :func:`flows.benchmarks.training.train_model`,
    logging each epoch; returns its :class:`~flows.benchmarks.training.Trained`."""
    from operators.fno import train

    from . import progress_logger
    from .training import train_model

    log = progress_logger()
    return train_model(
        "operator",
        label,
        cfg,
        lambda ckpt, on_epoch: train(cfg, train_xy, test_xy, checkpoint=ckpt, on_epoch=on_epoch),
        digest=digest,
        on_epoch=lambda e, r: log(
            f"{label:14s} epoch {e}/{cfg.epochs} loss {r['loss']:.4f} test L2 {r['test_l2']:.4f} ({r['seconds']:.1f} s)"
        ),
    )


def run(scale: str, run_id: str | None = None, methods: MethodRuns | None = None) -> tuple[list[dict], dict]:
    """Train and evaluate every model of the scale. ``methods``: each model's MLflow child run gets
    its config, per-epoch metrics and the trained model (registered as ``operator-<label>``)."""
    import torch

    import data
    from operators.fno import (
        count_params,
        evaluate,
        input_domain_ratio,
        pairs,
    )

    from .. import plots
    from ..generate import get_dataset
    from ..tracking import MethodRuns
    from . import progress_logger

    log = progress_logger()
    methods = methods or MethodRuns(None)
    c = CONFIGS[scale]
    problem = f"navier-stokes-{c['n']}"
    t0 = time.perf_counter()
    ref, ref2 = (get_dataset(spec) for spec in datasets(scale))
    log(f"datasets ready in {time.perf_counter() - t0:.1f} s: {ref.path}, {ref2.path}")
    train_xy, test_xy = pairs(data.load(ref, "train")), pairs(data.load(ref, "test"))
    test2x = pairs(data.load(ref2, "test"))
    found, preds = {}, {}
    for label in c["models"]:
        cfg = train_config(c, MODELS[label])
        methods.log_params(label, cfg.model_dump(mode="json"))
        trained = train_operator(label, cfg, train_xy, test_xy, ref.digest)
        model, history = trained.model, trained.history
        err, err2 = evaluate(model, *test_xy), evaluate(model, *test2x)
        with torch.no_grad():
            preds[label] = model(test_xy[0][:3].to(next(model.parameters()).device)).cpu()
        found[label] = {
            "method": label,
            "problem": problem,
            "scale": scale,
            "params": count_params(model),
            "test_l2": round(err["l2"], 4),
            "test_h1": round(err["h1"], 4),
            "test_l2_2x": round(err2["l2"], 4),
            "test_h1_2x": round(err2["h1"], 4),
            "sec_per_epoch": round(statistics.median(h["seconds"] for h in history), 2),
            "peak_mib": round(history[-1].get("peak_mib", trained.peak_mib), 1),
            "input_domain": round(input_domain_ratio(model, c["n"]), 3),
        }
        log(
            f"{label:14s} params {found[label]['params']} test L2 {err['l2']:.4f} H1 {err['h1']:.4f} "
            f"2x L2 {err2['l2']:.4f}"
        )
        for row in history:  # after the measurements: logging is not training time or memory
            methods.on_epoch(label, problem)(row["epoch"], row)
        methods.log_model(label, model, f"operator-{label}", (-1, 1, -1, -1))
    base = found["fno"]
    rows = []
    for row in found.values():
        row["compression_vs_fno"] = round(base["params"] / row["params"], 2)
        row["l2_vs_fno"] = round(row["test_l2"] / base["test_l2"], 3)
        row["l2_2x_vs_fno"] = round(row["test_l2_2x"] / base["test_l2_2x"], 3)
        row["time_vs_fno"] = round(row["sec_per_epoch"] / base["sec_per_epoch"], 3)
        rows.append(row)
    fig = plots.operator_predictions(
        test_xy[0][:3], test_xy[1][:3], {k: preds[k] for k in ("fno", "mg-tfno-r0.02") if k in preds}
    )
    return rows, {"predictions": fig}

"""DCDM training-budget curve (issue #18): is DCDM losing because it is under-trained?

Both DCDM networks (``paper``: the reference's one pooling level; ``multilevel``: the V-cycle
with shared weights, :class:`operators.dcdm.MultilevelDCDMNet`) are trained on the same data at
each of the scale's budgets (more Ritz vectors, more right-hand sides, more epochs; the budget's
compute is ``sample_passes = n_samples x epochs`` network forward+backward passes at the training
size, its wall time is measured). Every trained model then solves the held-out systems of the
linear benchmark (new disk layouts at each size, Gaussian-random-field and divergence right-hand
sides) with ``dcdm-k2`` to ``1e-6``; ICPCG and PETSc CG+GAMG solve the same systems once.
Rows: iterations to ``1e-4`` and ``1e-6`` with the ratio to ICPCG, and per network and budget the
iteration growth from the smallest to the largest size. The plot: DCDM / ICPCG iterations against
training seconds, one panel per size.

Training goes through the cached ``train-dcdm`` flow, so a re-run (or the diagnosis,
:mod:`flows.benchmarks.linear_diagnosis`) reuses the trained checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from operators.dcdm import DCDMTrainConfig

from . import progress_logger
from .linear import growth_row, make_rhs, test_system

if TYPE_CHECKING:
    from ..tracking import MethodRuns

NETS = ("paper", "multilevel")
SIZES = {"smoke": [16, 32], "small": [64, 128, 256], "paper": [64, 128, 256, 512]}
#: (ritz_m, n_samples, epochs) per budget, smallest first; the training grid is TRAIN_N.
BUDGETS = {
    "smoke": [(40, 32, 1), (60, 64, 2)],
    # 3k .. 160k sample passes (53x): about 0.5, 1.5, 5 and 27 minutes for the paper network on 2 cores
    "small": [(500, 600, 5), (1000, 1500, 6), (1000, 3000, 10), (2000, 8000, 20)],
    # the reference's data (20,000 right-hand sides) and beyond, on a GPU worker
    "paper": [(2000, 5000, 20), (5000, 20000, 50), (10000, 20000, 200)],
}
TRAIN_N = {"smoke": 16, "small": 64, "paper": 64}
RHS_KINDS = ("grf", "divergence")
TOLS = (1e-4, 1e-6)
MAXITER = {"smoke": 100, "small": 300, "paper": 1000}
META = {
    "question": "does DCDM reach <= 0.5x ICPCG iterations (tol 1e-6) at 128^2 and 256^2 with more training, "
    "and does the multilevel network keep iteration growth 64^2 -> 256^2 <= 1.5x?",
    "compute": "sample_passes = n_samples x epochs forward+backward passes of the network on the training grid",
    "stopping": "||b - A x|| <= tol ||b||, true residual; DCDM capped at MAXITER iterations, stops early "
    "only at a fixed point (no energy decrease in 100 steps)",
}


def config(scale: str, budget: int, net: str) -> DCDMTrainConfig:
    """The training config of budget ``budget`` (0-based) for network ``net``."""
    ritz_m, n_samples, epochs = BUDGETS[scale][budget]
    return DCDMTrainConfig(
        n=TRAIN_N[scale],
        ritz_m=ritz_m,
        n_samples=n_samples,
        epochs=epochs,
        batch_size=32 if scale != "smoke" else 16,
        net=net,
    )


def trained(scale: str, budget: int, net: str, run_id: str | None = None):
    """``(model on the default device, training history)`` of one budget, through the cached
    ``train-dcdm`` flow (trains once per config)."""
    from operators import default_device, load_checkpoint, model_from_checkpoint

    from ..dcdm import train_dcdm

    ckpt = train_dcdm(config=config(scale, budget, net), parent_run_id=run_id, register_model=False)
    history = load_checkpoint(ckpt).get("history", [])
    return model_from_checkpoint(ckpt, kind="dcdm", device=default_device()), history


def _baselines(sizes, log) -> dict:
    """ICPCG and GAMG on every held-out system: ``{(n, kind): {method: SolveResult}}``."""
    from solvers.linear import solve

    out = {}
    for n in sizes:
        system = test_system(n)
        for kind in RHS_KINDS:
            b = make_rhs(system, kind, seed=n)
            out[n, kind] = {
                m: solve(system, b, m, tol=min(TOLS), maxiter=5 * system.n, check=False) for m in ("icpcg", "gamg")
            }
            log(
                f"{n}^2 {kind:10s} icpcg {out[n, kind]['icpcg'].iterations} it, gamg {out[n, kind]['gamg'].iterations} it"
            )
    return out


def _row(method, n, kind, tol, res, ref, scale, extra) -> dict:
    # the right-hand sides have unit norm (make_rhs): tol is also the absolute threshold
    hit = res.reached(tol)
    ref_hit = ref.reached(tol)
    its, secs = hit or (res.iterations, res.seconds + res.setup_seconds)
    ref_its, ref_secs = ref_hit or (np.nan, np.nan)
    return {
        "method": method,
        "problem": f"poisson2d-neumann-disks-{n}",
        "scale": scale,
        **extra,
        "rhs": kind,
        "tol": tol,
        "iterations": its,
        "converged": hit is not None,
        "seconds": round(secs, 4),
        "iters_vs_icpcg": round(its / ref_its, 3),
        "time_vs_icpcg": round(secs / ref_secs, 3),
    }


def run(scale: str, run_id: str | None = None, methods: MethodRuns | None = None) -> tuple[list[dict], dict]:
    """The budget curve at ``scale`` (module docstring); rows and the ``budget`` figure."""
    from solvers.linear import solve

    log = progress_logger()
    sizes = SIZES[scale]
    base = _baselines(sizes, log)
    rows: list[dict] = []
    for (n, kind), found in base.items():
        for method, res in found.items():
            for tol in TOLS:
                rows.append(_row(method, n, kind, tol, res, found["icpcg"], scale, {"budget": "-"}))
    for net in NETS:
        method = f"dcdm-{net}"
        if methods is not None:
            methods.log_params(
                method, {"budgets": [config(scale, i, net).model_dump(mode="json") for i in range(len(BUDGETS[scale]))]}
            )
        for i in range(len(BUDGETS[scale])):
            cfg = config(scale, i, net)
            model, history = trained(scale, i, net, run_id)
            train_seconds = sum(h.get("seconds", 0.0) + h.get("data_seconds", 0.0) for h in history)
            extra = {
                "budget": f"b{i + 1}",
                "net": net,
                "ritz_m": cfg.ritz_m,
                "n_samples": cfg.n_samples,
                "epochs": cfg.epochs,
                "sample_passes": cfg.n_samples * cfg.epochs,
                "train_seconds": round(train_seconds, 1),
                "final_loss": round(history[-1]["loss"], 5) if history else np.nan,
                "parameters": sum(p.numel() for p in model.parameters()),
            }
            for n in sizes:
                system = test_system(n)
                for kind in RHS_KINDS:
                    b = make_rhs(system, kind, seed=n)
                    res = solve(system, b, "dcdm", tol=min(TOLS), maxiter=MAXITER[scale], model=model, check=False)
                    log(
                        f"{method} b{i + 1} ({extra['sample_passes']} passes, {train_seconds:.0f} s) {n}^2 {kind:10s} "
                        f"{res.iterations} it ({res.info['reason']}), icpcg {base[n, kind]['icpcg'].iterations}"
                    )
                    for tol in TOLS:
                        rows.append(_row(method, n, kind, tol, res, base[n, kind]["icpcg"], scale, extra))
            rows.append(_growth(rows, method, extra, sizes, scale))
    return rows, {"budget": budget_plot(rows, sizes)}


def _growth(rows, method, extra, sizes, scale) -> dict:
    """Mean DCDM iterations (1e-6) at the largest size over the smallest, for one budget."""

    def at(n):
        return [
            r
            for r in rows
            if r["method"] == method
            and r.get("budget") == extra["budget"]
            and r["tol"] == TOLS[-1]
            and r["problem"].endswith(f"-{n}")
        ]

    return growth_row(method, at(sizes[0]), at(sizes[-1]), sizes[0], sizes[-1], scale, **extra)


def budget_plot(rows: list[dict], sizes: list[int]):
    """DCDM iterations / ICPCG iterations (tol 1e-6, mean over right-hand sides) against training
    seconds, one panel per test size. A run that did not converge counts as the cap (MAXITER, a
    lower bound: it stopped there or earlier at a fixed point); open markers: not all converged."""
    from ..plots import plt

    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.6), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for k, net in enumerate(NETS):
            picked = [
                r
                for r in rows
                if r.get("net") == net and r["tol"] == TOLS[-1] and r["problem"] == f"poisson2d-neumann-disks-{n}"
            ]
            budgets = sorted({r["budget"] for r in picked})
            xs, ys, ok = [], [], []
            for bud in budgets:
                sel = [r for r in picked if r["budget"] == bud]
                xs.append(sel[0]["train_seconds"])
                ys.append(
                    float(
                        np.mean(
                            [
                                r["iters_vs_icpcg"]
                                if r["converged"]
                                else MAXITER[r["scale"]] * r["iters_vs_icpcg"] / r["iterations"]
                                for r in sel
                            ]
                        )
                    )
                )
                ok.append(all(r["converged"] for r in sel))
            ax.plot(xs, ys, color=f"C{k}", label=f"dcdm-{net}")
            for x, y, c in zip(xs, ys, ok, strict=True):
                ax.plot(x, y, "o", color=f"C{k}", fillstyle="full" if c else "none")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training seconds (2 CPU cores)")
        ax.set_title(f"held-out {n}x{n}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("DCDM / ICPCG iterations (1e-6)")
    axes[0, 0].legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    return fig


def metric_prefix(row: dict) -> str:
    """MLflow metric prefix: problem, budget, right-hand side and tolerance."""
    from ..tracking import key_part

    return f"{key_part(row['problem'])}/{key_part(row['budget'])}/{key_part(row['rhs'])}-tol{row['tol']:g}"


def ship_dcdm(net: str = "multilevel", scale: str = "small", dim: int = 2) -> str:
    """Ship a ``dim``-D DCDM model of network ``net``: in 2D the largest model of the ``scale``
    budget curve (:mod:`flows.benchmarks.linear_budget`), in 3D
    :data:`flows.benchmarks.linear.SHIP_3D`'s ``scale`` config (32^3 at ``small``). Trains it
    through ``train-dcdm`` (reused when cached), records its DCDM iterations on the held-out
    systems (:func:`flows.benchmarks.linear.shipped_counts`) and writes the weights and manifest
    (:func:`operators.dcdm.shipped.write_shipped`). Returns the manifest path."""
    from operators import model_from_checkpoint
    from operators.dcdm.shipped import write_shipped

    from ..dcdm import train_dcdm
    from .linear import SHIP_3D, shipped_counts

    if dim == 2:
        cfg = config(scale, len(BUDGETS[scale]) - 1, net)
    elif dim == 3:
        cfg = SHIP_3D[scale].model_copy(update={"net": net})
    else:
        raise ValueError(f"ship-dcdm: dim must be 2 or 3, got {dim}")
    ckpt = train_dcdm(config=cfg, register_model=False)
    recorded = shipped_counts(model_from_checkpoint(ckpt, kind="dcdm"), dim=dim)
    path = write_shipped(
        ckpt,
        command=f"sciflow ship-dcdm --net {net} --scale {scale}" + (" --dim 3" if dim == 3 else ""),
        recorded=recorded,
        extra={"budget_scale": scale},
    )
    return str(path)

"""MG-TFNO training budget and compression (issue #19): convergence curves and the error-vs-size front.

Three parts, one run, same recipe as :mod:`flows.benchmarks.operators` (AdamW, step schedule, H1
training loss, seed 0, Navier-Stokes ``w(0) -> w(5)`` at ``nu = 1e-4``):

* **curves**: a few models (dense FNO, per-layer and joint Tucker TFNO, MG-TFNO) trained for many
  epochs on one dataset, test relative L2 / H1 after every epoch; per model the best epoch, the
  best and final errors, and whether it was still improving (best of the last 10 % of epochs more
  than 1 % below the best before them). Plot: test L2 and H1 against epochs.
* **pareto**: test L2 against parameter count over relative Tucker ranks :data:`RANKS` (the
  issue's {0.5, ..., 0.01}), per-layer vs joint factorization (:mod:`operators.fno.joint`), without
  and with multigrid patching (one level, padding 1/16), plus the dense FNO; all at one fixed
  budget (the scale's epochs). Errors are the last epoch's and the best epoch's. A joint rank
  below one Tucker rank per index in some mode is refused by the model (reported as a ``refused``
  row with the message, not trained).

* **seeds**: the per-layer and joint TFNO at a few ranks (about equal parameter counts) again with
  other seeds (the pareto part is seed 0), for the spread of the joint-vs-per-layer difference.

Every part trains through :func:`flows.benchmarks.training.train_model`, so a killed run resumes and
a finished model is reused. Errors against the dense FNO's are ratios of best test L2s.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from data.errors import InputError
from data.spec import NavierStokesSpec

from .operators import FLOW, MODELS, train_config, train_operator

if TYPE_CHECKING:
    from ..tracking import MethodRuns

#: the curves' models: the operators benchmark's registry and the joint TFNO at the MG-TFNO's rank
CURVE_MODELS = {**MODELS, "tfno-joint-r0.02": dict(name="tfno", rank=0.02, factorization="joint")}
PARTS = ("curves", "pareto", "seeds")
RANKS = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
#: pareto series: (factorization, multigrid)
SERIES = (("per-layer", False), ("joint", False), ("per-layer", True), ("joint", True))
CONFIGS = {
    "smoke": dict(
        curves=dict(
            n=32,
            n_train=32,
            n_test=8,
            epochs=3,
            step_size=1,
            batch_size=8,
            hidden=16,
            modes=8,
            models=["fno", "tfno-r0.05", "tfno-joint-r0.05", "mg-tfno-r0.05"],
        ),
        # 3 epochs, not the operators smoke's 2: the same model on the same data would otherwise
        # share its checkpoint with that benchmark (same config, data and code: reused, not trained)
        pareto=dict(
            n=32, n_train=32, n_test=8, epochs=3, step_size=1, batch_size=8, hidden=16, modes=8, ranks=[0.2, 0.05]
        ),
        seeds=dict(ranks=[0.05], seeds=[1]),
    ),
    # 2 CPU cores. curves: 64^2 at the operators benchmark's width and modes, 100 epochs on 200
    # samples (about 4-12 s per epoch and model: ~55 min), two multigrid levels included (0.14 of
    # the domain per sample); pareto: 32^2, 12 modes, 25 epochs on 400
    # samples (about 2.5 s per epoch, 4 s with multigrid: ~35 min for the 25 models)
    "small": dict(
        curves=dict(
            n=64,
            n_train=200,
            n_test=100,
            epochs=100,
            step_size=25,
            batch_size=8,
            hidden=32,
            modes=16,
            models=["fno", "tfno-r0.02", "tfno-joint-r0.02", "mg-tfno-r0.02", "mg-tfno-l2-r0.02"],
        ),
        pareto=dict(
            n=32, n_train=400, n_test=100, epochs=25, step_size=8, batch_size=16, hidden=32, modes=12, ranks=list(RANKS)
        ),
        # the pareto's settings, seeds 1 and 2 for the per-layer / joint pairs of about equal size
        seeds=dict(ranks=[0.05, 0.02], seeds=[1, 2]),
    ),
    # the paper's resolution and data size on a GPU worker, joint factorization and two levels included
    "paper": dict(
        curves=dict(
            n=128,
            n_train=10000,
            n_test=1000,
            epochs=200,
            step_size=50,
            batch_size=32,
            hidden=64,
            modes=32,
            models=["fno", "tfno-r0.05", "tfno-joint-r0.05", "mg-tfno-joint-r0.02", "mg-tfno-l2-r0.02"],
        ),
        pareto=dict(
            n=128,
            n_train=10000,
            n_test=1000,
            epochs=100,
            step_size=25,
            batch_size=32,
            hidden=64,
            modes=32,
            ranks=list(RANKS),
        ),
        seeds=dict(ranks=[0.05, 0.02], seeds=[1, 2]),
    ),
}
#: "still improving": the best of the last STALL_TAIL of the epochs beats the best before by > STALL_GAIN
STALL_TAIL, STALL_GAIN = 0.1, 0.01
MG = dict(levels=1, padding_fraction=0.0625)
META = {
    "question": "how far do dense FNO, TFNO and MG-TFNO get with training (curves), and what test error does "
    "each parameter count buy, per-layer vs joint factorization, with and without multigrid (pareto)?",
    "targets": "a TFNO or MG-TFNO with >= 20x fewer parameters than dense FNO at <= 1.0x its test L2; joint vs "
    "per-layer at equal parameter count: which is better",
    "data": f"navier_stokes {FLOW}",
    "still_improving": f"best test L2 of the last {STALL_TAIL:.0%} of epochs more than {STALL_GAIN:.0%} below the "
    "best before them",
}


def _spec(part: dict, seed: int = 0) -> NavierStokesSpec:
    return NavierStokesSpec(n=part["n"], n_train=part["n_train"], n_test=part["n_test"], seed=seed, **FLOW)


def datasets(scale: str) -> list[NavierStokesSpec]:
    """The specs this benchmark reads at ``scale``: the curves' and the pareto's datasets."""
    c = CONFIGS[scale]
    return [_spec(c["curves"]), _spec(c["pareto"])]


def pareto_models(ranks) -> dict[str, dict]:
    """label -> model fields of the pareto part: the dense FNO and every (series, rank)."""
    out: dict[str, dict] = {"fno": dict(name="fno")}
    for fact, mg in SERIES:
        for r in ranks:
            label = f"{'mg-' if mg else ''}tfno-{fact}-r{r:g}"
            out[label] = dict(name="mg-tfno" if mg else "tfno", rank=r, factorization=fact, **(MG if mg else {}))
    return out


def curve_summary(history: list[dict]) -> dict:
    """Best epoch (1-based), best / final test L2 and H1, and whether the model was still improving
    (:data:`STALL_TAIL`, :data:`STALL_GAIN`) from a training history with ``test_l2`` / ``test_h1``."""
    if not history or "test_l2" not in history[0]:
        raise InputError("curve_summary needs a non-empty history with test errors per epoch")
    l2 = [h["test_l2"] for h in history]
    best = min(range(len(l2)), key=l2.__getitem__)
    tail = max(1, round(STALL_TAIL * len(l2)))
    before = min(l2[:-tail]) if len(l2) > tail else float("inf")
    return {
        "epochs": len(l2),
        "best_epoch": best + 1,
        "best_test_l2": round(l2[best], 4),
        "best_test_h1": round(history[best]["test_h1"], 4),
        "final_test_l2": round(l2[-1], 4),
        "final_test_h1": round(history[-1]["test_h1"], 4),
        "still_improving": bool(min(l2[-tail:]) < (1 - STALL_GAIN) * before),
    }


def seed_models(ranks, seeds) -> dict[str, dict]:
    """label -> model fields (with ``seed``) of the seeds part: per-layer and joint TFNO at each rank
    and seed."""
    return {
        f"tfno-{fact}-r{r:g}-s{seed}": dict(name="tfno", rank=r, factorization=fact, seed=seed)
        for r in ranks
        for fact in ("per-layer", "joint")
        for seed in seeds
    }


def run(
    scale: str, run_id: str | None = None, methods: MethodRuns | None = None, parts: list[str] | None = None
) -> tuple[list[dict], dict]:
    """Train the ``parts`` (default all of :data:`PARTS`) at ``scale``; rows: one per model and
    part (``part`` = ``curves``, ``pareto`` or ``seeds``), figures ``curves`` and ``pareto``
    (of the parts run)."""
    from ..tracking import MethodRuns

    parts = list(PARTS) if parts is None else parts
    unknown = [x for x in parts if x not in PARTS]
    if unknown or not parts:
        raise InputError(f"parts must be a non-empty list of {list(PARTS)}, got {parts!r}")
    methods = methods or MethodRuns(None)
    c = CONFIGS[scale]
    rows, figures = [], {}
    if "curves" in parts:
        curves = _part(scale, "curves", c["curves"], {k: CURVE_MODELS[k] for k in c["curves"]["models"]}, methods)
        rows += curves
        figures["curves"] = curve_plot(curves)
    if "pareto" in parts:
        pareto = _part(scale, "pareto", c["pareto"], pareto_models(c["pareto"]["ranks"]), methods)
        rows += pareto
        figures["pareto"] = pareto_plot(pareto)
    if "seeds" in parts:
        rows += _part(scale, "seeds", c["pareto"], seed_models(**c["seeds"]), methods)
    return rows, figures


def _part(scale: str, part: str, p: dict, models: dict[str, dict], methods: MethodRuns) -> list[dict]:
    import data
    from operators.fno import count_params, input_domain_ratio, pairs
    from operators.fno.models import build_model

    from ..generate import get_dataset
    from . import progress_logger

    log = progress_logger()
    ref = get_dataset(_spec(p))
    train_xy, test_xy = pairs(data.load(ref, "train")), pairs(data.load(ref, "test"))
    problem = f"navier-stokes-{p['n']}"
    rows = []
    for label, fields in models.items():
        method = f"{part}/{label}"
        base = dict(part=part, method=method, model=label, problem=problem, scale=scale, n_train=p["n_train"])
        fields = dict(fields)
        seed = fields.pop("seed", 0)
        series = dict(
            seed=seed,
            rank=fields.get("rank"),
            factorization="dense" if fields["name"] == "fno" else fields.get("factorization", "per-layer"),
            multigrid=fields["name"] == "mg-tfno",
        )
        try:
            cfg = train_config(p, fields, seed)
            build_model(cfg.model)  # a joint rank is checked against the built network's weight shapes
        except InputError as exc:  # a joint rank below one Tucker rank per index: reported, not trained
            log(f"{method}: refused: {exc}")
            rows.append({**base, **series, "refused": str(exc)})
            continue
        methods.log_params(method, cfg.model_dump(mode="json"))
        trained = train_operator(method, cfg, train_xy, test_xy, ref.digest)
        history = trained.history
        row = {
            **base,
            **series,
            "params": count_params(trained.model),
            **curve_summary(history),
            "sec_per_epoch": round(statistics.median(h["seconds"] for h in history), 2),
            "input_domain": round(input_domain_ratio(trained.model, p["n"]), 3),
        }
        if part == "curves":
            row["curve_l2"] = [round(h["test_l2"], 4) for h in history]
            row["curve_h1"] = [round(h["test_h1"], 4) for h in history]
        log(f"{method}: params {row['params']} best test L2 {row['best_test_l2']} at epoch {row['best_epoch']}")
        for h in history:
            methods.on_epoch(method, problem)(h["epoch"], h)
        rows.append(row)
    dense = next((r for r in rows if r["model"] == "fno"), None)
    for r in rows:
        if dense is not None and "params" in r:
            r["compression_vs_fno"] = round(dense["params"] / r["params"], 2)
            r["l2_vs_fno"] = round(r["best_test_l2"] / dense["best_test_l2"], 3)
    return rows


def curve_plot(rows: list[dict]):
    """Test relative L2 (left) and H1 (right) against epochs, one line per model; a dot at each best epoch."""
    from ..plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, r in enumerate(r for r in rows if "curve_l2" in r):
        for ax, key in zip(axes, ("curve_l2", "curve_h1"), strict=True):
            ys = r[key]
            ax.plot(range(1, len(ys) + 1), ys, color=f"C{k}", lw=1.2, label=f"{r['model']} ({r['params']:,} params)")
        axes[0].plot(r["best_epoch"], r["best_test_l2"], "o", color=f"C{k}", ms=4)
    for ax, name in zip(axes, ("relative L2", "relative H1"), strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"test {name}")
        ax.grid(True, which="both", alpha=0.3)
    n = rows[0]["problem"] if rows else ""
    axes[0].set_title(f"{n}, {rows[0]['n_train'] if rows else 0} training samples", fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto_plot(rows: list[dict]):
    """Best test relative L2 against parameter count (log-log): one line per series (per-layer /
    joint factorization, without / with multigrid) over the ranks, the dense FNO as a star."""
    from ..plots import plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for k, (fact, mg) in enumerate(SERIES):
        pts = sorted(
            (r["params"], r["best_test_l2"], r["rank"])
            for r in rows
            if "params" in r and r["factorization"] == fact and r["multigrid"] == mg
        )
        if not pts:
            continue
        xs, ys, ranks = zip(*pts, strict=True)
        ax.plot(
            xs, ys, "o-" if fact == "joint" else "s--", color=f"C{k}", ms=4, label=f"{'MG-' if mg else ''}TFNO {fact}"
        )
        for x, y, r in zip(xs, ys, ranks, strict=True):
            ax.annotate(f"{r:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    for r in rows:
        if r.get("model") == "fno":
            ax.plot(r["params"], r["best_test_l2"], "*", color="k", ms=11, label="dense FNO")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("best test relative L2")
    if rows:
        ax.set_title(f"{rows[0]['problem']}, {rows[0]['n_train']} training samples (labels: relative rank)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def metric_prefix(row: dict) -> str:
    """MLflow metric prefix: the part and problem."""
    from ..tracking import key_part

    return f"{row['part']}/{key_part(row['problem'])}"

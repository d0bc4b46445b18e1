"""Linear-solver benchmark: DCDM (k=2, k=0) vs CG, ICPCG, DPCG and PETSc CG+GAMG.

The 2D network is the shipped one (``operators/dcdm/weights``, made by ``sciflow ship-dcdm``: the
budget curve's best network at its largest budget, :mod:`flows.benchmarks.linear_budget`; the 3D
one, trained at 32^3, by ``sciflow ship-dcdm --dim 3`` from :data:`SHIP_3D`), or
with ``retrain`` the scale's :data:`TRAIN` config trained by the ``train-dcdm`` flow (cached by
config); either was trained on one 2D Neumann Poisson matrix with a disk obstacle layout. Every solver runs on held-out systems: new obstacle layouts at
each test size, and three kinds of right-hand side (Ritz-sampled from the test matrix, a smooth
Gaussian random field, the divergence of a random velocity field). Iterations and seconds to
``1e-4`` and ``1e-6`` (true relative residual; each solver runs once to the tighter tolerance
and the looser one is read off the same run's history and per-iteration clock) are reported with ratios to ICPCG and GAMG
measured in the same run, plus iteration growth from the smallest to the largest size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from data.pdes.random_fields import grf
from operators.dcdm import DCDMTrainConfig
from solvers.linear import GridSystem, ritz_pairs, solve

from . import progress_logger

if TYPE_CHECKING:
    from ..tracking import MethodRuns

SIZES = {"smoke": [16, 32], "small": [64, 128, 256], "paper": [64, 128, 256, 512]}
TRAIN = {
    "smoke": DCDMTrainConfig(n=16, ritz_m=60, n_samples=64, epochs=2, batch_size=16),
    "small": DCDMTrainConfig(n=64, ritz_m=1000, n_samples=2400, epochs=10, batch_size=32),
    "paper": DCDMTrainConfig(n=64, ritz_m=2000, n_samples=20000, epochs=50, batch_size=64),
}
# 3D with --retrain: (training config, test sizes). On 2 CPU cores a 32^3 training run takes about
# an hour, so `small` retrains at 16^3 and tests 32^3; without --retrain the shipped 32^3 network
# (SHIP_3D) is tested at TEST_3D's sizes.
TRAIN_3D = {
    "smoke": None,
    "small": (DCDMTrainConfig(n=16, dim=3, ritz_m=400, n_samples=800, epochs=4, batch_size=16), [32]),
    "paper": (DCDMTrainConfig(n=32, dim=3, ritz_m=2000, n_samples=10000, epochs=30, batch_size=16), [64, 128]),
}
#: the shipped 3D network's training config (``sciflow ship-dcdm --dim 3``): trained at 32^3, tested
#: at 32^3 and 64^3 on held-out layouts. `small` is what 2 CPU cores give in about an hour
#: (12k sample passes, 0.26 s each); `paper` is the paper's 3D setting, for a GPU worker.
SHIP_3D = {
    "smoke": DCDMTrainConfig(n=8, dim=3, ritz_m=40, n_samples=32, epochs=1, batch_size=8),
    "small": DCDMTrainConfig(n=32, dim=3, ritz_m=1000, n_samples=2000, epochs=6, batch_size=8),
    "paper": TRAIN_3D["paper"][0],
}
TEST_3D = {"smoke": None, "small": [32, 64], "paper": [32, 64, 128]}
TOLS = (1e-4, 1e-6)
#: per dimension, the sizes a shipped model's recorded iteration counts are measured at (held-out
#: layouts; 64^2 and 32^3 are the training sizes)
SHIPPED_SIZES = {2: (64, 128), 3: (32,)}
METHODS = ("dcdm-k2", "dcdm-k0", "cg", "icpcg", "dpcg", "gamg")
RHS_KINDS = ("ritz", "grf", "divergence")
META = {
    "targets": "dcdm-k2 <= 0.5x icpcg iterations at 128^2 and 256^2 (tol 1e-6); dcdm-k2 iteration growth "
    "64^2 -> 256^2 <= 1.5x (cg ~4x)",
    "stopping": "||b - A x|| <= tol ||b||, true residual, every method",
}


def test_system(n: int, dim: int = 2) -> GridSystem:
    """A held-out system: Neumann Poisson with a disk (ball) layout never used in training."""
    return GridSystem.from_poisson(n, dim, "neumann", "disks", seed=1000 + n)


def make_rhs(system: GridSystem, kind: str, seed: int = 0) -> np.ndarray:
    """A unit-norm right-hand side of ``kind`` (``ritz`` | ``grf`` | ``divergence``),
    zero on solid cells and orthogonal to the null space."""
    rng = np.random.default_rng(seed)
    n, dim = system.shape[0], system.dim
    if kind == "ritz":
        vals, V = ritz_pairs(system, min(200, system.n // 4), seed=seed)
        c = rng.standard_normal(V.shape[1])
        c[: V.shape[1] // 2] *= 9.0
        b = V @ c
    elif kind == "grf":
        b = grf(rng, n, dim, alpha=2.0, tau=3.0).ravel()
    elif kind == "divergence":
        vel = [grf(rng, n, dim, 2.5, 3.0) for _ in range(dim)]
        for comp in vel:  # no flow through walls: velocity zero in solids
            if system.mask is not None:
                comp[system.mask] = 0.0
        b = sum(np.gradient(comp, axis=dim - 1 - k) for k, comp in enumerate(vel)).ravel() * n
    else:
        raise ValueError(f"unknown right-hand side kind {kind!r}; choose one of {RHS_KINDS}")
    b = system.project(b)
    return b / np.linalg.norm(b)


def _solve(method: str, system: GridSystem, b: np.ndarray, tol: float, model):
    if method.startswith("dcdm"):
        return solve(system, b, "dcdm", tol=tol, maxiter=400, model=model, n_orth=int(method[-1]), check=False)
    return solve(system, b, method, tol=tol, maxiter=5 * system.n, check=False)


def _table(model, sizes: list[int], dim: int, kinds, scale: str, log) -> tuple[list[dict], dict]:
    """Rows for every solver on held-out ``dim``-D systems of each size; and the residual
    histories of the largest size's GRF right-hand side."""
    rows: list[dict] = []
    histories: dict[str, list[float]] = {}
    for n in sizes:
        system = test_system(n, dim)
        for kind in kinds:
            b = make_rhs(system, kind, seed=n)
            # one solve per method to the tightest tolerance; the looser ones are read off its
            # history (the iterates do not depend on the tolerance)
            found = {}
            for method in METHODS:
                found[method] = _solve(method, system, b, min(TOLS), model)
                log(
                    f"{n}^{dim} {kind:10s} {method:8s} {found[method].iterations:5d} it  "
                    f"{found[method].seconds + found[method].setup_seconds:8.3f} s  converged={found[method].converged}"
                )
            if kind == "grf" and n == sizes[-1]:
                histories = {m: [r / res.residuals[0] for r in res.residuals] for m, res in found.items()}
            for tol in TOLS:
                hit = {m: res.reached(tol * np.linalg.norm(b)) for m, res in found.items()}
                for method, res in found.items():
                    its, secs = hit[method] or (res.iterations, res.seconds + res.setup_seconds)
                    ref_i, ref_s = hit["icpcg"] or (np.nan, np.nan)
                    gamg_s = hit["gamg"][1] if hit["gamg"] else np.nan
                    rows.append(
                        {
                            "method": method,
                            "problem": f"poisson{dim}d-neumann-disks-{n}",
                            "scale": scale,
                            "rhs": kind,
                            "tol": tol,
                            "iterations": its,
                            "seconds": round(secs, 4),
                            "setup_seconds": round(res.setup_seconds, 4),
                            "converged": hit[method] is not None,
                            "iters_vs_icpcg": round(its / ref_i, 3),
                            "time_vs_icpcg": round(secs / ref_s, 3),
                            "time_vs_gamg": round(secs / gamg_s, 3),
                        }
                    )
    return rows, histories


def growth_row(
    method: str, lo_rows: list[dict], hi_rows: list[dict], lo: int, hi: int, scale: str, dim: int = 2, **extra
) -> dict:
    """The iteration-growth row of ``method``: mean iterations (tol 1e-6) of its ``hi_rows`` (the
    largest size) over those of its ``lo_rows`` (the smallest); ``extra`` fields go in the row.
    Its problem is ``growth-<lo>-to-<hi>`` (``growth3d-...`` in 3D)."""
    its_lo, its_hi = (float(np.mean([r["iterations"] for r in rs])) for rs in (lo_rows, hi_rows))
    return {
        "method": method,
        "problem": f"growth{'' if dim == 2 else f'{dim}d'}-{lo}-to-{hi}",
        "scale": scale,
        **extra,
        "rhs": "mean",
        "tol": TOLS[-1],
        "iterations": its_hi,
        "growth": round(its_hi / its_lo, 3),
        "converged": all(r["converged"] for r in lo_rows + hi_rows),
    }


def metric_prefix(row: dict) -> str:
    """MLflow metric prefix of a row: problem, right-hand side and tolerance
    (``poisson2d-neumann-disks-32/grf-tol1e-06/iterations``)."""
    from ..tracking import key_part

    return f"{key_part(row['problem'])}/{key_part(row['rhs'])}-tol{row['tol']:g}"


def method_params(method: str, scale: str, retrain: bool = False) -> dict:
    """A method's configuration as logged to its MLflow child run."""
    if method.startswith("dcdm"):
        params: dict = {"solver": "dcdm", "n_orth": int(method[-1]), "maxiter": 400}
        if retrain:
            params |= {"training": TRAIN[scale].model_dump(mode="json"), "weights": "retrained"}
            if TRAIN_3D[scale] is not None:
                params |= {"training_3d": TRAIN_3D[scale][0].model_dump(mode="json"), "weights_3d": "retrained"}
            return params
        from operators.dcdm.shipped import manifest

        for dim, suffix in ((2, ""), (3, "_3d")):
            if dim == 3 and TEST_3D[scale] is None:
                continue
            info = manifest(dim)
            params |= {f"training{suffix}": info["config"], f"weights{suffix}": f"shipped sha256 {info['sha256']}"}
        return params
    return {"solver": method, "maxiter": "5 x unknowns"}


def shipped_counts(model, sizes=None, kinds=("grf", "divergence"), tol: float = 1e-6, dim: int = 2) -> dict[str, int]:
    """DCDM (k=2) iterations to ``tol`` on the held-out ``dim``-D systems (``sizes``: default
    ``SHIPPED_SIZES[dim]``), ``{"<n>/<rhs kind>": its}`` (-1: not
    converged in 1000): what a shipped model records in its manifest and
    ``tests/operators/test_dcdm_shipped.py`` re-checks."""
    out = {}
    for n in sizes or SHIPPED_SIZES[dim]:
        system = test_system(n, dim)
        for kind in kinds:
            res = solve(system, make_rhs(system, kind, seed=n), "dcdm", tol=tol, maxiter=1000, model=model, check=False)
            out[f"{n}/{kind}"] = res.iterations if res.converged else -1
    return out


def growth_rows(rows: list[dict], sizes: list[int], scale: str, dim: int) -> list[dict]:
    """Every method's :func:`growth_row` from the first to the last of ``sizes`` (``dim``-D ``rows``)."""
    lo, hi = sizes[0], sizes[-1]
    out = []
    for method in METHODS:

        def at(n):
            return [
                r
                for r in rows
                if r["method"] == method and r["tol"] == TOLS[-1] and r["problem"] == f"poisson{dim}d-neumann-disks-{n}"
            ]

        out.append(growth_row(method, at(lo), at(hi), lo, hi, scale, dim))
    return out


def run(
    scale: str, run_id: str | None = None, methods: MethodRuns | None = None, retrain: bool = False
) -> tuple[list[dict], dict]:
    """Every solver on the scale's held-out systems. The 2D DCDM network is the shipped one
    (:func:`operators.dcdm.shipped.load_shipped`, logged to the ``dcdm-k2`` run and registered as
    ``dcdm-2d``), or with ``retrain`` one trained from scratch by ``train-dcdm`` (its own MLflow
    run, nested under ``run_id``, registers ``dcdm-2d``); the 3D one likewise: the shipped 3D
    network (trained at 32^3) on :data:`TEST_3D`'s sizes, or with ``retrain`` :data:`TRAIN_3D`'s
    config trained afresh (registers ``dcdm-3d``) on its sizes.
    ``methods``: each solver's MLflow child run gets its configuration."""
    from operators import default_device, model_from_checkpoint
    from operators.dcdm.shipped import load_shipped, manifest

    from ..dcdm import train_dcdm

    log = progress_logger()
    if methods is not None:
        for method in METHODS:
            methods.log_params(method, {**method_params(method, scale, retrain), "tol": min(TOLS)})
    if retrain:
        model = model_from_checkpoint(
            train_dcdm(config=TRAIN[scale], parent_run_id=run_id), kind="dcdm", device=default_device()
        )
    else:
        model = load_shipped(2, device=default_device())
        log(f"DCDM: the shipped 2D network ({manifest(2)['sha256'][:12]}; --retrain trains one)")
        if methods is not None:
            methods.log_model("dcdm-k2", model, "dcdm-2d", (-1, 1, -1, -1))
    rows, histories = _table(model, SIZES[scale], 2, RHS_KINDS, scale, log)
    rows += growth_rows(rows, SIZES[scale], scale, 2)
    if retrain and TRAIN_3D[scale] is not None:
        cfg3, sizes3 = TRAIN_3D[scale]
        model3 = model_from_checkpoint(
            train_dcdm(config=cfg3, parent_run_id=run_id), kind="dcdm", device=default_device()
        )
    elif not retrain and TEST_3D[scale] is not None:
        model3, sizes3 = load_shipped(3, device=default_device()), TEST_3D[scale]
        log(f"DCDM: the shipped 3D network ({manifest(3)['sha256'][:12]})")
    else:
        model3 = None
    if model3 is not None:
        rows3, _ = _table(model3, sizes3, 3, ("grf",), scale, log)
        rows += rows3 + (growth_rows(rows3, sizes3, scale, 3) if len(sizes3) > 1 else [])
    figures = {}
    if histories:
        from ..plots import residual_plot

        figures["residuals"] = residual_plot(
            histories, f"relative residual, {SIZES[scale][-1]}x{SIZES[scale][-1]}, GRF right-hand side"
        )
    return rows, figures

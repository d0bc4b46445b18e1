"""Hard-constraint benchmark: soft-constraint PINN vs single hard constraint (PI-HC) vs PI-HC-MoE.

Chalapathi, Du & Krishnapriyan, ICLR 2024. One run, same FNO basis network, data, optimizer and
step budget for every model, on problems generated with PETSc TS: 1D diffusion-sorption
(PDEBench's setting, nonlinear: Levenberg-Marquardt layer) and 2D heat (linear: closed-form
Cholesky layer); at ``paper`` scale also the paper's 2D Navier-Stokes setting (Re 1e4, 256^2 x 64,
N = 64, quadratic: LM). Per model: relative L2 error against the PETSc trajectories on the test split,
RMS PDE residual on held-out points, RMS initial/boundary violation, seconds per training step
(median), inference seconds per sample, and for MoE the jump between neighbouring experts at their
interfaces; ratios against the soft constraint and against the single hard constraint.

Also measured: the random-assignment ablation (K = 4, points dealt to experts at random), the step
time against the number of constraint points for K = 1 and K = 4 (a plot), and the cvxpylayers
backend against the closed form on the heat rows (agreement in value and gradient, time per solve).
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

from data.spec import DiffusionSorptionSpec, HeatSpec, NavierStokesSpec, PDESpec

if TYPE_CHECKING:
    from ..tracking import MethodRuns

PROBLEMS = {
    "smoke": {
        "diffusion-sorption": DiffusionSorptionSpec(n=16, n_times=8, n_train=4, n_test=2, seed=0),
        "heat-2d": HeatSpec(n=8, dim=2, kappa=0.01, t_final=1.0, n_times=5, n_train=4, n_test=2, seed=0),
        "navier-stokes-2d": NavierStokesSpec(
            n=8, viscosity=1e-4, horizon=5.0, n_times=4, forcing=0.0, n_train=4, n_test=2, seed=0
        ),
    },
    "small": {
        # PDEBench's parameters, IC and time axis (101 levels over t = 500) on 64 of its 1024 cells: at
        # 1024 cells the FNO's forward and backward alone take ~0.8 s per sample on 2 quiet CPU cores
        # (~3 s per batch-4 step, ~2 hours for the six models at one seed; docs/hard-constraints.md)
        "diffusion-sorption": DiffusionSorptionSpec(n=64, n_times=100, n_train=64, n_test=16, seed=0),
        "heat-2d": HeatSpec(n=16, dim=2, kappa=0.01, t_final=1.0, n_times=10, n_train=64, n_test=16, seed=0),
        # the paper's 2D setting, small: unforced, Re 1e4 (nu = 1e-4), T = 5; 24^2 x 11 (paper: 64^2 x 64)
        "navier-stokes-2d": NavierStokesSpec(
            n=24, viscosity=1e-4, horizon=5.0, n_times=10, forcing=0.0, n_train=32, n_test=8, seed=0
        ),
    },
    "paper": {
        "diffusion-sorption": DiffusionSorptionSpec(n=1024, n_times=100, n_train=9000, n_test=1000, seed=0),
        "heat-2d": HeatSpec(n=64, dim=2, kappa=0.01, t_final=1.0, n_times=32, n_train=1000, n_test=100, seed=0),
        # the paper's 2D setting: unforced (its data root NS-no-forcing), Re = 1e4 (nu = 1e-4), T = 5,
        # 64^2 x 64 for training, N = 64 basis functions, 20k points per expert
        "navier-stokes-2d": NavierStokesSpec(
            n=64, viscosity=1e-4, horizon=5.0, n_times=63, forcing=0.0, n_train=4000, n_test=100, seed=0
        ),
    },
}
#: per scale and problem, over the scale's config (Navier-Stokes: K = 1, 2, 4 as the paper's 2 x 2, no ablation)
OVERRIDES = {
    "smoke": {"navier-stokes-2d": dict(experts=(1, 2, 4), ablation=False, scaling_points=())},
    # Navier-Stokes at one seed: its four models take ~40 minutes per seed on 2 CPU cores
    "small": {"navier-stokes-2d": dict(experts=(1, 2, 4), ablation=False, steps=200, scaling_points=(), seeds=(0,))},
    "paper": {
        "navier-stokes-2d": dict(n_basis=64, experts=(1, 2, 4), ablation=False, scaling_points=(100, 1000, 10000))
    },
}
CONFIGS = {
    "smoke": dict(
        steps=3,
        batch_size=2,
        points=48,
        hidden=8,
        n_layers=2,
        modes=4,
        n_basis=8,
        experts=(1, 2, 4),
        scaling_points=(32, 64),
        scaling_steps=2,
        oracle_points=(16,),
        parallel_grid=(9, 64),
        parallel_points=(64, 256),
        parallel_batch=1,
        parallel_steps=1,
        seeds=(0,),
    ),
    "small": dict(
        steps=400,
        batch_size=4,
        points=1024,
        hidden=32,
        n_layers=4,
        modes=8,
        n_basis=16,
        experts=(1, 2, 4, 8),
        scaling_points=(128, 256, 512, 1024, 2048),
        scaling_steps=6,
        oracle_points=(64, 256, 1024),
        # experts in parallel on the paper's diffusion-sorption grid (101 x 1024) and point axis
        parallel_grid=(101, 1024),
        parallel_points=(1000, 10000, 100000),
        parallel_batch=1,
        parallel_steps=5,
        # every compared model at three seeds (the ablation at the first): orderings are claimed
        # only beyond the seeds' spread
        seeds=(0, 1, 2),
    ),
    "paper": dict(
        steps=4050,
        batch_size=6,
        points=20000,
        hidden=64,
        n_layers=5,
        modes=8,
        n_basis=16,
        experts=(1, 2, 4, 8),
        scaling_points=(100, 1000, 10000, 100000),
        scaling_steps=10,
        oracle_points=(256, 1024),
        parallel_grid=(101, 1024),
        parallel_points=(1000, 10000, 100000),
        parallel_batch=6,
        parallel_steps=10,
        seeds=(0,),
    ),
}
META = {
    "targets": "diffusion-sorption: MoE rel. L2 < single hard constraint < soft constraint and MoE <= 0.1x soft "
    "(paper: 3.6 % / 7.6 % / 85.9 %); interface jumps and a random-assignment ablation reported; at "
    "equal constraint points, s/step with K=4 <= 0.5x K=1, step time sub-linear in the points; "
    "cvxpylayers and closed form agree on the linear case",
}


def model_label(mc: dict) -> str:
    if mc.get("mode") == "soft":
        return "soft-pinn"
    k = int(np.prod(mc["experts"]))
    if k == 1:
        return "pi-hc"
    return f"pi-hc-moe-k{k}" + ("-random" if mc.get("assignment") == "random" else "")


def model_configs(scale: str, grid: tuple[int, ...], problem: str = "", residual_mask=None) -> list[dict]:
    """Model config fields for every compared model (soft, K = 1, the MoE Ks, the random ablation).

    Every expert draws the scale's ``points`` PDE points (``points_per="expert"``: the paper's
    accuracy runs, 20k per expert, 80k in all at K = 4); with ``residual_mask`` (the PDE's), capped
    at the fewest residual points an expert's block holds (the row reports the number used)."""
    from operators.hard import Router, layout_for

    c = config(scale, problem)
    net = dict(
        hidden=c["hidden"],
        n_layers=c["n_layers"],
        modes=(min(c["modes"], grid[0] // 2),) + tuple(min(c["modes"], n // 2) for n in grid[1:]),
        n_basis=c["n_basis"],
    )

    def hard(k: int, assignment: str = "blocks") -> dict:
        layout = layout_for(k, grid)
        points = c["points"]
        if residual_mask is not None:
            points = min(points, Router(grid, layout, residual_mask, assignment).capacity)  # type: ignore[arg-type]
        return dict(points=points, points_per="expert", experts=layout, assignment=assignment, **net)

    out = [dict(mode="soft", experts=(1,) * len(grid), **net)]
    out += [hard(k) for k in c["experts"]]
    if c.get("ablation", True):
        out.append(hard(4 if 4 in c["experts"] else c["experts"][-1], "random"))
    return out


def datasets(scale: str) -> list[PDESpec]:
    """The specs this benchmark reads at ``scale``: one per problem."""
    return list(PROBLEMS[scale].values())


def config(scale: str, problem: str = "") -> dict:
    """The scale's benchmark settings with the problem's overrides."""
    return {**CONFIGS[scale], **OVERRIDES[scale].get(problem, {})}


def _load(spec):
    import torch

    import data
    from operators.hard import from_dataset

    from ..generate import get_dataset

    ref = get_dataset(spec)
    tr, te = data.load(ref, "train"), data.load(ref, "test")
    pde = from_dataset(spec.family, spec, tr.arrays)
    key = "w" if spec.family == "navier_stokes" else "u"
    u0 = torch.as_tensor(tr[key][:, 0], dtype=torch.float32)
    return pde, u0, torch.as_tensor(te[key][:, 0], dtype=torch.float32), torch.as_tensor(te[key]), ref


def step_times(pde, u0, scale: str, points: tuple[int, ...], ks=(1, 4)) -> list[dict]:
    """Median seconds per training step (forward with the solve, backward, Adam) for each K and number
    of constraint points, on a fresh model (after one warm-up step)."""
    import torch

    from operators.hard import HardModelConfig, HardTrainConfig, layout_for, train

    c = CONFIGS[scale]
    rows = []
    for k in ks:
        for m in points:
            cfg = HardTrainConfig(
                model=HardModelConfig(
                    **{
                        **model_configs(scale, pde.grid, pde.name)[1],
                        "points": m,
                        "points_per": "total",  # the paper's step-time axis: the experts share the points
                        "experts": layout_for(k, pde.grid),
                    }
                ),
                steps=c["scaling_steps"] + 1,
                batch_size=c["batch_size"],
            )
            torch.manual_seed(0)
            _, hist = train(cfg, pde, u0, log_every=1)
            sec = statistics.median(h["step_seconds"] for h in hist[1:])
            rows.append({"experts": k, "points": m, "s_per_step": round(sec, 4)})
    return rows


def parallel_step_times(scale: str) -> list[dict]:
    """Experts in parallel on CPU workers: seconds per training step (forward with the solve,
    backward, Adam; median after one warm-up step) of K = 2 experts on 2 workers against K = 1 (all
    points in one expert, every torch thread), measured one after the other at each total number of
    constraint points (the paper's Fig. 4 axis: ``points_per="total"``), on diffusion-sorption at
    the ``parallel_grid`` (PDEBench's 101 x 1024 at small) with PDEBench's constant initial levels.
    Each row splits the step into the basis network (forward and backward, the same work for
    every K), the constraint solve (forward and implicit backward, what the workers share) and the
    LM iterations, to show what does and does not parallelize."""
    import torch

    from operators.hard import DiffusionSorption, HardConstraintModel, HardModelConfig, loss_terms

    c = CONFIGS[scale]
    nt, nx = c["parallel_grid"]
    pde = DiffusionSorption(t=np.linspace(0.0, 500.0, nt), t_final=500.0, x=(np.arange(nx) + 0.5) / nx)
    g = torch.Generator().manual_seed(0)
    u0 = (torch.rand(c["parallel_batch"], 1, generator=g) * 0.2).expand(-1, nx).contiguous()
    net = {
        k: v for k, v in model_configs(scale, pde.grid)[1].items() if k in ("hidden", "n_layers", "modes", "n_basis")
    }
    rows = []
    # K = 1 on every core (the same hardware as K = 2: its large kernels run on all torch threads)
    # and K = 1 on one core: the paper's comparison (Fig. 4), one device for PI-HC against one
    # device per expert for PI-HC-MoE
    variants = (("K=1", 1, 1, None), ("K=1 one core", 1, 1, 1), ("K=2 workers=2", 2, 2, None))
    threads = {label: n for label, _, _, n in variants}
    for m in c["parallel_points"]:
        runs = {}
        for label, k, workers, _ in variants:
            torch.manual_seed(0)
            cfg = HardModelConfig(points=m, points_per="total", experts=(1, k), workers=workers, **net)
            model = HardConstraintModel(cfg, pde)
            runs[label] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), torch.Generator().manual_seed(1))
        parts: dict[str, dict[str, list[float]]] = {label: {} for label in runs}
        # the variants' steps alternate (in alternating order), so both see the same machine load
        for step in range(c["parallel_steps"] + 1):
            for label in list(runs)[:: 1 if step % 2 else -1]:
                model, opt, gen = runs[label]
                restore = torch.get_num_threads()
                torch.set_num_threads(threads[label] or restore)
                t0 = time.perf_counter()
                phi = model.backbone(u0)
                t1 = time.perf_counter()
                leaf = phi.detach().double().requires_grad_()
                out = model.constrain(leaf, u0.double(), gen)
                terms = loss_terms(pde, out.u, u0.double())
                (g_phi,) = torch.autograd.grad(terms["pde"] + terms["conditions"], leaf)
                t2 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                phi.backward(g_phi.to(phi.dtype))
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                t3 = time.perf_counter()
                torch.set_num_threads(restore)
                if step == 0:
                    continue  # warm-up
                for key, v in (
                    ("s_per_step", t3 - t0),
                    ("network_s", (t1 - t0) + (t3 - t2)),
                    ("solve_s", t2 - t1),
                    ("lm_iters", out.info.iterations if out.info else 0),
                ):
                    parts[label].setdefault(key, []).append(v)
        by = {label: {key: statistics.median(v) for key, v in p.items()} for label, p in parts.items()}
        base, one = by["K=1"], by["K=1 one core"]
        for label, r in by.items():
            rows.append(
                {
                    "method": label,
                    "points": m,
                    "grid": f"{nt}x{nx}",
                    "batch": c["parallel_batch"],
                    "s_per_step": round(r["s_per_step"], 3),
                    "network_s": round(r["network_s"], 3),
                    "solve_s": round(r["solve_s"], 3),
                    "lm_iters": r["lm_iters"],
                    "step_vs_k1": round(r["s_per_step"] / base["s_per_step"], 3),
                    "solve_vs_k1": round(r["solve_s"] / base["solve_s"], 3),
                    "step_vs_one_core": round(r["s_per_step"] / one["s_per_step"], 3),
                    "threads": threads[label] or torch.get_num_threads(),
                }
            )
    return rows


def backend_oracle(pde, u0, scale: str) -> list[dict]:
    """cvxpylayers vs the closed form on the same heat constraint rows (same basis, same points): max
    relative difference of ``w`` and of the loss gradient with respect to the basis, seconds per
    solve (forward + backward) for each."""
    import torch

    from operators.hard import HardConstraintModel, HardModelConfig, loss_terms

    c = CONFIGS[scale]
    rows = []
    for m in c["oracle_points"]:
        out, grads, secs = {}, {}, {}
        for backend in ("cholesky", "cvxpylayers"):
            torch.manual_seed(0)
            cfg = HardModelConfig(
                **{**model_configs(scale, pde.grid)[1], "points": m, "backend": backend, "ridge": 1e-2}
            )
            model = HardConstraintModel(cfg, pde)
            pts = model.router.sample(m, torch.Generator().manual_seed(0))
            with torch.no_grad():
                phi = model.backbone(u0[:2]).double()
            phi.requires_grad_()
            times = []
            for _ in range(2):  # the second call is timed (the first builds the cvxpy problem / warms up)
                t0 = time.perf_counter()
                o = model.constrain(phi, u0[:2].double(), points=pts)
                (g,) = torch.autograd.grad(sum(loss_terms(pde, o.u, u0[:2].double()).values()), phi)
                times.append(time.perf_counter() - t0)
            secs[backend] = times[-1]
            out[backend], grads[backend] = o.w.detach(), g
        dw = float((out["cvxpylayers"] - out["cholesky"]).abs().max() / out["cholesky"].abs().max())
        dg = float((grads["cvxpylayers"] - grads["cholesky"]).abs().max() / grads["cholesky"].abs().max())
        rows.append(
            {
                "points": m,
                "w_rel_diff": dw,
                "grad_rel_diff": dg,
                "s_cholesky": round(secs["cholesky"], 4),
                "s_cvxpylayers": round(secs["cvxpylayers"], 3),
                "cvxpylayers_vs_cholesky": round(secs["cvxpylayers"] / secs["cholesky"], 1),
            }
        )
    return rows


def seed_summary(per_seed: list[dict]) -> dict:
    """``rel_l2`` as the mean over the seeds' test errors, with their sample standard deviation,
    minimum, maximum and count (one seed: ``rel_l2_sd`` is ``None``)."""
    errs = [r["rel_l2"] for r in per_seed]
    return {
        "rel_l2": round(statistics.fmean(errs), 4),
        "rel_l2_sd": round(statistics.stdev(errs), 4) if len(errs) > 1 else None,
        "rel_l2_min": round(min(errs), 4),
        "rel_l2_max": round(max(errs), 4),
        "seeds": len(errs),
    }


def metric_prefix(row: dict) -> str:
    """MLflow metric prefix of a row: the problem; the step-time and backend rows add their
    number of constraint points (``heat-2d/points64/s_per_step``; the parallel-experts rows
    ``diffusion-sorption/parallel/points1000/...``; each seed's test error ``.../seed1/rel_l2``)."""
    from ..tracking import key_part

    if row.get("part") == "parallel":
        return f"{key_part(row['problem'])}/parallel/points{row['points']}"
    if row.get("part") == "seeds":
        return f"{key_part(row['problem'])}/seed{row['seed']}"
    if row.get("part") in ("scaling", "backends"):
        return f"{key_part(row['problem'])}/points{row['points']}"
    return key_part(row["problem"])


def run(scale: str, run_id: str | None = None, methods: MethodRuns | None = None) -> tuple[list[dict], dict]:
    """Every problem and model of the scale. ``methods``: each model's MLflow child run gets its
    config per problem, the training history (``<problem>/train/<name>`` per logged step) and the
    trained model (registered as ``hard-<problem>-<label>``)."""
    import torch

    from operators.hard import HardModelConfig, HardTrainConfig, evaluate, train

    from .. import plots, tracking
    from . import progress_logger
    from .training import train_model

    log = progress_logger()
    methods = methods or tracking.MethodRuns(None)
    rows, figures, curves = [], {}, {}
    for problem, spec in PROBLEMS[scale].items():
        t0 = time.perf_counter()
        pde, u0, u0_test, u_test, ref = _load(spec)
        if problem == "heat-2d":
            heat = pde, u0  # the backend check below runs on it
        if run_id is not None:
            tracking.log_dataset(run_id, ref, "training")
        log(
            f"{problem}: grid {pde.grid}, {len(u0)} train / {len(u0_test)} test, data in {time.perf_counter() - t0:.1f} s"
        )
        found, preds, spread = {}, {}, {}
        pc = config(scale, problem)
        for mc in model_configs(scale, pde.grid, problem, pde.residual_mask()):
            label = model_label(mc)
            # the random-assignment ablation runs once; the compared models at every seed of the scale
            seeds = pc["seeds"][:1] if mc.get("assignment") == "random" else pc["seeds"]
            per_seed = []
            for seed in seeds:
                first = seed == seeds[0]
                cfg = HardTrainConfig(
                    model=HardModelConfig(**mc), steps=pc["steps"], batch_size=pc["batch_size"], seed=seed
                )
                if first:
                    methods.log_params(label, {problem: cfg.model_dump(mode="json")})
                trained = train_model(
                    "hard",
                    f"{problem}-{label}" + ("" if first else f"-seed{seed}"),
                    cfg,
                    lambda ckpt, on_epoch, cfg=cfg: train(
                        cfg, pde, u0, checkpoint=ckpt, on_epoch=on_epoch, log_every=max(cfg.steps // 4, 1)
                    ),
                    digest=ref.digest,
                    on_epoch=lambda s, r, label=label, cfg=cfg: log(
                        f"{problem} {label:22s} seed {cfg.seed} step {s}/{cfg.steps} loss {r['loss']:.4g} "
                        f"({r['seconds']:.3f} s/step)"
                    ),
                )
                model, hist = trained.model, trained.history
                ev = evaluate(model, u0_test, u_test)
                per_seed.append({"seed": seed, **{k: ev.get(k, 0.0) for k in ("rel_l2", "residual", "jump_mean")}})
                log(
                    f"{problem} {label:22s} seed {seed} rel L2 {ev['rel_l2']:.4f} residual {ev['residual']:.3g} "
                    f"jump {ev.get('jump_mean', 0):.3g}"
                )
                if not first:
                    continue
                # the first seed's model: timings, the prediction figure, its history and the registered model
                with torch.no_grad():
                    preds[label] = model(u0_test[:1]).u[0].float()
                found[label] = {
                    "method": label,
                    "problem": problem,
                    "scale": scale,
                    "experts": int(np.prod(mc.get("experts", (1,)))),
                    "points_per_expert": mc.get("points", 0),
                    "residual": round(ev["residual"], 4),
                    "residual_held_out": round(ev["residual_held_out"], 3),
                    "conditions": round(ev["conditions"], 4),
                    "s_per_step": round(hist[-1]["seconds"], 4),
                    "infer_s": round(ev["infer_seconds"], 4),
                    "jump_mean": round(ev.get("jump_mean", 0.0), 4),
                    "jump_max": round(ev.get("jump_max", 0.0), 4),
                    "lm_iters": hist[-1].get("lm_iterations"),
                    "train_s": round(trained.seconds, 1),
                }
                for row in hist:  # after the timings: logging is not training time
                    methods.on_epoch(label, problem)(row["step"], row)
                methods.log_model(
                    label, model, f"hard-{problem}-{label}", (-1, *(-1,) * len(pde.grid[1:])), output=False
                )
            found[label].update(seed_summary(per_seed))
            spread[label] = per_seed
        for label, per_seed in spread.items():
            for r in per_seed:
                rows.append({"part": "seeds", "method": label, "problem": problem, "scale": scale, **r})
        soft, hard = found["soft-pinn"], found["pi-hc"]
        for row in found.values():
            row["l2_vs_soft"] = round(row["rel_l2"] / soft["rel_l2"], 3)
            row["l2_vs_hc"] = round(row["rel_l2"] / hard["rel_l2"], 3)
            row["step_vs_hc"] = round(row["s_per_step"] / hard["s_per_step"], 3)
            row["infer_vs_hc"] = round(row["infer_s"] / hard["infer_s"], 3)
            rows.append({"part": "models", **row})
        figures[f"{problem}-predictions"] = plots.space_time_predictions(u_test[0], preds, pde.grid, title=problem)
        scaling_points = config(scale, problem)["scaling_points"]
        if scaling_points:
            log(f"{problem}: step time vs constraint points (K = 1, 4)")
            curve = step_times(pde, u0, scale, scaling_points)
            curves[problem] = curve
            for r in curve:
                rows.append({"part": "scaling", "method": f"K={r['experts']}", "problem": problem, "scale": scale, **r})
    figures["step_time_scaling"] = plots.step_time_scaling(curves)
    log("experts in parallel: K = 2 on 2 CPU workers vs K = 1")
    for r in parallel_step_times(scale):
        rows.append({"part": "parallel", "problem": "diffusion-sorption", "scale": scale, **r})
        log(f"parallel {r['method']:14s} points {r['points']:>7} {r['s_per_step']:.3f} s/step ({r['step_vs_k1']}x K=1)")
    pde, u0 = heat
    for r in backend_oracle(pde, u0, scale):
        rows.append(
            {"part": "backends", "method": "cvxpylayers-vs-cholesky", "problem": "heat-2d", "scale": scale, **r}
        )
    return rows, figures

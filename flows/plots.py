"""Figures people look at instead of reading numbers: dataset samples and benchmark tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _imshow(ax, img, title):
    im = ax.imshow(img, origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def dataset_samples(dataset, n: int = 3):
    """A figure of the first ``n`` samples of a loaded dataset split (input | solution)."""
    family = dataset.spec.family
    arr = dataset.arrays
    if family == "lotka_volterra":
        u, t = arr["u"], arr["t"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for i in range(min(n, u.shape[0])):
            ax.plot(t, u[i, :, 0], color=f"C{i}", label=f"prey {i}")
            ax.plot(t, u[i, :, 1], color=f"C{i}", linestyle="--", label=f"predator {i}")
        ax.set_xlabel("t")
        ax.legend(fontsize=7, ncol=2)
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.15, top=0.95)
        return fig
    if family in ("heat", "navier_stokes", "diffusion_sorption"):
        u = arr["u"] if "u" in arr else np.swapaxes(arr["w"], -1, -2)  # NS axes are (x, y): rows = y
        k = min(n, u.shape[0])
        fig, axes = plt.subplots(1, k, figsize=(4 * k, 3.2), squeeze=False)
        for i in range(k):
            ax = axes[0, i]
            if u.ndim == 3:  # (N, T, n): space-time image
                im = ax.imshow(u[i].T, origin="lower", aspect="auto", extent=(0, float(arr["t"][-1]), 0, 1))
                ax.set_xlabel("t")
                ax.set_ylabel("x")
                plt.colorbar(im, ax=ax)
                ax.set_title(f"sample {i}: u(x, t)", fontsize=9)
            else:
                _imshow(ax, np.concatenate([u[i, 0], u[i, -1]], axis=1), f"sample {i}: u(t=0) | u(t=T)")
        fig.subplots_adjust(left=0.06, right=0.95, bottom=0.15, top=0.9, wspace=0.35)
        return fig
    names = ("a", "u") if family == "darcy" else ("b", "x")
    data = [arr[name] for name in names]
    if data[0].ndim == 4:  # 3D Poisson: the middle z-slice
        data = [d[:, d.shape[1] // 2] for d in data]
    k = min(n, data[0].shape[0])
    fig, axes = plt.subplots(2, k, figsize=(3.6 * k, 6.4), squeeze=False)
    for i in range(k):
        for row, (name, d) in enumerate(zip(names, data, strict=False)):
            _imshow(axes[row, i], d[i], f"{name} (sample {i})")
    fig.suptitle(f"{family}: {dataset.split} split, n={data[0].shape[-1]}", fontsize=10)
    fig.subplots_adjust(left=0.03, right=0.95, bottom=0.03, top=0.9, wspace=0.3, hspace=0.25)
    return fig


def residual_plot(histories: dict[str, list[float]], title: str = ""):
    """Relative residual vs iteration (log scale), one line per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, hist in histories.items():
        ax.semilogy(np.arange(len(hist)), hist, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("||b - Ax|| / ||b - Ax0||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.9)
    return fig


def loss_plot(history: list[dict], title: str = ""):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.15, top=0.9)
    return fig


def nfe_curves(curves: dict[str, dict[str, list[float]]]):
    """Prediction NFE per epoch, one panel per task, one line per regularizer."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for ax, (task, lines) in zip(axes[0], curves.items(), strict=False):
        for name, values in lines.items():
            ax.plot(np.arange(1, len(values) + 1), values, marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("prediction NFE")
        ax.set_title(task, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    return fig


def inverse_problem_figure(problem, x):
    """True vs recovered log-coefficient, their difference, and the observed data (Darcy inverse)."""
    _, m = problem.split(x)
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    lo, hi = problem.m_true.min(), problem.m_true.max()
    for ax, img, title in ((axes[0], problem.m_true, "true log a"), (axes[1], m, "recovered log a")):
        im = ax.imshow(img, origin="lower", extent=(0, 1, 0, 1), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    _imshow(axes[2], m - problem.m_true, f"error (rel. L2 {problem.coefficient_error(x):.3f})")
    _imshow(axes[3], problem.d, "observed u (noisy)")
    fig.tight_layout()
    return fig


def operator_predictions(x, y, preds: dict, n: int = 3):
    """Rows: test samples; columns: input, truth, then prediction and |error| per model.
    ``x``, ``y``: ``(N, 1, h, w)`` tensors; ``preds``: model name -> ``(N, 1, h, w)``."""
    n = min(n, len(x))
    cols = 2 + 2 * len(preds)
    fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols, 2.3 * n), squeeze=False)
    for i in range(n):
        _imshow(axes[i, 0], x[i, 0].numpy(), "input w(t0)")
        _imshow(axes[i, 1], y[i, 0].numpy(), "truth w(t0+T)")
        for k, (name, p) in enumerate(preds.items()):
            _imshow(axes[i, 2 + 2 * k], p[i, 0].numpy(), name)
            _imshow(axes[i, 3 + 2 * k], (p[i, 0] - y[i, 0]).abs().numpy(), f"|error| {name}")
    fig.tight_layout()
    return fig


def space_time_predictions(u_true, preds: dict, grid: tuple, title: str = ""):
    """Truth and each model's prediction and |error| for one test sample. 1D problems (grid ``(nt, nx)``):
    space-time images; 2D (``(nt, n, n)``): the final time slice. Tensors of shape ``grid``."""
    cols = 1 + len(preds)
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 4.6), squeeze=False)

    def show(ax, a, name):
        a = a.detach().cpu().numpy()
        img = a.T if len(grid) == 2 else a[-1]
        im = ax.imshow(img, origin="lower", aspect="auto")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        plt.colorbar(im, ax=ax, fraction=0.046)

    show(axes[0, 0], u_true, "truth (PETSc)" + (" u(x, t)" if len(grid) == 2 else " u(T)"))
    axes[1, 0].axis("off")
    for k, (name, p) in enumerate(preds.items()):
        show(axes[0, k + 1], p, name)
        show(axes[1, k + 1], (p.double() - u_true.double()).abs(), f"|error| {name}")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def step_time_scaling(curves: dict):
    """Seconds per training step against constraint points, one line per (problem, K); log-log with a
    linear-growth guide. ``curves``: problem -> rows with ``experts``, ``points``, ``s_per_step``."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (problem, rows) in enumerate(curves.items()):
        for k, style in zip(sorted({r["experts"] for r in rows}), ("-", "--", ":"), strict=False):
            pts = sorted((r["points"], r["s_per_step"]) for r in rows if r["experts"] == k)
            ax.plot(*zip(*pts, strict=False), style, marker="o", color=f"C{i}", label=f"{problem}, K={k}")
        first = (
            min(r["points"] for r in rows),
            min(r["s_per_step"] for r in rows if r["points"] == min(r["points"] for r in rows)),
        )
        xs = np.array(sorted({r["points"] for r in rows}))
        ax.plot(xs, first[1] * xs / first[0], color=f"C{i}", alpha=0.3, linewidth=4, label=f"{problem}, linear growth")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("constraint points per step (all experts)")
    ax.set_ylabel("seconds per training step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


#: The one number per row that the nightly overview plots for each stage, and what it means.
NIGHTLY_HEADLINES: dict[str, tuple[str, str]] = {
    "generate-dataset": ("samples_per_s", "PETSc samples / s"),
    "benchmark-linear-solvers": ("iterations", "iterations to the tightest tolerance (largest grid)"),
    "benchmark-operators": ("test_l2", "test relative L2 error"),
    "benchmark-neural-odes": ("predict_nfe", "function evaluations per prediction"),
    "benchmark-optimizers": ("median_outer", "outer iterations (HS set: median)"),
    "benchmark-hard-constraints": ("rel_l2", "test relative L2 error"),
}


def nightly_overview(rows: list[dict], title: str = ""):
    """One horizontal bar panel per nightly stage: its headline metric (:data:`NIGHTLY_HEADLINES`)
    for every (problem, method) row that has it; a log axis when the values span > 30x.
    Returns None when no row has a headline value."""
    panels = []
    for stage, (metric, label) in NIGHTLY_HEADLINES.items():
        fallback = "outer" if metric == "median_outer" else None
        bars = [
            (f"{r.get('problem', '')} · {r.get('method', '')}".strip(" ·"), r.get(metric, r.get(fallback)))
            for r in rows
            if r.get("stage") == stage
        ]
        bars = [
            (name, float(v))
            for name, v in bars
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        ]
        if bars:
            panels.append((stage, label, bars))
    if not panels:
        return None
    heights = [max(1.2, 0.22 * len(bars) + 0.8) for _, _, bars in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(7.5, sum(heights)), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for ax, (stage, label, bars) in zip(axes[:, 0], panels, strict=True):
        names, values = zip(*bars, strict=True)
        y = np.arange(len(values))
        ax.barh(y, values, color=[f"C{i % 10}" for i in range(len(values))])
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        positive = [v for v in values if v > 0]
        if positive and len(positive) == len(values) and max(positive) / min(positive) > 30:
            ax.set_xscale("log")
        ax.set_title(f"{stage}: {label}", fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig

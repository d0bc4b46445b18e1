"""DCDM diagnosis against the ideal direction (issue #18): what the trained network misses, and why
its iterations grow with the grid.

For each DCDM network of :mod:`flows.benchmarks.linear_budget` at its largest budget (the cached
``train-dcdm`` checkpoints; trained here if absent) on the held-out systems of the linear benchmark
(GRF right-hand side):

* **direction quality**, per iteration ``k``: the cosine of the angle, in the A inner product,
  between the network's raw direction ``q_k = f(r_{k-1} / ||r_{k-1}||)`` and the ideal one
  ``A^+ r_{k-1}`` (the exact error, from a sparse direct solve): ``cos_A = q.r / sqrt(q.Aq r.A^+r)``.
  ``cos_A = 1`` solves the system in one step; one exact line search along ``q`` keeps a fraction
  ``1 - cos_A^2`` of the error's A-norm squared. Rows give the median over the first 20
  iterations (``cos_a_median``) and the per-step reduction of the residual and of the A-norm error.
* **which part of the spectrum is missed** (at the training size): the A-energy of the error
  ``sum_j lambda_j (v_j.e)^2`` split over the eigenvalues of ``A`` (dense eigendecomposition) in
  the lowest 1 %, 1-10 % and the rest of the fluid spectrum, after ``K_SPECTRUM`` iterations of
  DCDM, CG and ICPCG, each as a fraction of the initial error's energy.
* **wall time per iteration** beyond the training size: the network pass before and after the
  inference changes (``inference_mode``, channels-last), the A-orthogonalisation and the sparse
  products (:func:`profile_iteration`).
* **the stop rule**: at every size the DCDM run's residual and A-norm error histories (plot), with
  the reason it stopped; the run stops as "stagnated" only at a fixed point (energy not
  decreasing), never while the A-norm error still falls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from . import progress_logger
from .linear import make_rhs, test_system
from .linear_budget import BUDGETS, MAXITER, NETS, SIZES, trained

if TYPE_CHECKING:
    from solvers.linear import GridSystem

    from ..tracking import MethodRuns

K_SPECTRUM = {"smoke": 5, "small": 20, "paper": 20}
BANDS = ((0.0, 0.01), (0.01, 0.10), (0.10, 1.0))
META = {
    "cos_a": "A-inner-product cosine between the network's raw direction f(r/||r||) and the ideal A^+ r "
    "(1: one-step solve; one line search keeps 1 - cos^2 of the squared A-norm error)",
    "spectrum": "A-energy of the error in the lowest 1 %, 1-10 %, 10-100 % of the fluid eigenvalues, "
    "fraction of the initial error's, after K_SPECTRUM iterations",
}


def pseudo_inverse(system: GridSystem):
    """``r -> A^+ r`` on the fluid cells by one sparse LU (bordered with the null vector when ``A``
    is singular); ``r`` must be consistent (orthogonal to the null space, zero on solids)."""
    fluid = np.ones(system.n, bool) if system.mask is None else ~system.mask.ravel()
    Af = system.A[fluid][:, fluid]
    if system.null is not None:
        z = system.null[fluid][:, None]
        Af = sp.bmat([[Af, sp.csr_matrix(z)], [sp.csr_matrix(z.T), None]])
    lu = spla.splu(Af.tocsc())

    def apply(r: np.ndarray) -> np.ndarray:
        rhs = r[fluid] if system.null is None else np.r_[r[fluid], 0.0]
        out = np.zeros(system.n)
        out[fluid] = lu.solve(rhs)[: fluid.sum()]
        return out

    return apply


def direction_quality(system: GridSystem, b: np.ndarray, model, maxiter: int, ideal=None):
    """DCDM on ``(system, b)`` with the ideal direction beside it: ``(result, cos_A per iteration)``.
    ``ideal``: the system's :func:`pseudo_inverse`, if already factored."""
    from solvers.linear.dcdm import dcdm

    ideal = ideal or pseudo_inverse(system)
    A = system.A
    cos: list[float] = []

    def record(r, q, p):
        e = ideal(r)
        cos.append(float(q @ r) / np.sqrt(max(float(q @ (A @ q)) * float(r @ e), 1e-300)))

    res = dcdm(system, b, model, tol=1e-6, maxiter=maxiter, x_ref=ideal(b), callback=record)
    return res, cos


def error_spectrum(system: GridSystem, b: np.ndarray, x: np.ndarray, x_ref: np.ndarray, vals, vecs) -> dict:
    """The A-energy of the error ``x_ref - x`` in each band of the fluid spectrum, as a fraction of
    the initial error's (``x0 = 0``)."""
    out = {}
    c0, c = vecs.T @ x_ref, vecs.T @ (x_ref - x)
    total0 = float(np.sum(vals * c0**2))
    order = np.argsort(vals)
    m = len(vals)
    for lo, hi in BANDS:
        idx = order[int(lo * m) : int(hi * m)]
        out[f"energy_{int(lo * 100)}_{int(hi * 100)}pct"] = float(np.sum(vals[idx] * c[idx] ** 2) / total0)
    out["energy_total"] = float(np.sum(vals * c**2) / total0)
    return out


def fluid_eigen(system: GridSystem):
    """Eigenpairs of ``A`` on the fluid cells without the null space (dense; training size only)."""
    from scipy.linalg import eigh

    fluid = np.ones(system.n, bool) if system.mask is None else ~system.mask.ravel()
    vals, V = eigh(system.A[fluid][:, fluid].toarray())
    keep = vals > 1e-10 * vals.max()
    vecs = np.zeros((system.n, int(keep.sum())))
    vecs[fluid] = V[:, keep]
    return vals[keep], vecs


def profile_iteration(system: GridSystem, model, reps: int = 5) -> dict:
    """Milliseconds of one DCDM iteration's parts on ``system`` (a GRF residual): the network pass
    as first benchmarked (``torch.no_grad``, NCHW: "before") and as :func:`solvers.linear.dcdm.dcdm`
    runs it now (``inference_mode``, NHWC: "after"), the A-orthogonalisation against two
    directions, and the two sparse products (``A p`` and the true residual ``b - A x``)."""
    import time

    import torch

    from solvers.linear.dcdm import network_direction

    r = make_rhs(system, "grf", seed=1)
    A = system.A
    param = next(model.parameters())

    def clock(fn) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e3

    def before():
        x = torch.as_tensor(r / np.linalg.norm(r), dtype=param.dtype, device=param.device)
        with torch.no_grad():
            return system.project(model(x.reshape(1, 1, *system.shape)).reshape(-1).double().cpu().numpy())

    model.to(memory_format=torch.contiguous_format)
    net_before = clock(before)
    model.to(memory_format=torch.channels_last if system.dim == 2 else torch.channels_last_3d)
    net_after = clock(lambda: network_direction(model, system, r))
    p = network_direction(model, system, r)
    prev = [(v, A @ v, float(v @ (A @ v))) for v in (r, A @ r)]

    def orth():
        q = p.copy()
        for v, Av, vAv in prev:
            q -= (q @ Av) / vAv * v
        return q

    out = {
        "network_ms_before": round(net_before, 2),
        "network_ms_after": round(net_after, 2),
        "orthogonalise_ms": round(clock(orth), 3),
        "sparse_products_ms": round(clock(lambda: (A @ p, r - A @ p)), 3),
    }
    out["network_share_after"] = round(net_after / (net_after + out["orthogonalise_ms"] + out["sparse_products_ms"]), 3)
    return out


def run(scale: str, run_id: str | None = None, methods: MethodRuns | None = None) -> tuple[list[dict], dict]:
    """The diagnosis at ``scale`` (module docstring): rows and the ``diagnosis`` figure."""
    from solvers.linear import solve

    log = progress_logger()
    sizes = SIZES[scale]
    last = len(BUDGETS[scale]) - 1
    models = {net: trained(scale, last, net, run_id)[0] for net in NETS}
    rows: list[dict] = []
    curves: dict[int, dict[str, dict[str, list[float]]]] = {}
    spectra: list[dict] = []
    for n in sizes:
        system = test_system(n)
        b = make_rhs(system, "grf", seed=n)
        ideal = pseudo_inverse(system)  # one factorisation per size
        curves[n] = {}
        for net, model in models.items():
            res, cos = direction_quality(system, b, model, MAXITER[scale], ideal)
            a_err = res.info["a_error"]
            resid = [r / res.residuals[0] for r in res.residuals]
            first = min(20, len(cos))
            k = min(20, res.iterations)
            rows.append(
                {
                    "method": f"dcdm-{net}",
                    "problem": f"poisson2d-neumann-disks-{n}",
                    "scale": scale,
                    "part": "direction",
                    "budget": f"b{last + 1}",
                    "iterations": res.iterations,
                    "reason": res.info["reason"],
                    "cos_a_first": round(cos[0], 4) if cos else np.nan,
                    "cos_a_median": round(float(np.median(cos[:first])), 4) if cos else np.nan,
                    "a_error_step_reduction": round(float(a_err[k] ** (1 / max(k, 1))), 4),
                    "residual_step_reduction": round(float(resid[k] ** (1 / max(k, 1))), 4),
                    "a_error_final": float(a_err[-1]),
                    "a_error_monotone": bool(np.all(np.diff(a_err) <= 1e-12)),
                }
            )
            log(
                f"{n}^2 dcdm-{net}: {res.iterations} it ({res.info['reason']}), cos_A first {cos[0]:.3f} median {rows[-1]['cos_a_median']}"
            )
            curves[n][f"dcdm-{net}"] = {"cos_a": cos, "residual": resid, "a_error": a_err}
        if n == sizes[0]:  # the training size: where in the spectrum the error is left
            x_ref = ideal(b)
            vals, vecs = fluid_eigen(system)
            K = K_SPECTRUM[scale]
            runs = {
                f"dcdm-{net}": solve(system, b, "dcdm", tol=1e-12, maxiter=K, model=m, check=False)
                for net, m in models.items()
            }
            runs |= {m: solve(system, b, m, tol=1e-12, maxiter=K, check=False) for m in ("cg", "icpcg")}
            for method, r in runs.items():
                spectra.append(
                    {
                        "method": method,
                        "problem": f"poisson2d-neumann-disks-{n}",
                        "scale": scale,
                        "part": "spectrum",
                        "iterations": r.iterations,
                        **{key: round(v, 6) for key, v in error_spectrum(system, b, r.x, x_ref, vals, vecs).items()},
                    }
                )
            rows += spectra
    for n in sizes[1:]:  # wall time per iteration, beyond the training size
        system = test_system(n)
        for net, model in models.items():
            rows.append(
                {
                    "method": f"dcdm-{net}",
                    "problem": f"poisson2d-neumann-disks-{n}",
                    "scale": scale,
                    "part": "profile",
                    "device": str(next(model.parameters()).device),
                    **profile_iteration(system, model),
                }
            )
            log(f"{n}^2 dcdm-{net} per-iteration ms: {rows[-1]}")
    return rows, {"diagnosis": diagnosis_plot(curves)}


def diagnosis_plot(curves: dict[int, dict[str, dict[str, list[float]]]]):
    """Per size: cos_A per iteration (top) and the residual and A-norm error (bottom, log)."""
    from ..plots import plt

    sizes = list(curves)
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.2 * len(sizes), 6.4), squeeze=False)
    for j, n in enumerate(sizes):
        for k, (method, c) in enumerate(curves[n].items()):
            axes[0, j].plot(np.arange(1, len(c["cos_a"]) + 1), c["cos_a"], color=f"C{k}", label=method, lw=0.8)
            axes[1, j].semilogy(c["residual"], color=f"C{k}", label=f"{method} residual")
            axes[1, j].semilogy(c["a_error"], color=f"C{k}", ls="--", label=f"{method} A-norm error")
        axes[0, j].set_title(f"held-out {n}x{n}, GRF right-hand side", fontsize=10)
        axes[0, j].set_ylabel("cos_A(f(r), A^+ r)")
        axes[1, j].set_xlabel("iteration")
        for ax in axes[:, j]:
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.95, wspace=0.28, hspace=0.25)
    return fig


def metric_prefix(row: dict) -> str:
    """MLflow metric prefix: problem and part."""
    from ..tracking import key_part

    return f"{key_part(row['problem'])}/{row['part']}"

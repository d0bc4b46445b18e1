"""Deep Conjugate Direction Method (Kaneda, West, Kaneko & Teran, ICML 2023, Algorithm 1).

    r0 = b - A x0
    for k = 1, 2, ...:
        q = f(r_{k-1} / ||r_{k-1}||)                                  (network, line 4)
        p_k = q - sum_{i=k-n_orth}^{k-1} (q.A p_i / p_i.A p_i) p_i     (A-orthogonalise, line 5)
        alpha_k = p_k.r_{k-1} / p_k.A p_k                              (line 6)
        x_k = x_{k-1} + alpha_k p_k
        r_k = b - A x_k                                               (true residual, line 8)
        stop when ||r_k|| <= tol ||b||

``n_orth = k`` in the paper is 2; ``n_orth = 0`` uses the raw network directions (the "k=0"
ablation). The network runs in its own dtype (float32); the iterate, residual and directions are
float64. Each direction is zeroed on solid cells and projected off the null space so that it
lives in the range of singular (Neumann) operators.

Devices: the network runs on the device its parameters are on (move the model there first, e.g.
``model_from_checkpoint(path, device=default_device())``); the rest of the iteration (the sparse
``A`` products, A-orthogonalisation, line search) stays in float64 NumPy on the host. Each
iteration therefore copies one float32 grid to the device and one back (2 x 4 N bytes: 0.5 MiB at
256^2), explicitly, in :func:`network_direction`. That is the cheap side: the network's ~16
convolutions dominate a GPU iteration, the host's sparse product is O(N), and keeping the Krylov
part in NumPy keeps the CPU numbers exactly those of the CPU-only code. ``info["device"]`` names
the network's device and ``info["network_seconds"]`` the time spent in its calls (transfers
included).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch

from data.errors import InputError

from .krylov import SolveResult, initial_state
from .system import GridSystem


def network_direction(model: torch.nn.Module, system: GridSystem, r: np.ndarray) -> np.ndarray:
    """``f(r / ||r||)`` as a float64 vector on the fluid cells.

    The network runs in its parameters' dtype on their device: ``r / ||r||`` is copied there
    (float32) and the direction back (the one host-device round trip of an iteration)."""
    param = next(model.parameters())
    x = torch.as_tensor(r / np.linalg.norm(r), dtype=param.dtype, device=param.device)
    with torch.no_grad():
        q = model(x.reshape(1, 1, *system.shape)).reshape(-1)
    return system.project(q.double().cpu().numpy())


def check_model(model: torch.nn.Module, system: GridSystem) -> None:
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise InputError(
            f"DCDM's network must have its parameters on one device, found {sorted(map(str, devices)) or 'none'}"
        )
    dim = getattr(model, "dim", None)
    if dim is not None and dim != system.dim:
        raise InputError(f"the model was trained for {dim}D grids, the system is {system.dim}D {system.shape}")
    if any(s % 2 for s in system.shape):
        raise InputError(f"DCDM's network needs even grid sides, got {system.shape}")


def dcdm(
    system: GridSystem,
    b: np.ndarray,
    model: torch.nn.Module,
    tol: float = 1e-6,
    maxiter: int = 500,
    n_orth: int = 2,
    x0: np.ndarray | None = None,
    keep_directions: bool = False,
    patience: int = 100,
) -> SolveResult:
    """Solve ``A x = b`` with DCDM; see the module docstring for the iteration.

    Returns a :class:`SolveResult`; with ``keep_directions`` its ``info["directions"]`` holds
    every search direction (for checking their A-orthogonality). Not in the paper: the
    iteration stops early (``info["reason"] == "stagnated"``) when the residual has not
    decreased by a relative 1e-6 in ``patience`` iterations. The network runs on ``model``'s device
    (``info["device"]``), the rest on the host (module docstring).
    """
    if n_orth < 0:
        raise InputError(f"n_orth must be >= 0, got {n_orth}")
    check_model(model, system)
    A = system.A
    model.eval()
    device = next(model.parameters()).device
    t_net = 0.0
    t0 = time.perf_counter()
    x, r, bnorm, res = initial_state(system, b, x0)
    times = [time.perf_counter() - t0]
    previous: deque = deque(maxlen=n_orth if n_orth > 0 else 1)
    directions = []
    converged = res[0] <= tol * bnorm
    it, best, stalled, reason = 0, res[0], 0, "maxiter"
    while not converged and it < maxiter:
        t_call = time.perf_counter()
        p = network_direction(model, system, r)  # returns after the device finished (the copy back waits)
        t_net += time.perf_counter() - t_call
        if n_orth > 0:
            for p_i, Ap_i, pAp_i in previous:
                p -= (p @ Ap_i) / pAp_i * p_i
        Ap = A @ p
        pAp = p @ Ap
        if not np.isfinite(pAp) or pAp <= 0:
            reason = "degenerate direction"  # zero or non-finite: stop, report non-convergence
            break
        alpha = (p @ r) / pAp
        x += alpha * p
        r = b - A @ x
        it += 1
        res.append(float(np.linalg.norm(r)))
        times.append(time.perf_counter() - t0)
        if n_orth > 0:
            previous.append((p, Ap, pAp))
        if keep_directions:
            directions.append(p)
        converged = res[-1] <= tol * bnorm
        # no progress for `patience` iterations: the network keeps proposing directions
        # (nearly) orthogonal to the residual; stop rather than spin to maxiter
        stalled = stalled + 1 if res[-1] > best * (1 - 1e-6) else 0
        best = min(best, res[-1])
        if stalled >= patience:
            reason = "stagnated"
            break
    out = SolveResult(x, it, res, time.perf_counter() - t0, converged, f"dcdm-k{n_orth}", times=times)
    out.info["reason"] = "converged" if converged else reason
    out.info["device"] = str(device)
    out.info["network_seconds"] = t_net
    if keep_directions:
        out.info["directions"] = np.array(directions)
    return out

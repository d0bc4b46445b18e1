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
from collections.abc import Callable

import numpy as np
import torch

from data.errors import InputError

from .krylov import SolveResult, initial_state
from .system import GridSystem

_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def network_direction(model: torch.nn.Module, system: GridSystem, r: np.ndarray) -> np.ndarray:
    """``f(r / ||r||)`` as a float64 vector on the fluid cells.

    The network runs in its parameters' dtype on their device: ``r / ||r||`` is copied there
    (float32) and the direction back (the one host-device round trip of an iteration)."""
    param = next(model.parameters())
    x = torch.as_tensor(r / np.linalg.norm(r), dtype=param.dtype, device=param.device).reshape(1, 1, *system.shape)
    x = x.contiguous(memory_format=_LAST[x.dim()])  # NHWC, the layout dcdm() puts the model in
    with torch.inference_mode():
        q = model(x).reshape(-1)
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
    depth = getattr(model, "depth", None)
    if depth is not None:
        depth(system.shape)  # the multilevel network names the sides it cannot pool
    elif any(s % 2 for s in system.shape):
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
    x_ref: np.ndarray | None = None,
    callback: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> SolveResult:
    """Solve ``A x = b`` with DCDM; see the module docstring for the iteration.

    Returns a :class:`SolveResult`; with ``keep_directions`` its ``info["directions"]`` holds
    every search direction (for checking their A-orthogonality). The network runs on ``model``'s
    device (``info["device"]``), the rest on the host (module docstring).

    Stagnation (not in the paper): the residual 2-norm of a conjugate-direction method may rise for
    many steps on a run that converges (it decreases the A-norm error, monotonically), so the stop
    rule does not watch it. DCDM's own failure mode is a fixed point: a step too small to change
    the residual leaves the network's input, hence its direction, unchanged, and that direction
    was just A-orthogonalised away. The run stops (``info["reason"] == "stagnated"``) when in each
    of the last ``patience`` steps the residual moved by less than 1e-6 of its norm
    (``|alpha| ||A p|| < 1e-6 ||r||``). ``info["energy"]`` holds ``phi(x) = x.Ax/2 - b.x`` after
    each iteration (``phi(x0)`` first; each exact line search lowers it by ``(p.r)^2 / (2 p.Ap)``,
    and ``phi(x) - phi(x*) = ||x - x*||_A^2 / 2``).

    ``x_ref``: a reference solution (e.g. a direct solve); ``info["a_error"]`` then holds
    ``||x_k - x_ref||_A / ||x_0 - x_ref||_A`` per iteration, the quantity a conjugate-direction
    method decreases monotonically.

    ``callback(r, q, p)``: called every iteration with the residual the network saw, its raw
    direction ``q = f(r / ||r||)`` and the A-orthogonalised search direction ``p`` (copies; for
    diagnostics such as the angle between ``q`` and the ideal ``A^-1 r``).
    """
    if n_orth < 0:
        raise InputError(f"n_orth must be >= 0, got {n_orth}")
    check_model(model, system)
    A = system.A
    model.eval()
    # NHWC for the convolutions (oneDNN on the CPU, cuDNN on a GPU): 1.4x faster per forward pass at
    # 256^2 on 2 cores, same arithmetic up to rounding. The model is re-laid out in place, once.
    model.to(memory_format=torch.channels_last if system.dim == 2 else torch.channels_last_3d)  # type: ignore[call-overload]
    device = next(model.parameters()).device
    t_net = 0.0
    t0 = time.perf_counter()
    x, r, bnorm, res = initial_state(system, b, x0)
    times = [time.perf_counter() - t0]
    previous: deque = deque(maxlen=n_orth if n_orth > 0 else 1)
    directions = []
    converged = res[0] <= tol * bnorm
    it, stalled, reason = 0, 0, "maxiter"
    energy = [float(x @ (A @ x)) / 2 - float(b @ x)]
    decrease = 0.0  # total energy decrease so far
    a_error: list[float] = []
    if x_ref is not None:
        x_ref = np.asarray(x_ref, dtype=np.float64).ravel()
        if x_ref.shape != x.shape:
            raise InputError(f"x_ref has {x_ref.size} entries, A has {x.size} rows")
        e0 = x - x_ref
        a0 = float(np.sqrt(max(e0 @ (A @ e0), 0.0))) or 1.0
        a_error.append(1.0)
    while not converged and it < maxiter:
        t_call = time.perf_counter()
        p = network_direction(model, system, r)  # returns after the device finished (the copy back waits)
        t_net += time.perf_counter() - t_call
        q = p.copy() if callback is not None else p
        if n_orth > 0:
            for p_i, Ap_i, pAp_i in previous:
                p -= (p @ Ap_i) / pAp_i * p_i
        Ap = A @ p
        pAp = p @ Ap
        if not np.isfinite(pAp) or pAp <= 0:
            reason = "degenerate direction"  # zero or non-finite: stop, report non-convergence
            break
        if callback is not None:
            callback(r.copy(), q, p.copy())
        pr = p @ r
        alpha = pr / pAp
        moved = abs(alpha) * np.linalg.norm(Ap) / max(res[-1], 1e-300)  # ||r_new - r|| / ||r||
        x += alpha * p
        r = b - A @ x
        it += 1
        res.append(float(np.linalg.norm(r)))
        decrease += pr * pr / (2 * pAp)
        energy.append(energy[0] - decrease)
        if x_ref is not None:
            e = x - x_ref
            a_error.append(float(np.sqrt(max(e @ (A @ e), 0.0))) / a0)
        times.append(time.perf_counter() - t0)
        if n_orth > 0:
            previous.append((p, Ap, pAp))
        if keep_directions:
            directions.append(p)
        converged = res[-1] <= tol * bnorm
        # the residual (the network's input) has not moved for `patience` steps: a fixed point
        stalled = stalled + 1 if moved < 1e-6 else 0
        if stalled >= patience:
            reason = "stagnated"
            break
    out = SolveResult(x, it, res, time.perf_counter() - t0, converged, f"dcdm-k{n_orth}", times=times)
    out.info["reason"] = "converged" if converged else reason
    out.info["device"] = str(device)
    out.info["network_seconds"] = t_net
    out.info["energy"] = energy
    if x_ref is not None:
        out.info["a_error"] = a_error
    if keep_directions:
        out.info["directions"] = np.array(directions)
    return out

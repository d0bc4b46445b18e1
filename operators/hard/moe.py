"""Mixture of experts over the space-time grid (PI-HC-MoE, Chalapathi et al., ICLR 2024, Section 4).

The domain is split into ``K`` experts; each expert solves its own constraint problem on its own
sampled points and its coefficients predict the solution on its own points; the prediction is
stitched from the experts (reference: ``neptune/models/MoE/spatial_temporal_router.py``, equal
non-overlapping blocks per axis, ``dimension_partition`` / ``dimension_unpartition``).

* ``assignment="blocks"``: the paper's router: ``splits[a]`` equal contiguous blocks along grid
  axis ``a`` (the axis length must divide), ``K = prod(splits)``.
* ``assignment="random"``: the reviewers' ablation: every grid point goes to a random expert
  (balanced: a seeded permutation dealt round-robin), same ``K``.

Conditions: rows located at a grid point (heat's initial condition) go to the expert that owns the
point (the reference partitions the Navier-Stokes initial condition); rows marked global
(diffusion-sorption's initial and boundary conditions) are given to every expert, as the
reference replicates them.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from data.errors import InputError

Assignment = Literal["blocks", "random"]
#: what a number of constraint points counts: each expert's (the paper's accuracy runs) or the total
PointsPer = Literal["expert", "total"]


class ExpertLayoutError(InputError):
    """An expert layout that does not fit the grid or the configured K."""


def expert_index(
    grid: tuple[int, ...], splits: tuple[int, ...], assignment: Assignment = "blocks", seed: int = 0
) -> np.ndarray:
    """``(P,)`` expert id of every grid point (C-order flattening of ``grid``)."""
    if len(splits) != len(grid):
        raise ExpertLayoutError(
            f"expert layout {tuple(splits)} has {len(splits)} axes, the grid {tuple(grid)} "
            f"has {len(grid)} (time first, then space)"
        )
    for a, (s, n) in enumerate(zip(splits, grid, strict=False)):
        if not 1 <= s <= n:
            raise ExpertLayoutError(f"expert layout: {s} experts along axis {a} of length {n} (need 1 <= split <= {n})")
        if assignment == "blocks" and n % s:
            raise ExpertLayoutError(
                f"expert layout {tuple(splits)}: {s} experts do not divide axis {a} of length {n} into equal blocks"
            )
    K, P = math.prod(splits), math.prod(grid)
    if assignment == "random":
        perm = np.random.default_rng(seed).permutation(P)
        idx = np.empty(P, dtype=np.int64)
        idx[perm] = np.arange(P) % K
        return idx
    if assignment != "blocks":
        raise ExpertLayoutError(f"assignment must be 'blocks' or 'random', got {assignment!r}")
    ids = []
    for s, n in zip(splits, grid, strict=False):
        axis_id = np.empty(n, dtype=np.int64)
        for j, chunk in enumerate(np.array_split(np.arange(n), s)):
            axis_id[chunk] = j
        ids.append(axis_id)
    mesh = np.meshgrid(*ids, indexing="ij")
    return np.ravel_multi_index([m.reshape(-1) for m in mesh], splits)


def layout_for(k: int, grid: tuple[int, ...], axes: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Split ``k`` experts over the spatial axes (default: all but time) as evenly as possible, later
    axes first: ``layout_for(4, (41, 64)) == (1, 4)`` (4 blocks along x, the reference's
    diffusion-sorption layout); ``layout_for(4, (11, 16, 16)) == (1, 2, 2)`` (2 x 2 in space, its
    Navier-Stokes layout). Raises if the blocks cannot be equal."""
    if k < 1:
        raise ExpertLayoutError(f"the number of experts must be >= 1, got {k}")
    axes = tuple(range(1, len(grid))) if axes is None else axes
    splits = [1] * len(grid)
    for p in _prime_factors(k):
        # give the factor to the axis with the most cells per block that it divides
        best = max(
            (a for a in axes if (grid[a] // splits[a]) % p == 0), key=lambda a: (grid[a] // splits[a], a), default=None
        )
        if best is None:
            raise ExpertLayoutError(
                f"{k} experts cannot split the grid {tuple(grid)} into equal blocks along axes {axes}"
            )
        splits[best] *= p
    return tuple(splits)


def _prime_factors(k: int) -> list[int]:
    out, p = [], 2
    while p * p <= k:
        while k % p == 0:
            out.append(p)
            k //= p
        p += 1
    return out + ([k] if k > 1 else [])


class Router:
    """Point sampling, condition routing and stitching for one grid and layout."""

    def __init__(
        self,
        grid: tuple[int, ...],
        splits: tuple[int, ...],
        residual_mask: np.ndarray,
        assignment: Assignment = "blocks",
        seed: int = 0,
    ):
        self.grid, self.splits, self.assignment = tuple(grid), tuple(splits), assignment
        self.K = math.prod(splits)
        self.expert = expert_index(self.grid, self.splits, assignment, seed)
        self.residual_mask = np.asarray(residual_mask, dtype=bool)
        self.candidates = [np.flatnonzero(self.residual_mask & (self.expert == e)) for e in range(self.K)]
        self._on: dict[tuple, Tensor] = {}  # constant tensors per device (see _constant)

    def _constant(self, key: tuple, make, device: torch.device) -> Tensor:
        """``make()`` on ``device``, built once and kept (the layout is fixed: no copy per step)."""
        slot = (*key, torch.device(device))
        if slot not in self._on:
            self._on[slot] = torch.as_tensor(make()).to(device)
        return self._on[slot]

    @property
    def capacity(self) -> int:
        """The most constraint points every expert can take: the fewest residual points of any expert."""
        return min(len(c) for c in self.candidates)

    def points_per_expert(self, points: int, per: PointsPer = "expert") -> int:
        """Constraint points each expert draws: ``points`` itself (``per="expert"``, the paper's
        accuracy runs: 20k per expert) or ``points // K`` (``per="total"``, the paper's step-time
        axis: the total over the experts). Refused when an expert's block holds fewer."""
        if per not in ("expert", "total"):
            raise ExpertLayoutError(f"points_per must be 'expert' or 'total', got {per!r}")
        if per == "total" and points < self.K:
            raise ExpertLayoutError(f"points={points} (total) cannot be shared by {self.K} experts")
        m = points if per == "expert" else points // self.K
        fewest = self.capacity
        if m > fewest:
            what = (
                f"points={points} per expert"
                if per == "expert"
                else f"points={points} in total over {self.K} experts is {m} per expert"
            )
            raise ExpertLayoutError(
                f"{what}, but with layout {self.splits} ({self.assignment}) on the grid {self.grid} an "
                f"expert's block has only {fewest} residual points; use points <= "
                f"{fewest if per == 'expert' else fewest * self.K} or fewer experts"
            )
        return m

    def sample(self, points: int, generator: torch.Generator | None = None, per: PointsPer = "expert") -> Tensor:
        """``(K, m)`` flat indices of constraint points, drawn without replacement per expert, ``m``
        from :meth:`points_per_expert`."""
        m = self.points_per_expert(points, per)
        out = [torch.as_tensor(c)[torch.randperm(len(c), generator=generator)[:m]] for c in self.candidates]
        return torch.stack(out)

    def check_points(self, points: Tensor) -> Tensor:
        """Validate user-given constraint points ``(K, m)`` (flat grid indices): each must be a residual
        point of its own expert's subdomain."""
        points = torch.as_tensor(points)
        if points.ndim != 2 or points.shape[0] != self.K or points.dtype not in (torch.int32, torch.int64):
            raise ExpertLayoutError(
                f"constraint points must be an integer tensor (K={self.K}, m), got {points.dtype} {tuple(points.shape)}"
            )
        flat = points.reshape(-1).cpu().numpy()
        P = len(self.expert)
        outside = (flat < 0) | (flat >= P)
        if outside.any():
            raise ExpertLayoutError(
                f"constraint point index {int(flat[outside][0])} is outside the domain (grid {self.grid}, {P} points)"
            )
        if not self.residual_mask[flat].all():
            bad = int(flat[~self.residual_mask[flat]][0])
            raise ExpertLayoutError(
                f"constraint point {np.unravel_index(bad, self.grid)} is not an interior "
                "residual point (initial time or boundary)"
            )
        owner = self.expert[points.cpu().numpy()]
        if (owner != np.arange(self.K)[:, None]).any():
            raise ExpertLayoutError("constraint points row e must lie in expert e's subdomain")
        return points

    def condition_mask(self, row_points: np.ndarray, device: torch.device | None = None) -> Tensor:
        """``(K, R)`` 0/1 weights (float64): row r belongs to expert e (global rows, ``-1``, to all);
        on ``device`` (kept per device and rows)."""
        if device is not None:
            rows = np.asarray(row_points)
            return self._constant(("condition_mask", rows.tobytes()), lambda: self.condition_mask(rows), device)
        row_points = np.asarray(row_points)
        glob = row_points < 0
        owner = np.where(glob, 0, self.expert[np.where(glob, 0, row_points)])
        m = (owner[None, :] == np.arange(self.K)[:, None]) | glob[None, :]
        return torch.as_tensor(m, dtype=torch.float64)

    def stitch(self, phi_flat: Tensor, w: Tensor) -> Tensor:
        """``u (B, P)`` from ``phi_flat (B, P, N)`` and the experts' ``w (B, K, N)``: each point uses its expert."""
        idx = self._constant(("expert",), lambda: self.expert, w.device)
        return (phi_flat * w[:, idx]).sum(-1)

    def interface_jump(self, phi_flat: Tensor, w: Tensor) -> tuple[float, float]:
        """Disagreement of neighbouring experts where they meet: for grid neighbours ``p, q`` (along any
        axis) owned by different experts, ``|phi(p) . (w_e(p) - w_e(q))|``. Returns (mean, max), in
        units of ``u``; ``(0, 0)`` for one expert."""
        if self.K == 1:
            return 0.0, 0.0
        ex = self.expert.reshape(self.grid)
        flat = np.arange(len(self.expert)).reshape(self.grid)
        ps, qs = [], []
        for a in range(len(self.grid)):
            lo = [slice(None)] * len(self.grid)
            hi = [slice(None)] * len(self.grid)
            lo[a], hi[a] = slice(0, -1), slice(1, None)
            diff = ex[tuple(lo)] != ex[tuple(hi)]
            ps += [flat[tuple(lo)][diff], flat[tuple(hi)][diff]]
            qs += [flat[tuple(hi)][diff], flat[tuple(lo)][diff]]
        p, q = torch.as_tensor(np.concatenate(ps)), torch.as_tensor(np.concatenate(qs))
        ep, eq = torch.as_tensor(self.expert)[p], torch.as_tensor(self.expert)[q]
        jump = (phi_flat[:, p] * (w[:, ep] - w[:, eq])).sum(-1).abs()
        return float(jump.mean()), float(jump.max())

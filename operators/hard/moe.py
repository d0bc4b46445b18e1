"""Mixture of experts over the space-time grid (PI-HC-MoE, Chalapathi et al., ICLR 2024, Section 4).

The domain is split into ``K`` experts; each expert solves its own constraint problem on its own
sampled points and its coefficients predict the solution on its own points; the prediction is
stitched from the experts (reference: ``neptune/models/MoE/spatial_temporal_router.py``, equal
non-overlapping blocks per axis, ``dimension_partition`` / ``dimension_unpartition``).

* ``assignment="blocks"``: the paper's router: ``splits[a]`` contiguous blocks along grid axis
  ``a`` (``np.array_split``, so uneven axis lengths are allowed), ``K = prod(splits)``.
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

Assignment = Literal["blocks", "random"]


class ExpertLayoutError(ValueError):
    """An expert layout that does not fit the grid or the configured K."""


def expert_index(grid: tuple[int, ...], splits: tuple[int, ...], assignment: Assignment = "blocks",
                 seed: int = 0) -> np.ndarray:
    """``(P,)`` expert id of every grid point (C-order flattening of ``grid``)."""
    if len(splits) != len(grid):
        raise ExpertLayoutError(f"expert layout {tuple(splits)} has {len(splits)} axes, the grid {tuple(grid)} "
                                f"has {len(grid)} (time first, then space)")
    for a, (s, n) in enumerate(zip(splits, grid)):
        if not 1 <= s <= n:
            raise ExpertLayoutError(f"expert layout: {s} experts along axis {a} of length {n} (need 1 <= split <= {n})")
    K, P = math.prod(splits), math.prod(grid)
    if assignment == "random":
        perm = np.random.default_rng(seed).permutation(P)
        idx = np.empty(P, dtype=np.int64)
        idx[perm] = np.arange(P) % K
        return idx
    if assignment != "blocks":
        raise ExpertLayoutError(f"assignment must be 'blocks' or 'random', got {assignment!r}")
    ids = []
    for s, n in zip(splits, grid):
        axis_id = np.empty(n, dtype=np.int64)
        for j, chunk in enumerate(np.array_split(np.arange(n), s)):
            axis_id[chunk] = j
        ids.append(axis_id)
    mesh = np.meshgrid(*ids, indexing="ij")
    return np.ravel_multi_index([m.reshape(-1) for m in mesh], splits)


class Router:
    """Point sampling, condition routing and stitching for one grid and layout."""

    def __init__(self, grid: tuple[int, ...], splits: tuple[int, ...], residual_mask: np.ndarray,
                 assignment: Assignment = "blocks", seed: int = 0):
        self.grid, self.splits, self.assignment = tuple(grid), tuple(splits), assignment
        self.K = math.prod(splits)
        self.expert = expert_index(self.grid, self.splits, assignment, seed)
        self.residual_mask = np.asarray(residual_mask, dtype=bool)
        self.candidates = [np.flatnonzero(self.residual_mask & (self.expert == e)) for e in range(self.K)]

    def points_per_expert(self, total: int) -> int:
        if total < self.K:
            raise ExpertLayoutError(f"{total} constraint points cannot be shared by {self.K} experts")
        m = total // self.K
        fewest = min(len(c) for c in self.candidates)
        if m > fewest:
            raise ExpertLayoutError(f"{total} constraint points over {self.K} experts is {m} per expert, but an "
                                    f"expert's subdomain has only {fewest} residual points; use fewer points or experts")
        return m

    def sample(self, total: int, generator: torch.Generator | None = None) -> Tensor:
        """``(K, total // K)`` flat indices of constraint points, drawn without replacement per expert."""
        m = self.points_per_expert(total)
        out = [torch.as_tensor(c)[torch.randperm(len(c), generator=generator)[:m]] for c in self.candidates]
        return torch.stack(out)

    def condition_mask(self, row_points: np.ndarray) -> Tensor:
        """``(K, R)`` 0/1 weights: row r belongs to expert e (global rows, ``-1``, to all)."""
        row_points = np.asarray(row_points)
        glob = row_points < 0
        owner = np.where(glob, 0, self.expert[np.where(glob, 0, row_points)])
        m = (owner[None, :] == np.arange(self.K)[:, None]) | glob[None, :]
        return torch.as_tensor(m, dtype=torch.float64)

    def stitch(self, phi_flat: Tensor, w: Tensor) -> Tensor:
        """``u (B, P)`` from ``phi_flat (B, P, N)`` and the experts' ``w (B, K, N)``: each point uses its expert."""
        idx = torch.as_tensor(self.expert, device=w.device)
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

"""The DCDM search-direction network (Kaneda et al., ICML 2023, Section 4 / Figure 2).

A fully convolutional network on the grid: it maps a normalised residual ``r / ||r||`` to a search
direction, so a model trained at one resolution applies unchanged at larger ones ("N from K").
Layout of the reference model (16 filters, 3^d kernels, "same" padding, residual connections)::

    linear conv 1->16
    4 residual convs at full resolution                      (6 for the 128^3 model)
    average-pool by 2
    6 residual convs at half resolution                      (10)
    nearest upsample by 2, add the full-resolution skip
    4 residual convs                                         (6)
    linear conv 16->1

A residual conv is ``h <- h + relu(conv(h))``. The reference code's activation choice is ReLU
here as well; the layer counts are constructor arguments.
"""

from __future__ import annotations

import torch
from torch import nn

from data.errors import InputError

from ..device import check_device


class DCDMNet(nn.Module):
    """Search-direction CNN for 2D or 3D grids.

    Input/output: ``(B, 1, *grid)`` float tensors on the network's device (an input on another
    device is a :class:`~operators.device.DeviceMismatchError`); every grid side must be even (one pooling).
    """

    def __init__(self, dim: int = 2, filters: int = 16, levels: tuple[int, int, int] = (4, 6, 4)):
        super().__init__()
        if dim not in (2, 3):
            raise InputError(f"dim must be 2 or 3, got {dim}")
        Conv = nn.Conv2d if dim == 2 else nn.Conv3d
        Pool = nn.AvgPool2d if dim == 2 else nn.AvgPool3d
        self.dim = dim
        self.levels = tuple(levels)
        self.filters = filters

        def block(n: int) -> nn.ModuleList:
            return nn.ModuleList(Conv(filters, filters, 3, padding=1) for _ in range(n))

        self.inp = Conv(1, filters, 3, padding=1)
        self.down = block(levels[0])
        self.pool = Pool(2)
        self.mid = block(levels[1])
        self.up = block(levels[2])
        self.out = Conv(filters, 1, 3, padding=1)

    @staticmethod
    def _res(layers: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
        for conv in layers:
            h = h + torch.relu(conv(h))
        return h

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if r.dim() != self.dim + 2 or r.shape[1] != 1:
            raise InputError(
                f"expected input (B, 1, {'N, ' * self.dim}...) for a {self.dim}D model, got {tuple(r.shape)}"
            )
        if any(s % 2 for s in r.shape[2:]):
            raise InputError(f"grid sides must be even for the pooling level, got {tuple(r.shape[2:])}")
        check_device(r, self.inp.weight.device, "the DCDM network's input")
        h = self._res(self.down, self.inp(r))
        m = self._res(self.mid, self.pool(h))
        m = nn.functional.interpolate(m, scale_factor=2, mode="nearest")
        return self.out(self._res(self.up, m + h))

    def config(self) -> dict:
        return {"dim": self.dim, "filters": self.filters, "levels": list(self.levels)}


def multilevel_depth(side: int, coarsest: int = 4) -> int:
    """Pooling levels of :class:`MultilevelDCDMNet` on a grid side: ``floor(log2(side / coarsest))``."""
    depth = 0
    while side // 2 ** (depth + 1) >= coarsest:
        depth += 1
    return depth


def multilevel_valid(side: int, coarsest: int = 4) -> bool:
    """Whether :class:`MultilevelDCDMNet` pools a grid side evenly at every level."""
    return side >= coarsest and side % 2 ** multilevel_depth(side, coarsest) == 0


def nearest_multilevel_sides(side: int, coarsest: int = 4) -> list[int]:
    """The valid grid sides just below and above ``side`` (for the refusal message)."""
    below = next((s for s in range(side - 1, coarsest - 1, -1) if multilevel_valid(s, coarsest)), None)
    above = next(s for s in range(max(side + 1, coarsest), 4 * side + 8) if multilevel_valid(s, coarsest))
    return [s for s in (below, above) if s is not None]


class MultilevelDCDMNet(nn.Module):
    """A DCDM search-direction network whose reach grows with the grid (not in the paper).

    The paper's network pools once, so its receptive field (~40 cells) is fixed while the grid
    grows; a Poisson solve's ideal direction ``A^-1 r`` is global. This variant is a V-cycle with
    shared weights: ``depth = floor(log2(side / coarsest))`` levels, chosen from the input's grid
    at each call (4 at 64^2, 6 at 256^2), the same smoothing block on the way down at every level,
    one coarsest block, the same block on the way up after adding the upsampled coarse correction
    to the level's skip::

        h_0 = inp(r)
        for l = 0 .. depth-1:  s_l = down(h_l);  h_{l+1} = avgpool(s_l)
        h = mid(h_depth)
        for l = depth-1 .. 0:  h = up(nearest_upsample(h) + s_l)
        f = out(h)

    Each block is ``blocks`` residual convs ``h <- h + relu(conv(h))`` as in :class:`DCDMNet`, but
    without biases: a biased ReLU unit adds a non-negative drift, and over the V-cycle's units and
    skip sums it piles up into a near-constant output (mean 13, std 3.4 at initialisation on a
    64^2 grid) that swamps the useful part; with biases the loss stayed at 1.00 for three epochs,
    without them it fell to 0.32 (the paper network: 0.31). Bias-free, the network is positively
    homogeneous, ``f(c r) = c f(r)`` for ``c > 0``, as a solver's direction map should be.
    Sharing the blocks across levels makes one set of weights a multigrid-like operator at every
    resolution: trained at 64^2 it runs unchanged, two levels deeper, at 256^2. Input/output
    ``(B, 1, *grid)``; every side must pool evenly (``side % 2^depth == 0``), otherwise an
    :class:`~data.errors.InputError` names the side and the nearest valid ones.
    """

    def __init__(self, dim: int = 2, filters: int = 16, blocks: tuple[int, int, int] = (2, 4, 2), coarsest: int = 4):
        super().__init__()
        if dim not in (2, 3):
            raise InputError(f"dim must be 2 or 3, got {dim}")
        if coarsest < 2:
            raise InputError(f"coarsest must be >= 2 cells, got {coarsest}")
        Conv = nn.Conv2d if dim == 2 else nn.Conv3d
        Pool = nn.AvgPool2d if dim == 2 else nn.AvgPool3d
        self.dim, self.filters, self.levels, self.coarsest = dim, filters, tuple(blocks), coarsest

        def block(n: int) -> nn.ModuleList:
            return nn.ModuleList(Conv(filters, filters, 3, padding=1, bias=False) for _ in range(n))

        self.inp = Conv(1, filters, 3, padding=1, bias=False)
        self.down = block(blocks[0])
        self.pool = Pool(2)
        self.mid = block(blocks[1])
        self.up = block(blocks[2])
        self.out = Conv(filters, 1, 3, padding=1, bias=False)

    def depth(self, shape: tuple[int, ...]) -> int:
        """Pooling levels for a grid ``shape``; refuses a side that does not pool evenly."""
        for side in shape:
            if not multilevel_valid(side, self.coarsest):
                raise InputError(
                    f"grid side {side} does not pool evenly in the multilevel DCDM network "
                    f"(coarsest {self.coarsest}: side % 2^floor(log2(side/{self.coarsest})) must be 0); "
                    f"nearest valid sides: {nearest_multilevel_sides(side, self.coarsest)}"
                )
        return min(multilevel_depth(s, self.coarsest) for s in shape)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if r.dim() != self.dim + 2 or r.shape[1] != 1:
            raise InputError(
                f"expected input (B, 1, {'N, ' * self.dim}...) for a {self.dim}D model, got {tuple(r.shape)}"
            )
        depth = self.depth(tuple(r.shape[2:]))
        check_device(r, self.inp.weight.device, "the DCDM network's input")
        h = self.inp(r)
        skips = []
        for _ in range(depth):
            s = DCDMNet._res(self.down, h)
            skips.append(s)
            h = self.pool(s)
        h = DCDMNet._res(self.mid, h)
        for s in reversed(skips):
            h = DCDMNet._res(self.up, nn.functional.interpolate(h, scale_factor=2, mode="nearest") + s)
        return self.out(h)

    def config(self) -> dict:
        return {"dim": self.dim, "filters": self.filters, "levels": list(self.levels), "coarsest": self.coarsest}

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

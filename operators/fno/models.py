"""Neural operators by name: dense FNO, Tucker TFNO and MG-TFNO, built from neuraloperator 2.x.

* ``"fno"``: ``neuralop.models.FNO`` with dense spectral weights (Li et al., 2021).
* ``"tfno"``: ``neuralop.models.TFNO``: the same network with every spectral-convolution weight a
  Tucker tensor of relative ``rank`` (Kossaifi et al., TMLR 2024, Section 3.1).
* ``factorization="joint"`` (tfno, mg-tfno): one Tucker tensor for every layer's spectral weight
  (the paper's global factorization, :mod:`operators.fno.joint`).
* ``"mg-tfno"``: TFNO inside ``neuralop.training.patching.MultigridPatching2D`` (Section 3.2): the
  input is split into ``2^levels x 2^levels`` patches, each padded by ``padding_fraction`` of the
  domain, and each patch carries ``levels`` coarser, wider views of the field stacked as channels,
  so the model takes ``in_channels * (levels + 1)`` channels and sees a patch, not the full domain.
  As in the paper, *global* positional channels (x, y in [0, 1)) are appended **before** patching,
  so each patch knows where it is; the inner TFNO gets no positional embedding of its own.
  neuraloperator's patching pads circularly (a periodic domain); ``padding_mode`` ``"reflect"`` or
  ``"zeros"`` makes every pad of it (the patch halo and the coarse levels' borders) mirror the
  field or fill zeros instead, for non-periodic data (Darcy's Dirichlet boundary): see
  :func:`padding_mode`. :func:`build_model` refuses ``"circular"`` on non-periodic data rather than
  wrap the boundary around silently. (Not in the paper, whose data are periodic.)

Tensors are ``(batch, channels, height, width)``, float32.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from data.errors import InputError


def _fno(cfg: OperatorModelConfig) -> nn.Module:
    from neuralop.models import FNO

    return _Checked(FNO(**_common(cfg)), cfg)


def _tfno(cfg: OperatorModelConfig) -> nn.Module:
    from neuralop.models import TFNO

    return _Checked(_factorized(TFNO(**_common(cfg), rank=cfg.rank, factorization="tucker"), cfg), cfg)


def _factorized(tfno: nn.Module, cfg: OperatorModelConfig) -> nn.Module:
    """``tfno`` with its spectral weights jointly factorized when ``cfg.factorization == "joint"``
    (:mod:`operators.fno.joint`); the per-layer Tucker tensors otherwise."""
    if cfg.factorization == "joint":
        from .joint import joint_factorize

        joint_factorize(tfno, cfg.rank)
    return tfno


def _mg_tfno(cfg: OperatorModelConfig) -> nn.Module:
    return MGTFNO(cfg)


#: the neural operators by name: ``MODELS[name](cfg)`` builds one (see the module docstring)
MODELS: dict[str, Callable[[OperatorModelConfig], nn.Module]] = {"fno": _fno, "tfno": _tfno, "mg-tfno": _mg_tfno}
#: models whose patching pads circularly (they assume a periodic domain)
PERIODIC_ONLY = ("mg-tfno",)
if TYPE_CHECKING:
    ModelName = str
else:
    ModelName = Literal[tuple(MODELS)]


class OperatorModelConfig(BaseModel):
    """Architecture of one neural operator (part of the checkpoint key)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: ModelName = "mg-tfno"
    n_modes: int = Field(default=16, ge=1, le=512, description="Fourier modes kept per dimension")
    hidden_channels: int = Field(default=32, ge=1, le=1024)
    n_layers: int = Field(default=4, ge=1, le=32)
    rank: float = Field(default=0.05, gt=0, le=1.0, description="relative Tucker rank (tfno, mg-tfno)")
    factorization: Literal["per-layer", "joint"] = Field(
        default="per-layer",
        description="tfno, mg-tfno: one Tucker tensor per layer's spectral weight, or one for all layers "
        "jointly (the paper's global factorization)",
    )
    levels: int = Field(default=1, ge=1, le=4, description="mg-tfno: patching levels (2^levels patches per side)")
    padding_fraction: float = Field(
        default=0.0625, ge=0, lt=0.5, description="mg-tfno: patch padding, fraction of the side"
    )
    padding_mode: Literal["circular", "reflect", "zeros"] = Field(
        default="circular",
        description="mg-tfno: how patches are padded past the domain edge ('circular': periodic data only)",
    )
    in_channels: int = Field(default=1, ge=1, le=64)
    out_channels: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _check(self) -> OperatorModelConfig:
        if self.name != "mg-tfno" and (self.levels, self.padding_fraction, self.padding_mode) != (
            1,
            0.0625,
            "circular",
        ):
            # fields that only mg-tfno reads must stay at their defaults elsewhere: no silent no-ops
            raise ValueError(f"levels / padding_fraction / padding_mode apply to 'mg-tfno' only, not {self.name!r}")
        if self.name == "fno" and self.factorization != "per-layer":
            raise ValueError("factorization applies to 'tfno' and 'mg-tfno' only (the dense 'fno' has no factors)")
        return self


def grid_channels(x: torch.Tensor) -> torch.Tensor:
    """Append global positional channels ``(x, y)`` on ``[0, 1)`` (cell corners, periodic grid)."""
    b, _, h, w = x.shape
    ys = torch.arange(h, dtype=x.dtype, device=x.device) / h
    xs = torch.arange(w, dtype=x.dtype, device=x.device) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.cat([x, gx.expand(b, 1, h, w), gy.expand(b, 1, h, w)], dim=1)


class MGTFNO(nn.Module):
    """TFNO under multi-grid patching. ``forward(x)`` maps ``(B, C, H, W) -> (B, C_out, H, W)``;
    ``H`` and ``W`` must be divisible by ``2^levels``."""

    def __init__(self, cfg: OperatorModelConfig):
        super().__init__()
        from neuralop.models import TFNO
        from neuralop.training.patching import MultigridPatching2D

        self.cfg = cfg
        self.inner = _factorized(
            TFNO(
                n_modes=(cfg.n_modes, cfg.n_modes),
                in_channels=(cfg.in_channels + 2) * (cfg.levels + 1),
                out_channels=cfg.out_channels,
                hidden_channels=cfg.hidden_channels,
                n_layers=cfg.n_layers,
                rank=cfg.rank,
                factorization="tucker",
                positional_embedding=None,
            ),
            cfg,
        )
        self.patcher = _quiet(
            MultigridPatching2D,
            self.inner,
            levels=cfg.levels,
            padding_fraction=cfg.padding_fraction,
            use_distributed=False,
            stitching=True,
        )

    def patch_shape(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of one patch, padding included (what the TFNO sees per sample)."""
        k = 2**self.cfg.levels
        ph, pw = round(height * self.cfg.padding_fraction), round(width * self.cfg.padding_fraction)
        return height // k + 2 * ph, width // k + 2 * pw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.cfg)
        k = 2**self.cfg.levels
        if x.shape[-2] % k or x.shape[-1] % k:
            raise InputError(
                f"mg-tfno with levels={self.cfg.levels} needs a resolution divisible by {k}, got {tuple(x.shape[-2:])}"
            )
        with padding_mode(self.cfg.padding_mode):
            patches, _ = self.patcher.patch(grid_channels(x), None)
        out, _ = self.patcher.unpatch(self.inner(patches), None, evaluation=True)
        return out


_PAD_LOCK = threading.Lock()


def _pad(x: torch.Tensor, pad: list[int], mode: str) -> torch.Tensor:
    """``F.pad`` in ``mode`` (``reflect`` | ``zeros``) for neuraloperator's circular pads. A
    reflect pad as wide as the side (the coarse levels ask for that) is done in steps of at most
    ``side - 1``: the field mirrored again about the new edge, never wrapped."""
    if mode == "zeros":
        return torch.nn.functional.pad(x, pad, mode="constant", value=0.0)
    pad = list(pad)
    while any(pad):
        step = [min(p, x.shape[-1 - k // 2] - 1) for k, p in enumerate(pad)]
        x = torch.nn.functional.pad(x, step, mode="reflect")
        pad = [p - s for p, s in zip(pad, step, strict=True)]
    return x


@contextlib.contextmanager
def padding_mode(mode: str):
    """Within the block, neuraloperator's patching (``neuralop.training.patching``) pads in
    ``mode`` instead of circularly; ``"circular"`` changes nothing. It swaps the ``torch`` that
    module sees for a :class:`_TorchView` whose ``nn.functional.pad`` maps ``mode="circular"`` to
    ``mode``, under a lock (taken in every mode, so no block runs while another has the library's
    torch swapped): the library's patching is used as it is, not copied."""
    import neuralop.training.patching as patching

    with _PAD_LOCK:
        if mode != "circular":
            patching.torch = _TorchView(mode)
        try:
            yield
        finally:
            patching.torch = torch


class _TorchView:
    """``torch`` whose ``nn.functional.pad`` pads in ``target`` where asked for ``"circular"``
    (for :func:`padding_mode`); every other attribute is torch's."""

    def __init__(self, target: str):
        self._target = target
        self.nn = types.SimpleNamespace(functional=types.SimpleNamespace(pad=self._pad))

    def _pad(self, x: torch.Tensor, pad: list[int], mode: str = "constant", value: float | None = None):
        if mode == "circular":
            return _pad(x, pad, self._target)
        return torch.nn.functional.pad(x, pad, mode=mode, value=value)

    def __getattr__(self, name: str):
        return getattr(torch, name)


def _quiet(cls, *args, **kwargs):
    """neuraloperator prints the patching config on construction; keep logs clean."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return cls(*args, **kwargs)


class _Checked(nn.Module):
    def __init__(self, net: nn.Module, cfg: OperatorModelConfig):
        super().__init__()
        self.net, self.cfg = net, cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.cfg)
        return self.net(x)


def check_input(x: torch.Tensor, cfg: OperatorModelConfig) -> None:
    if x.ndim != 4:
        raise InputError(f"expected a (batch, channels, height, width) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != cfg.in_channels:
        raise InputError(f"{cfg.name} was built for {cfg.in_channels} input channel(s), got {x.shape[1]}")


def _common(cfg: OperatorModelConfig) -> dict:
    return dict(
        n_modes=(cfg.n_modes, cfg.n_modes),
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        hidden_channels=cfg.hidden_channels,
        n_layers=cfg.n_layers,
    )


def build_model(cfg: OperatorModelConfig, periodic: bool = True) -> nn.Module:
    """The model ``cfg.name`` (:data:`MODELS`). ``periodic=False`` (e.g. Darcy data) refuses
    ``mg-tfno`` with ``padding_mode="circular"``, which would wrap the boundary around."""
    if cfg.name in PERIODIC_ONLY and not periodic and cfg.padding_mode == "circular":
        raise InputError(
            f"{cfg.name} with padding_mode='circular' pads patches periodically; this dataset is not periodic: "
            "use padding_mode 'reflect' or 'zeros' (or the unpatched 'fno' / 'tfno')"
        )
    return MODELS[cfg.name](cfg)


def count_params(model: nn.Module) -> int:
    """Trainable parameters, complex counted as two reals (``neuralop.utils.count_model_params``)."""
    from neuralop.utils import count_model_params

    return int(count_model_params(model))

"""Joint ("global") Tucker factorization of every spectral weight of an FNO.

Kossaifi et al. (TMLR 2024), Section 3.1: instead of one low-rank tensor per Fourier layer, the
``L`` layers' spectral weights, each ``(in, out, m_1, m_2)`` complex, are stacked into one
``(L, in, out, m_1, m_2)`` tensor parametrized by a single Tucker decomposition,
``W = G x_0 U_L x_1 U_in x_2 U_out x_3 U_1 x_4 U_2``, so the layers share the channel and mode
factors and the core; layer ``l``'s weight is ``W[l]`` (row ``l`` of ``U_L`` contracted into the
core). neuraloperator 0.x offered this as ``joint_factorization=True``; 2.x only factorizes each
layer separately, so :func:`joint_factorize` adds it to a built 2.x TFNO:

* the joint tensor is a tensorly-torch ``TuckerTensor`` registered once on the model (its
  parameters count once, and it moves with the model);
* each ``SpectralConv``'s own ``weight`` is replaced by a :class:`LayerWeight` view whose
  indexing (all ``SpectralConv.forward`` does with its weight) returns ``W[l][...]`` as a
  ``TuckerTensor``, so neuraloperator's spectral convolution, mode slicing and factorized
  contraction run unchanged.

Rank: a float is the fraction of the joint tensor's entries kept (tensorly's rule: Tucker ranks
``round(c * I_k)`` with one ``c`` for all modes, chosen so that the core and factors hold
``rank`` x the entries). A rank that gives ``c * I_k < 1`` in some mode, fewer than one rank
per index of that mode (the layer mode ``L`` is the shortest), is refused naming the smallest
valid rank. Initialization: the reconstructed weight has neuraloperator's per-layer standard
deviation ``sqrt(2 / (in + out))``.

Parameter count (complex entries count twice, as neuraloperator counts them):
``2 * (prod_k R_k + sum_k I_k R_k)`` for the joint tensor, in place of the per-layer ones.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from data.errors import InputError


def joint_shape(convs) -> tuple[int, ...]:
    """``(L, *weight shape)`` of a stack of neuraloperator ``SpectralConv`` layers."""
    shapes = {tuple(conv.weight.shape) for conv in convs}
    if len(shapes) != 1:
        raise InputError(f"joint factorization needs equal spectral weight shapes in every layer, got {sorted(shapes)}")
    return (len(convs), *shapes.pop())


def fraction(shape: tuple[int, ...], rank: float) -> float:
    """tensorly's ``c`` for a relative Tucker ``rank`` of a tensor of ``shape``: the root of
    ``c^N prod I + c sum I_k^2 = rank prod I`` (``validate_tucker_rank``), before rounding."""
    dims = np.asarray(shape, dtype=float)
    total, squares, order = dims.prod(), (dims**2).sum(), len(dims)
    lo, hi = 0.0, 1.0
    while total * hi**order + hi * squares < rank * total:  # rank > 1 keeps more than the tensor
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total * mid**order + mid * squares < rank * total else (lo, mid)
    return (lo + hi) / 2


def smallest_rank(shape: tuple[int, ...]) -> float:
    """The smallest relative rank giving every mode at least one rank (``c = 1 / min I_k``)."""
    dims = np.asarray(shape, dtype=float)
    c = 1.0 / dims.min()
    return float((dims.prod() * c ** len(dims) + c * (dims**2).sum()) / dims.prod())


def check_rank(shape: tuple[int, ...], rank: float) -> None:
    if fraction(shape, rank) * min(shape) < 1.0:
        raise InputError(
            f"joint factorization rank {rank:g} gives fewer than one Tucker rank per index in mode "
            f"{int(np.argmin(shape))} (size {min(shape)}) of the {shape} tensor; valid ranks are "
            f">= {smallest_rank(shape):.3g} (and <= 1)"
        )


class JointTucker(nn.Module):
    """The joint spectral weight ``(L, in, out, m_1, m_2)`` as one tensorly-torch TuckerTensor."""

    def __init__(self, shape: tuple[int, ...], rank: float, init_std: float):
        super().__init__()
        from tltorch import FactorizedTensor

        check_rank(shape, rank)
        self.weight = FactorizedTensor.new(shape, rank=rank, factorization="tucker", dtype=torch.cfloat)
        self.weight.normal_(0, init_std)

    def n_params(self) -> int:
        """``2 * (prod R + sum I_k R_k)``: real parameters of the core and factors."""
        ranks, shape = self.weight.rank, self.weight.shape
        return 2 * (int(np.prod(ranks)) + sum(i * r for i, r in zip(shape, ranks, strict=True)))


class LayerWeight:
    """Layer ``index``'s spectral weight inside a :class:`JointTucker`: ``view[idx]`` is
    ``joint.weight[index][idx]`` (a TuckerTensor). A plain object, not a module, so the joint
    tensor is registered (and counted, and moved) once, on the model."""

    def __init__(self, joint: JointTucker, index: int):
        self.joint, self.index = joint, index

    def layer(self):
        return self.joint.weight[self.index]

    def __getitem__(self, idx):
        return self.layer()[idx]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.joint.weight.shape[1:])

    def to_tensor(self) -> torch.Tensor:
        return self.layer().to_tensor()


def joint_factorize(model: nn.Module, rank: float) -> nn.Module:
    """Replace the per-layer spectral weights of a neuraloperator 2.x FNO/TFNO ``model`` by one
    :class:`JointTucker` of relative ``rank`` (registered as ``model.joint``); returns ``model``."""
    convs: nn.ModuleList = model.fno_blocks.convs  # type: ignore[union-attr,assignment]
    shape = joint_shape(convs)
    _, c_in, c_out = shape[:3]
    model.joint = JointTucker(shape, rank, init_std=(2 / (c_in + c_out)) ** 0.5)
    for index, conv in enumerate(convs):
        del conv.weight  # the per-layer FactorizedTensor (a registered submodule)
        conv.weight = LayerWeight(model.joint, index)  # type: ignore[assignment]
    return model


__all__ = ["JointTucker", "LayerWeight", "check_rank", "joint_factorize", "joint_shape", "smallest_rank"]

"""Joint ("global") Tucker factorization: one tensor serves every layer's spectral weight, its
parameter count follows the Tucker formula, it trains and checkpoints, and bad ranks are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.errors import InputError
from operators.fno import OperatorModelConfig, OperatorTrainConfig, build_model, count_params
from operators.fno.joint import JointTucker, smallest_rank

SMALL = dict(n_modes=6, hidden_channels=8, n_layers=3)


def _tfno(model):
    return model.inner if hasattr(model, "inner") else model.net


@pytest.mark.parametrize("name", ["tfno", "mg-tfno"])
def test_every_layer_weight_is_its_slice_of_the_one_joint_tensor(name):
    torch.manual_seed(0)
    model = build_model(OperatorModelConfig(name=name, rank=0.2, factorization="joint", **SMALL))
    tfno = _tfno(model)
    joint = tfno.joint
    full = joint.weight.to_tensor()
    convs = tfno.fno_blocks.convs
    assert full.shape == (3, *convs[0].weight.shape)
    for layer, conv in enumerate(convs):
        torch.testing.assert_close(conv.weight.to_tensor(), full[layer])
        cut = (slice(None), slice(None), slice(1, -1), slice(None, 2))  # what SpectralConv's mode slicing asks
        torch.testing.assert_close(conv.weight[cut].to_tensor(), full[layer][cut])
    # the joint tensor is the only spectral weight: no per-layer factors left
    assert not any("convs" in n and "weight" in n for n, _ in model.named_parameters())
    # neuraloperator's per-layer initial scale, sqrt(2 / (in + out)), up to a low-rank draw's spread
    assert 0.5 < full.abs().pow(2).mean().sqrt().item() / (2 / 16) ** 0.5 < 2


def test_the_parameter_count_is_the_tucker_formula_in_place_of_the_per_layer_weights():
    per = build_model(OperatorModelConfig(name="tfno", rank=0.2, **SMALL))
    joint = build_model(OperatorModelConfig(name="tfno", rank=0.2, factorization="joint", **SMALL))
    layer_params = sum(2 * p.numel() for n, p in per.named_parameters() if ".convs." in n and ".weight." in n)
    jt = joint.net.joint
    ranks, shape = jt.weight.rank, jt.weight.shape
    formula = 2 * (int(np.prod(ranks)) + sum(i * r for i, r in zip(shape, ranks, strict=True)))
    assert jt.n_params() == formula == sum(2 * p.numel() for p in jt.parameters())
    assert count_params(joint) == count_params(per) - layer_params + formula
    # relative rank: the core and factors hold about `rank` x the joint tensor's entries
    assert formula / (2 * np.prod(shape)) == pytest.approx(0.2, rel=0.15)


def test_a_joint_model_trains_checkpoints_and_reloads(tmp_path):
    from operators import model_from_checkpoint
    from operators.fno import train

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 16, 16, generator=g)
    y = 0.5 * torch.roll(x, 2, dims=-1)
    cfg = OperatorTrainConfig(
        model=OperatorModelConfig(name="tfno", rank=0.3, factorization="joint", **SMALL),
        epochs=2,
        batch_size=4,
        lr=1e-2,
        loss="l2",
    )
    before = build_model(cfg.model).net.joint.weight.to_tensor()
    model, history = train(cfg, (x, y), checkpoint=tmp_path / "ck.pt")
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
    assert not torch.allclose(model.net.joint.weight.to_tensor(), before)  # the joint factors learned
    again = model_from_checkpoint(tmp_path / "ck.pt", device="cpu")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_bad_joint_ranks_and_models_are_refused():
    shape = (3, 8, 8, 6, 4)
    low = smallest_rank(shape)
    with pytest.raises(
        InputError, match=rf"rank 0.001 gives fewer than one Tucker rank .* mode 0 \(size 3\).*>= {low:.3g}"
    ):
        JointTucker(shape, 0.001, 0.1)
    JointTucker(shape, low * 1.01, 0.1)  # just above the bound: every mode keeps a rank
    with pytest.raises(InputError, match="fewer than one Tucker rank"):
        build_model(OperatorModelConfig(name="tfno", rank=0.001, factorization="joint", **SMALL))
    with pytest.raises(ValueError, match="factorization applies to 'tfno' and 'mg-tfno' only"):
        OperatorModelConfig(name="fno", factorization="joint")

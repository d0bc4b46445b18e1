"""Neural operators: models and parameter ratios, multi-grid patching, training, resume, bad inputs."""

from __future__ import annotations

import pickle

import pytest
import torch

from operators import load_checkpoint
from operators.fno import (
    CheckpointMismatchError,
    OperatorModelConfig,
    OperatorTrainConfig,
    TrainingDivergedError,
    build_model,
    count_params,
    input_domain_ratio,
    train,
)
from operators.fno.models import grid_channels

from methods import OPERATORS

SMALL = dict(n_modes=6, hidden_channels=8, n_layers=2)


@pytest.mark.parametrize("name", OPERATORS)
def test_models_map_shapes_at_any_resolution(name):
    model = build_model(OperatorModelConfig(name=name, **SMALL))
    g = torch.Generator().manual_seed(0)  # inputs independent of the global RNG (training reseeds it)
    for n in (16, 32):
        assert model(torch.randn(3, 1, n, n, generator=g)).shape == (3, 1, n, n)


def test_parameter_ratios():
    fno = count_params(build_model(OperatorModelConfig(name="fno", n_modes=16, hidden_channels=32)))
    tfno = count_params(build_model(OperatorModelConfig(name="tfno", n_modes=16, hidden_channels=32, rank=0.02)))
    mg = build_model(OperatorModelConfig(name="mg-tfno", n_modes=16, hidden_channels=32, rank=0.02, levels=1))
    assert fno / tfno > 20 and fno / count_params(mg) > 20
    # the MG-TFNO's inner network takes (channels + 2 positional) x (levels + 1) inputs
    assert mg.inner.in_channels == (1 + 2) * 2


def test_multigrid_patch_unpatch_round_trip():
    cfg = OperatorModelConfig(name="mg-tfno", levels=2, padding_fraction=0.125, **SMALL)
    model = build_model(cfg)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    g = grid_channels(x)
    patches, _ = model.patcher.patch(g, None)
    assert patches.shape == (2 * 16, 3 * 3, 8 + 8, 8 + 8)  # 4x4 patches of 8 + 2*4 padding, 3 levels of 3 channels
    back, _ = model.patcher.unpatch(patches[:, :3], None, evaluation=True)  # level-0 channels, padding removed
    torch.testing.assert_close(back, g, rtol=0, atol=0)  # patching copies values: exact
    # positional channels are global: patch (0, 1) sees x from 0.25 on, not a local 0
    assert input_domain_ratio(model, 32) == pytest.approx(16 * 16 / (32 * 32))


def test_mg_tfno_input_domain_is_under_half_the_domain():
    model = build_model(OperatorModelConfig(name="mg-tfno", levels=1, padding_fraction=0.0625, **SMALL))
    assert input_domain_ratio(model, 64) == pytest.approx(40 * 40 / 64**2)
    assert input_domain_ratio(build_model(OperatorModelConfig(name="fno", **SMALL)), 64) == 1.0


def _data(n=16, N=12, seed=0):
    """Smooth periodic inputs (modes |k| <= 2) and a translation-equivariant linear target."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) * (2 * torch.pi / n)
    x = torch.zeros(N, 1, n, n)
    for kx in range(3):
        for ky in range(3):
            a, b = torch.randn(2, N, 1, 1, 1, generator=g)
            x += a * torch.cos(kx * t[None, :] + ky * t[:, None]) + b * torch.sin(kx * t[None, :] + ky * t[:, None])
    y = 0.5 * torch.roll(x, 2, dims=-1) - 0.3 * x
    return x, y


def test_training_lowers_the_error_and_resumes_after_a_crash(tmp_path):
    cfg = OperatorTrainConfig(
        model=OperatorModelConfig(name="tfno", rank=0.5, **SMALL), epochs=4, batch_size=4, lr=1e-2, loss="l2"
    )
    xy, test = _data(), _data(seed=1)
    _, ref_hist = train(cfg, xy, test)
    assert ref_hist[-1]["test_l2"] < ref_hist[0]["test_l2"]

    ckpt = tmp_path / "ck.pt"

    def crash(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies after epoch 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(cfg, xy, test, checkpoint=ckpt, on_epoch=crash)
    assert load_checkpoint(ckpt)["epoch"] == 2
    _, hist = train(cfg, xy, test, checkpoint=ckpt)
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    # same as uninterrupted: the same float32 operations (bit-identical here); rel 1e-5 (~100 float32 ulps)
    # admits reduction-order differences carried through the remaining 2 epochs
    assert hist[-1]["test_l2"] == pytest.approx(ref_hist[-1]["test_l2"], rel=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = OperatorTrainConfig(model=OperatorModelConfig(name="fno", **SMALL), epochs=3, batch_size=4)
    ckpt = tmp_path / "ck.pt"
    x, y = _data()

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, (x, y), checkpoint=ckpt, on_epoch=stop)
    y_bad = y.clone()
    y_bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match="non-finite training loss.*epoch 1"):
        train(cfg, (x, y_bad), checkpoint=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 1


def test_bad_inputs_are_named(tmp_path):
    model = build_model(OperatorModelConfig(name="fno", **SMALL))
    with pytest.raises(ValueError, match="built for 1 input channel"):
        model(torch.randn(2, 3, 16, 16))
    mg = build_model(OperatorModelConfig(name="mg-tfno", levels=2, **SMALL))
    with pytest.raises(ValueError, match="divisible by 4"):
        mg(torch.randn(1, 1, 18, 18))
    with pytest.raises(ValueError, match="periodic"):
        build_model(OperatorModelConfig(name="mg-tfno", **SMALL), periodic=False)
    with pytest.raises(ValueError, match="mg-tfno' only"):
        OperatorModelConfig(name="fno", levels=2)
    cfg = OperatorTrainConfig(model=OperatorModelConfig(name="fno", **SMALL), epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="2 input / 1 output channels"):
        train(cfg, (torch.randn(4, 2, 16, 16), torch.randn(4, 1, 16, 16)))
    # a checkpoint from another configuration
    ckpt = tmp_path / "ck.pt"
    train(cfg, _data(N=4), checkpoint=ckpt)
    other = OperatorTrainConfig(
        model=OperatorModelConfig(name="fno", **{**SMALL, "hidden_channels": 12}), epochs=1, batch_size=4
    )
    with pytest.raises(CheckpointMismatchError, match="differs in: \\['model'\\]"):
        train(other, _data(N=4), checkpoint=ckpt)
    # a crafted pickle (code on load) is refused by the weights-only loader
    evil = tmp_path / "evil.pt"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    evil.write_bytes(pickle.dumps({"model": Boom()}))
    with pytest.raises(CheckpointMismatchError, match="unreadable checkpoint"):
        load_checkpoint(evil)


def test_pairs_rejects_other_families(tmp_path, monkeypatch):
    import data
    from data.spec import NavierStokesSpec, PoissonSpec
    from operators.fno import pairs

    monkeypatch.setenv("SCIFLOW_HOME", str(tmp_path))
    ref = data.generate(PoissonSpec(n=8, n_train=2, n_test=1), progress=False)
    with pytest.raises(ValueError, match="'navier_stokes' and 'darcy'.*'poisson'"):
        pairs(data.load(ref, "train"))
    ns = data.generate(NavierStokesSpec(n=16, n_train=2, n_test=1, horizon=0.1), progress=False)
    x, y = pairs(data.load(ns, "train"))
    assert x.shape == y.shape == (2, 1, 16, 16) and x.dtype == torch.float32


def test_model_from_checkpoint_rebuilds_any_kind_from_the_stored_config(tmp_path):
    """One checkpoint format: kind, config and context rebuild the network; another kind, or a
    context argument the kind does not take, is refused by name."""
    from data.errors import InputError
    from operators import KINDS, model_from_checkpoint
    from operators.checkpoint import weights

    assert set(KINDS) == {"operator", "dcdm", "hard", "node", "sde"}
    cfg = OperatorTrainConfig(model=OperatorModelConfig(name="fno", **SMALL), epochs=1, batch_size=4)
    ckpt = tmp_path / "ck.pt"
    trained, _ = train(cfg, _data(N=4), checkpoint=ckpt, periodic=False)
    saved = load_checkpoint(ckpt)
    assert (saved["kind"], saved["context"], saved["epoch"]) == ("operator", {"periodic": False}, 1)
    model = model_from_checkpoint(ckpt, device="cpu")
    assert not model.training
    for a, b in zip(weights(model).values(), weights(trained).values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())
    with pytest.raises(CheckpointMismatchError, match="holds a 'operator' model, not a 'dcdm' one"):
        model_from_checkpoint(ckpt, kind="dcdm")
    with pytest.raises(InputError, match=r"\['pde'\] do\(es\) not apply to a 'operator' model"):
        model_from_checkpoint(ckpt, pde=None)

"""Neural-ODE training (operators.node) with solver-error regularization: NFE logged per epoch,
checkpoints, and a resumed run equal to an uninterrupted one."""

import pytest
import torch

from operators.node import ODETrainConfig, train


def test_training_moves_and_logs_nfe():
    cfg = ODETrainConfig(
        task="spiral", regularizer="local-biased", epochs=2, batch_size=200, hidden=16, rtol=1e-4, atol=1e-4
    )
    model, hist = train(cfg)
    assert len(hist) == 2 and all(h["predict_nfe"] > 0 and h["train_nfe"] > 0 for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"] * 1.5 and hist[0]["reg"] > 0


@pytest.mark.parametrize("reg", ["local-unbiased", "local-biased"])
def test_interrupted_and_resumed_training_equals_an_uninterrupted_run(tmp_path, reg):
    """The generator that shuffles and draws the regularizer's random times is checkpointed, so a
    resumed run repeats no draw and skips none."""
    from operators import load_checkpoint, model_from_checkpoint

    cfg = ODETrainConfig(task="spiral", regularizer=reg, epochs=3, batch_size=250, hidden=8, rtol=1e-4, atol=1e-4)
    full_model, full = train(cfg)
    ckpt = tmp_path / "node.pt"

    def crash(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt  # the process dies after epoch 2's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(cfg, checkpoint=ckpt, on_epoch=crash)
    assert load_checkpoint(ckpt)["epoch"] == 2
    seen = []
    _, resumed = train(cfg, checkpoint=ckpt, on_epoch=lambda e, r: seen.append(e))
    assert seen == [3]  # only the epoch after the checkpoint ran
    timing = {"train_seconds", "predict_seconds"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == [
        {k: v for k, v in r.items() if k not in timing} for r in full
    ]
    rebuilt = model_from_checkpoint(ckpt)  # a neural ODE comes back from its checkpoint alone
    for a, b in zip(rebuilt.state_dict().values(), full_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(rebuilt(x)[0], full_model(x, cfg)[0])


def test_a_float32_model_trains_with_local_regularization_like_the_float64_one(tmp_path):
    """cfg.dtype reaches the model, the data and the solve; the float32 run's NFE and accuracy are
    the float64 run's (both regularize the same way; the dtype's rounding is far below the 1e-4
    tolerances) and the checkpoint rebuilds a float32 model."""
    from operators import model_from_checkpoint

    kw = dict(task="spiral", regularizer="local-biased", epochs=2, batch_size=250, hidden=8, rtol=1e-4, atol=1e-4)
    m64, h64 = train(ODETrainConfig(**kw))
    m32, h32 = train(ODETrainConfig(**kw, dtype="float32"), checkpoint=tmp_path / "n32.pt")
    assert {p.dtype for p in m32.parameters()} == {torch.float32}
    assert {p.dtype for p in m64.parameters()} == {torch.float64}
    # the step counts of an adaptive solve are integers: equal unless a step's error ratio sits
    # within float32 rounding (1e-7 relative) of 1; the metric moves by the rounding of the fit
    assert abs(h32[-1]["predict_nfe"] - h64[-1]["predict_nfe"]) <= 0.01 * h64[-1]["predict_nfe"] + 6
    assert h32[-1]["mse"] == pytest.approx(h64[-1]["mse"], rel=0.01)
    assert {p.dtype for p in model_from_checkpoint(tmp_path / "n32.pt").parameters()} == {torch.float32}


def test_adjoint_training_config():
    """adjoint=True trains through odeint_adjoint (the same losses as the direct path, to the
    solve's tolerance); with the global regularizer, which needs every step's graph, it is refused
    naming both."""
    kw = dict(task="spiral", regularizer="local-biased", epochs=1, batch_size=500, hidden=8, rtol=1e-6, atol=1e-6)
    _, direct = train(ODETrainConfig(**kw))
    _, adjoint = train(ODETrainConfig(**kw, adjoint=True))
    assert adjoint[0]["loss"] == pytest.approx(direct[0]["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="regularizer='global'.*adjoint=True"):
        ODETrainConfig(task="spiral", regularizer="global", adjoint=True)


def test_neural_sde_tasks_train_resume_from_their_checkpoint_and_refuse_bad_configs(tmp_path):
    """The digits SDE (encoder, latent SDE, decoder) trains on the one loop with its accuracy per
    epoch and comes back from its checkpoint with the same weights; the OU task needs >= 2 paths
    (it matches a standard deviation)."""
    from operators import model_from_checkpoint
    from operators.node.sde import SDETrainConfig
    from operators.node.sde import train as train_sde

    cfg = SDETrainConfig(
        task="digits", regularizer="local-unbiased", epochs=1, steps_per_epoch=2, batch_size=16, paths=1, w_start=1
    )
    model, hist = train_sde(cfg, checkpoint=tmp_path / "sde.pt")
    assert 0 <= hist[0]["accuracy"] <= 1 and hist[0]["predict_nfe"] > 0 and hist[0]["reg"] > 0
    rebuilt = model_from_checkpoint(tmp_path / "sde.pt")
    assert rebuilt.encoder.in_features == 64 and rebuilt.decoder.out_features == 10
    for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="paths must be >= 2, got 1"):
        SDETrainConfig(task="ou", paths=1)

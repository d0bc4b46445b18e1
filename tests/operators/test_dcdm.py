"""DCDM training (Kaneda et al., ICML 2023, Eq. 9): the loss on a known case, held-out loss, checkpoints and resume."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from operators import model_from_checkpoint
from operators.dcdm import DCDMNet, DCDMTrainConfig, dcdm_loss, train, training_rhs
from operators.dcdm.train import sparse_torch
from solvers.linear import GridSystem


def test_training_lowers_the_held_out_loss(dcdm_model):
    cfg = DCDMTrainConfig(n=16, ritz_m=60)
    system = cfg.system()
    held_out = torch.as_tensor(training_rhs(system, 60, None, 64, seed=123))
    A = sparse_torch(system)
    torch.manual_seed(0)
    untrained = DCDMNet(dim=2)
    with torch.no_grad():
        assert dcdm_loss(dcdm_model, held_out, A, system.shape) < 0.8 * dcdm_loss(untrained, held_out, A, system.shape)


class _Identity(torch.nn.Module):
    dim = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.w


def test_loss_on_a_known_case():
    # A = diag(d); with f(b) = b the loss is || b - (b.b / b.Db) D b ||^2, computed by hand
    d = np.array([1.0, 2.0, 3.0, 4.0])
    system = GridSystem(A=sp.diags(d).tocsr(), shape=(2, 2))
    b = np.array([[1.0, -1.0, 0.5, 2.0], [0.0, 1.0, 0.0, 0.0]])
    loss = dcdm_loss(_Identity(), torch.tensor(b, dtype=torch.float32), sparse_torch(system), (2, 2))
    expected = np.mean([np.sum((bi - (bi @ bi) / (bi @ (d * bi)) * d * bi) ** 2) for bi in b])
    eps32 = float(torch.finfo(torch.float32).eps)
    # float32 evaluation of a few products and 4-term sums of exactly representable inputs: a few eps32
    # relative; 8 eps32 = 4e-7 of the loss 0.44 (measured 1.4e-8 absolute)
    assert loss.item() == pytest.approx(expected, rel=8 * eps32)
    # an exact inverse direction (f = A^-1 b) leaves no residual: loss 0 up to float32 rounding, each
    # residual entry ~eps32 |b| (so the loss ~ 4 (2 eps32)^2 ~ 2e-13; measured 0)
    inv = _Identity()
    inv.forward = lambda x: x / torch.tensor(d, dtype=torch.float32).reshape(1, 1, 2, 2)
    assert dcdm_loss(inv, torch.tensor(b, dtype=torch.float32), sparse_torch(system), (2, 2)).item() < 1e-10


def test_checkpoint_resume_and_bad_checkpoint(tmp_path):
    cfg = DCDMTrainConfig(n=8, ritz_m=20, n_samples=16, epochs=2, batch_size=8)
    ckpt = tmp_path / "c.pt"
    _, h_full = train(cfg, checkpoint=ckpt)
    # interrupted after one epoch, then resumed: same history as the uninterrupted run
    ckpt2 = tmp_path / "c2.pt"

    def crash_after_first_epoch(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, checkpoint=ckpt2, on_epoch=crash_after_first_epoch)
    _, h_resumed = train(cfg, checkpoint=ckpt2)
    # the resumed run repeats the same float32 operations (bit-identical here); rel 1e-6 (~8 float32
    # ulps) admits a reordered reduction. round(., 6) == round(., 6) was no tolerance: two values one
    # ulp apart round differently when they straddle a 6th-decimal boundary.
    assert [h["loss"] for h in h_resumed] == pytest.approx([h["loss"] for h in h_full], rel=1e-6)
    with pytest.raises(ValueError, match="another config"):
        train(cfg.model_copy(update={"lr": 0.5}), checkpoint=ckpt)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable"):
        model_from_checkpoint(bad)


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = DCDMTrainConfig(n=8, ritz_m=20, n_samples=16, epochs=1, batch_size=8)
    ckpt = tmp_path / "c.pt"
    train(cfg, checkpoint=ckpt)
    good = ckpt.read_bytes()

    def disk_full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(cfg.model_copy(update={"epochs": 2}), checkpoint=tmp_path / "c2.pt")
    assert ckpt.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]

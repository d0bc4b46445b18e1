"""Disk full while writing a checkpoint: the previous checkpoint survives."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import enospc, files, fno_config, fno_pairs

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fail", ["torch.save-part-way", "fsync"])
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, fail):
    from operators import load_checkpoint
    from operators.fno import train

    ckpt = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1's checkpoint
        train(
            fno_config(2), fno_pairs(), checkpoint=ckpt, on_epoch=lambda e, r: (_ for _ in ()).throw(KeyboardInterrupt)
        )
    good = ckpt.read_bytes()
    if fail == "torch.save-part-way":
        real_save = torch.save

        def save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            f.truncate(f.tell() // 2)  # half of it reached the disk
            enospc()

        monkeypatch.setattr(torch, "save", save)
    else:
        monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError) as err:
        train(fno_config(2), fno_pairs(), checkpoint=ckpt)  # resumes at epoch 1, epoch 2's save fails
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and any(str(ckpt) in n for n in err.value.__notes__)
    assert ckpt.read_bytes() == good and load_checkpoint(ckpt)["epoch"] == 1
    assert sorted(files(tmp_path)) == ["ck.pt"], "a temporary file was left behind"
    _, hist = train(fno_config(2), fno_pairs(), checkpoint=ckpt)  # space freed: it resumes from epoch 1
    assert [h["epoch"] for h in hist] == [1, 2]


def test_disk_full_during_hard_constraint_training_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from operators import load_checkpoint
    from operators.hard import HardModelConfig
    from operators.hard.pdes import DiffusionSorption
    from operators.hard.train import HardTrainConfig, train

    pde = DiffusionSorption(t=np.linspace(0.0, 50.0, 6), t_final=50.0, x=(np.arange(12) + 0.5) / 12)
    u0 = torch.rand(4, 1, generator=torch.Generator().manual_seed(0)).expand(4, 12).contiguous() * 0.2
    cfg = HardTrainConfig(
        model=HardModelConfig(modes=(3, 4), points=40, hidden=8, n_layers=2, n_basis=6),
        steps=2,
        batch_size=2,
        checkpoint_every=1,
    )
    ckpt = tmp_path / "hc.pt"
    saves = []
    real_save = torch.save

    def save(obj, f, *a, **k):
        saves.append(obj["step"])
        if obj["step"] == 2:
            enospc()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, pde, u0, checkpoint=ckpt)
    assert saves == [1, 2] and load_checkpoint(ckpt)["step"] == 1
    assert sorted(files(tmp_path)) == ["hc.pt"]

"""Disk full while writing a dataset file or a manifest: the previous file survives, nothing is half-written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import data
from data import hdf5
from data.pdes import darcy
from data.spec import DarcySpec

from helpers import enospc, files, temporaries

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# 2. disk full / write failure: the previous good file survives, no temporary is left


def _fail_second_create_dataset(monkeypatch, seen: list):
    original = h5py.Group.create_dataset

    def create_dataset(self, name, *args, **kwargs):
        seen.append(Path(self.file.filename))
        if len(seen) >= 2:  # the first array is on disk, the second one does not fit
            enospc()
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)


@pytest.mark.parametrize("fail", ["h5-write-part-way", "fsync", "rename"])
def test_disk_full_while_writing_a_dataset_file_keeps_the_previous_file(tmp_path, monkeypatch, fail):
    target = tmp_path / "train.h5"
    hdf5.write_h5(target, {"a": np.arange(4.0), "u": np.ones(3)}, {"note": "good"})
    good = target.read_bytes()
    seen: list[Path] = []
    if fail == "h5-write-part-way":
        _fail_second_create_dataset(monkeypatch, seen)
    elif fail == "fsync":
        monkeypatch.setattr(os, "fsync", enospc)
    else:
        monkeypatch.setattr(os, "replace", enospc)
    with pytest.raises(OSError) as err:
        hdf5.write_h5(target, {"a": np.arange(400.0), "u": np.zeros(300)}, {"note": "new"})
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    assert any(str(target) in note for note in getattr(err.value, "__notes__", [])), "the error names the file"
    assert target.read_bytes() == good and hdf5.read_h5(target)[1]["note"] == "good"
    assert sorted(files(tmp_path)) == ["train.h5"], "a temporary file was left behind"
    if fail == "h5-write-part-way":
        assert seen and seen[0].name.startswith(".train.h5.tmp-")  # it failed in a temporary, not in train.h5


def test_disk_full_while_writing_the_manifest_claims_no_dataset_and_a_rerun_finishes(tmp_path, monkeypatch):
    spec, root = DarcySpec(n=8, n_train=4, n_test=2), tmp_path / "store"
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".manifest.json"):
            enospc()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left") as err:
        data.generate(spec, root=root, chunk_size=2, progress=False)
    assert any("manifest.json" in n for n in err.value.__notes__)
    assert data.find(spec, root=root) is None  # a dataset exists iff its manifest does
    assert not temporaries(root)
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the rerun reuses every chunk
    monkeypatch.setattr(darcy, "sample_arrays", lambda *a, **k: pytest.fail("PETSc work on a rerun"))
    ref = data.generate(spec, root=root, chunk_size=2, progress=False)
    assert data.load(ref).arrays["u"].shape == (4, 8, 8)

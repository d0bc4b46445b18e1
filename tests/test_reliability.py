"""Reliability (issue #9): nothing is lost or half-written, and bad input fails clearly.

* property-based tests (hypothesis) of every PDE family's spec validator and of the dataset round trip;
* disk full / write failures while writing a dataset file, a manifest and a checkpoint;
* SIGKILL during data generation and during training, with the recovery measured (printed: run
  ``pytest -s`` to see the figures; RELIABILITY.md records them);
* a table-driven bad-input suite over the typed configs, the flows' parameter models and the public
  entry points: each case names the problem and leaves no partial output.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import data
from data import hdf5, store
from data import io as dio
from data.pdes import darcy
from data.spec import FAMILIES, DarcySpec, canonical_json, parse_spec, spec_hash

ROOT = Path(__file__).resolve().parents[1]


def _enospc(*args, **kwargs):
    """Stand-in for a write, fsync or rename on a full disk."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden temporaries included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _temporaries(root: Path) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file() and p.name.startswith(".") and "tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# 1. property-based: spec validators of every family, dataset round trip


def _bounds(field) -> tuple[float | None, bool, float | None, bool]:
    lo = hi = None
    lo_strict = hi_strict = False
    for m in field.metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo, lo_strict = m.gt, True
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi, hi_strict = m.lt, True
    return lo, lo_strict, hi, hi_strict


def _fields(cls):
    return {k: f for k, f in cls.model_fields.items() if k != "family"}


def _valid_value(field) -> st.SearchStrategy:
    ann = field.annotation
    if typing.get_origin(ann) is typing.Literal:
        return st.sampled_from(typing.get_args(ann))
    lo, lo_strict, hi, hi_strict = _bounds(field)
    if ann is int:
        return st.integers(None if lo is None else lo + lo_strict, None if hi is None else hi - hi_strict)
    if ann is float:
        return st.floats(lo, hi, exclude_min=lo_strict and lo is not None, exclude_max=hi_strict and hi is not None,
                         allow_nan=False, allow_infinity=False)
    # petsc_options: option names without whitespace, any string values; petsc_fallbacks: a list of them
    name = st.text("abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=12)
    options = st.dictionaries(name, st.text(max_size=8), max_size=3)
    return st.lists(options.filter(bool), max_size=2) if typing.get_origin(ann) is list else options


def _repair(family: str, kw: dict) -> dict:
    """Satisfy the cross-field rules that field bounds cannot express."""
    if family == "navier_stokes":
        kw["n"] -= kw["n"] % 2
    if family == "poisson" and kw["n"] ** kw["dim"] > 64_000_000:
        kw["n"] = 400
    for lo, hi in (("y0_low", "y0_high"), ("ic_low", "ic_high")):
        if lo in kw:
            assume(kw[lo] != kw[hi])
            kw[lo], kw[hi] = sorted((kw[lo], kw[hi]))
    return kw


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=25, deadline=None)
@given(draw=st.data())
def test_valid_specs_round_trip_and_hash_deterministically(family, draw):
    cls = FAMILIES[family]
    kw = _repair(family, {k: draw.draw(_valid_value(f), label=k) for k, f in _fields(cls).items()})
    spec = cls(**kw)
    assert parse_spec({"family": family, **kw}) == spec
    dumped = spec.model_dump(mode="json")
    text = canonical_json(spec)
    for again in (parse_spec(dumped), parse_spec(text), parse_spec(json.loads(text)), parse_spec(spec)):
        assert again == spec and canonical_json(again) == text and spec_hash(again) == spec_hash(spec)
    reordered = dict(reversed(list(dumped.items())))  # key order never matters
    assert spec_hash(parse_spec(reordered)) == spec_hash(spec)
    assert len(spec_hash(spec)) == 64 and int(spec_hash(spec), 16) >= 0
    if spec.seed < 2**63 - 1:  # and the hash sees every field
        assert spec_hash(spec.model_copy(update={"seed": spec.seed + 1})) != spec_hash(spec)


def _bad_value(field) -> st.SearchStrategy:
    ann = field.annotation
    if typing.get_origin(ann) is typing.Literal:
        allowed = typing.get_args(ann)
        return st.one_of(st.text(max_size=6), st.integers(-5, 10)).filter(lambda v: v not in allowed)
    lo, lo_strict, hi, hi_strict = _bounds(field)
    options = [st.sampled_from(["many", [1], {"a": 1}])]  # wrong types
    if ann is int:
        if lo is not None:
            options.append(st.integers(max_value=lo if lo_strict else lo - 1))
        if hi is not None:
            options.append(st.integers(min_value=hi if hi_strict else hi + 1))
        options.append(st.sampled_from([2.5, float("nan"), float("inf")]))
    else:
        if lo is not None:
            options.append(st.floats(max_value=lo, exclude_max=not lo_strict, allow_nan=False))
        if hi is not None:
            options.append(st.floats(min_value=hi, exclude_min=not hi_strict, allow_nan=False))
        options.append(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    return st.one_of(options)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=25, deadline=None)
@given(draw=st.data())
def test_out_of_range_values_raise_a_validation_error_naming_the_field(family, draw):
    cls = FAMILIES[family]
    names = [k for k, f in _fields(cls).items() if k != "petsc_options"]
    name = draw.draw(st.sampled_from(names), label="field")
    bad = draw.draw(_bad_value(cls.model_fields[name]), label="value")
    with pytest.raises(ValidationError) as err:
        parse_spec({"family": family, name: bad})
    assert any(name in e["loc"] for e in err.value.errors()), err.value.errors()
    assert name in str(err.value)


def _dataset_dir(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A minimal stored dataset (one split + manifest) around arbitrary arrays."""
    spec = DarcySpec(n=8, n_train=1, n_test=0)
    digest = hdf5.write_h5(root / "train.h5", arrays, {"spec": canonical_json(spec), "split": "train"})
    manifest = {"spec": json.loads(canonical_json(spec)), "digest": digest, "files": {"train.h5": {"sha256": digest}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@st.composite
def _raw_arrays(draw):
    """Named float arrays made of arbitrary bits (NaN payloads, infinities, subnormals included)."""
    out = {}
    for name in draw(st.lists(st.sampled_from(["a", "u", "w", "x_0"]), min_size=1, max_size=3, unique=True)):
        dtype = np.dtype(draw(st.sampled_from(["<f4", "<f8"])))
        shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
        raw = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize))
        out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=_raw_arrays(), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), pick=st.integers(0, 10))
def test_dataset_round_trip_keeps_every_bit_and_a_flipped_bit_is_detected(arrays, where, bit, pick):
    with tempfile.TemporaryDirectory() as tmp:
        path = _dataset_dir(Path(tmp), arrays)
        ds = data.load(path)  # digest verified against the manifest
        for k, v in arrays.items():
            assert ds[k].dtype == v.dtype and ds[k].shape == v.shape
            assert ds[k].tobytes() == v.tobytes()  # same bits, NaN payloads included
        name = sorted(arrays)[pick % len(arrays)]
        with h5py.File(path / "train.h5", "r") as fh:
            offset = fh[name].id.get_offset()
        assert offset is not None
        pos = offset + int(where * arrays[name].nbytes)
        with open(path / "train.h5", "r+b") as fh:
            fh.seek(pos)
            byte = fh.read(1)[0]
            fh.seek(pos)
            fh.write(bytes([byte ^ (1 << bit)]))
        assert hdf5.read_h5(path / "train.h5")[0][name].tobytes() != arrays[name].tobytes()  # the flip hit the data
        with pytest.raises(data.DatasetError, match="corrupted: SHA-256"):
            data.load(path)


# ---------------------------------------------------------------------------------------------
# 2. disk full / write failure: the previous good file survives, no temporary is left


def _fail_second_create_dataset(monkeypatch, seen: list):
    original = h5py.Group.create_dataset

    def create_dataset(self, name, *args, **kwargs):
        seen.append(Path(self.file.filename))
        if len(seen) >= 2:  # the first array is on disk, the second one does not fit
            _enospc()
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
        monkeypatch.setattr(os, "fsync", _enospc)
    else:
        monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(OSError) as err:
        hdf5.write_h5(target, {"a": np.arange(400.0), "u": np.zeros(300)}, {"note": "new"})
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and "No space left on device" in str(err.value)
    assert any(str(target) in note for note in getattr(err.value, "__notes__", [])), "the error names the file"
    assert target.read_bytes() == good and hdf5.read_h5(target)[1]["note"] == "good"
    assert sorted(_files(tmp_path)) == ["train.h5"], "a temporary file was left behind"
    if fail == "h5-write-part-way":
        assert seen and seen[0].name.startswith(".train.h5.tmp-")  # it failed in a temporary, not in train.h5


def test_disk_full_while_writing_the_manifest_claims_no_dataset_and_a_rerun_finishes(tmp_path, monkeypatch):
    spec, root = DarcySpec(n=8, n_train=4, n_test=2), tmp_path / "store"
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(".manifest.json"):
            _enospc()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left") as err:
        data.generate(spec, root=root, chunk_size=2, progress=False)
    assert any("manifest.json" in n for n in err.value.__notes__)
    assert data.find(spec, root=root) is None  # a dataset exists iff its manifest does
    assert not _temporaries(root)
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the rerun reuses every chunk
    monkeypatch.setattr(darcy, "sample_arrays", lambda *a, **k: pytest.fail("PETSc work on a rerun"))
    ref = data.generate(spec, root=root, chunk_size=2, progress=False)
    assert data.load(ref).arrays["u"].shape == (4, 8, 8)


SMALL = dict(n_modes=6, hidden_channels=8, n_layers=2)


def _pairs(N=8, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, n, n, generator=g)
    return x, 0.5 * torch.roll(x, 2, dims=-1) - 0.3 * x


def _fno_config(epochs):
    from operators.fno import OperatorModelConfig, OperatorTrainConfig

    return OperatorTrainConfig(model=OperatorModelConfig(name="fno", **SMALL), epochs=epochs, batch_size=4, lr=1e-2,
                               loss="l2")


@pytest.mark.parametrize("fail", ["torch.save-part-way", "fsync"])
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, fail):
    from operators import load_checkpoint
    from operators.fno import train

    ckpt = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):  # stopped after epoch 1's checkpoint
        train(_fno_config(2), _pairs(), checkpoint=ckpt, on_epoch=lambda e, r: (_ for _ in ()).throw(KeyboardInterrupt))
    good = ckpt.read_bytes()
    if fail == "torch.save-part-way":
        real_save = torch.save

        def save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            f.truncate(f.tell() // 2)  # half of it reached the disk
            _enospc()

        monkeypatch.setattr(torch, "save", save)
    else:
        monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(OSError) as err:
        train(_fno_config(2), _pairs(), checkpoint=ckpt)  # resumes at epoch 1, epoch 2's save fails
    monkeypatch.undo()
    assert err.value.errno == errno.ENOSPC and any(str(ckpt) in n for n in err.value.__notes__)
    assert ckpt.read_bytes() == good and load_checkpoint(ckpt)["epoch"] == 1
    assert sorted(_files(tmp_path)) == ["ck.pt"], "a temporary file was left behind"
    _, hist = train(_fno_config(2), _pairs(), checkpoint=ckpt)  # space freed: it resumes from epoch 1
    assert [h["epoch"] for h in hist] == [1, 2]


def test_disk_full_during_hard_constraint_training_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from operators import load_checkpoint
    from operators.hard import HardModelConfig
    from operators.hard.pdes import DiffusionSorption
    from operators.hard.train import HardTrainConfig, train

    pde = DiffusionSorption(t=np.linspace(0.0, 50.0, 6), t_final=50.0, x=(np.arange(12) + 0.5) / 12)
    u0 = torch.rand(4, 1, generator=torch.Generator().manual_seed(0)).expand(4, 12).contiguous() * 0.2
    cfg = HardTrainConfig(model=HardModelConfig(modes=(3, 4), points=40, hidden=8, n_layers=2, n_basis=6), steps=2,
                          batch_size=2, checkpoint_every=1)
    ckpt = tmp_path / "hc.pt"
    saves = []
    real_save = torch.save

    def save(obj, f, *a, **k):
        saves.append(obj["step"])
        if obj["step"] == 2:
            _enospc()
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        train(cfg, pde, u0, checkpoint=ckpt)
    assert saves == [1, 2] and load_checkpoint(ckpt)["step"] == 1
    assert sorted(_files(tmp_path)) == ["hc.pt"]


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-work, measured recovery


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_generation_loses_at_most_one_chunk_and_recovers(tmp_path, monkeypatch):
    """Kill the generating process by PID mid-run; the rerun solves only the missing samples and
    yields bit-for-bit the dataset of an uninterrupted run."""
    spec, chunk = DarcySpec(n=96, n_train=48, n_test=0, seed=9), 4
    n_chunks = spec.n_train // chunk
    root = tmp_path / "killed"
    proc = _spawn(f"import data; from data.spec import DarcySpec; "
                  f"data.generate(DarcySpec(n=96, n_train=48, n_test=0, seed=9), root={str(root)!r}, chunk_size={chunk}, progress=False)")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(root.glob("chunks/*/train-*.h5"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    _kill(proc)
    done = sorted(root.glob("chunks/*/train-*.h5"))
    assert 3 <= len(done) < n_chunks, f"the kill did not land mid-generation ({len(done)} chunks)"
    assert data.find(spec, root=root) is None and not list(root.rglob("manifest.json"))
    for f in done:  # everything under a real name is whole and verifies
        arrays, attrs = hdf5.read_h5(f)
        assert hdf5.array_digest(arrays) == attrs["sha256"] and arrays["u"].shape[0] == chunk
    litter = _temporaries(root)  # a SIGKILL mid-write can leave a hidden temporary, never a real name

    solved = []
    real = darcy.sample_arrays
    monkeypatch.setattr(darcy, "sample_arrays", lambda s, rngs: solved.append(len(rngs)) or real(s, rngs))
    t0 = time.perf_counter()
    ref = data.generate(spec, root=root, chunk_size=chunk, progress=False)
    recovery = time.perf_counter() - t0
    assert sum(solved) == spec.n_train - chunk * len(done)  # only the missing samples were solved
    monkeypatch.setattr(darcy, "sample_arrays", real)
    t0 = time.perf_counter()
    clean = data.generate(spec, root=tmp_path / "clean", chunk_size=chunk, progress=False)
    full = time.perf_counter() - t0
    assert ref.digest == clean.digest  # the recovered dataset is the uninterrupted one, bit for bit
    assert _temporaries(root) == []  # the rerun swept the killed writer's litter
    print(f"\n[reliability] generation SIGKILL: {len(done)}/{n_chunks} chunks done at the kill; rerun reused "
          f"{chunk * len(done)}/{spec.n_train} samples and re-solved {sum(solved)} (at most one chunk in flight lost); "
          f"recovery run {recovery:.2f} s vs uninterrupted {full:.2f} s; hidden temporaries left: {len(litter)}")


def test_litter_of_killed_writers_is_swept_and_nothing_else(tmp_path):
    """A killed writer's temporary (its PID gone) is removed by the next write in that folder; a
    live writer's temporary, an old one from another host, and unrelated files are handled as
    documented in ``dio.sweep_temporaries``."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "train.h5"
    killed = dio.temporary_name(final).with_name(dio.temporary_name(final).name.replace(f".{os.getpid()}.", f".{dead.pid}."))
    live = dio.temporary_name(final)  # this process: a write in progress
    other_host_new = tmp_path / ".train.h5.tmp-otherhost.1.abc123"
    other_host_old = tmp_path / ".x.pt.tmp-otherhost.1.def456"
    unrelated = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".a.tmp-bad name.1.0"]
    for f in (killed, live, other_host_new, other_host_old, *unrelated):
        f.write_bytes(b"partial")
    os.utime(other_host_old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert set(dio.sweep_temporaries(tmp_path)) == {killed, other_host_old}
    assert all(f.exists() for f in (live, other_host_new, *unrelated))
    # the sweep runs where the writers write: a chunk folder, a dataset folder, a checkpoint folder
    spec = DarcySpec(n=8, n_train=2, n_test=0)
    chunk_dir = store.chunk_path(spec, "train", 0, 2, tmp_path / "root").parent
    chunk_dir.mkdir(parents=True)
    litter = chunk_dir / killed.name
    litter.write_bytes(b"partial")
    data.generate(spec, root=tmp_path / "root", chunk_size=2, progress=False)
    assert not litter.exists()
    from operators.checkpoint import save_checkpoint

    ckpt_litter = tmp_path / "ck" / killed.name.replace("train.h5", "ck.pt")
    ckpt_litter.parent.mkdir()
    ckpt_litter.write_bytes(b"partial")
    save_checkpoint({"epoch": 1}, tmp_path / "ck" / "ck.pt")
    assert not ckpt_litter.exists() and (tmp_path / "ck" / "ck.pt").exists()


def test_sigkill_during_training_resumes_from_the_last_checkpoint(tmp_path):
    """Kill a training process by PID; resuming loses no finished epoch and ends where an
    uninterrupted run ends."""
    from operators import load_checkpoint
    from operators.fno import train

    epochs, ckpt = 40, tmp_path / "ck.pt"
    proc = _spawn(
        "import time, torch; from operators.fno import OperatorModelConfig, OperatorTrainConfig, train\n"
        "g = torch.Generator().manual_seed(0); x = torch.randn(8, 1, 16, 16, generator=g)\n"
        "y = 0.5 * torch.roll(x, 2, dims=-1) - 0.3 * x\n"
        f"cfg = OperatorTrainConfig(model=OperatorModelConfig(name='fno', **{SMALL!r}), epochs={epochs}, batch_size=4, "
        "lr=1e-2, loss='l2')\n"
        f"train(cfg, (x, y), checkpoint={str(ckpt)!r}, on_epoch=lambda e, r: time.sleep(0.1))\n")
    deadline, at_kill = time.time() + 120, 0
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and (at_kill := load_checkpoint(ckpt)["epoch"]) >= 3:
            break
        time.sleep(0.02)
    _kill(proc)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    at_kill = load_checkpoint(ckpt)["epoch"]  # a save may have landed between the poll and the kill
    assert 3 <= at_kill < epochs
    t0 = time.perf_counter()
    _, hist = train(_fno_config(epochs), _pairs(), checkpoint=ckpt)
    resume = time.perf_counter() - t0
    assert [h["epoch"] for h in hist] == list(range(1, epochs + 1))
    _, ref = train(_fno_config(epochs), _pairs())
    assert hist[-1]["loss"] == pytest.approx(ref[-1]["loss"], rel=1e-5)  # same as never interrupted
    print(f"\n[reliability] training SIGKILL: {at_kill}/{epochs} epochs checkpointed at the kill, 0 finished epochs "
          f"lost; resuming the remaining {epochs - at_kill} epochs took {resume:.2f} s; "
          f"hidden temporaries left: {len(_temporaries(tmp_path))}")


# ---------------------------------------------------------------------------------------------
# 3. bad input, systematically


def _cfg(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


# (id, config class, kwargs, text the message must contain)
CONFIG_CASES = [
    ("poisson-3d-too-many-unknowns", "data.spec", "PoissonSpec", dict(n=500, dim=3), "limit is 64e6"),
    ("navier_stokes-odd-n", "data.spec", "NavierStokesSpec", dict(n=33), "n must be even"),
    ("navier_stokes-viscosity-inf", "data.spec", "NavierStokesSpec", dict(viscosity=float("inf")), "viscosity"),
    ("lotka_volterra-y0-order", "data.spec", "LotkaVolterraSpec", dict(y0_low=3.0, y0_high=1.0), "must be below y0_high"),
    ("diffusion_sorption-phi-1", "data.spec", "DiffusionSorptionSpec", dict(phi=1.0), "phi"),
    ("diffusion_sorption-ic-order", "data.spec", "DiffusionSorptionSpec", dict(ic_low=0.5, ic_high=0.1), "ic_low (0.5) must be below ic_high"),
    ("heat-n_times-wrong-type", "data.spec", "HeatSpec", dict(n_times="ten"), "n_times"),
    ("darcy-seed-negative", "data.spec", "DarcySpec", dict(seed=-1), "seed"),
    ("darcy-n_test-negative", "data.spec", "DarcySpec", dict(n_test=-2), "n_test"),
    ("darcy-petsc_options-not-a-mapping", "data.spec", "DarcySpec", dict(petsc_options=["ksp_type", "cg"]), "petsc_options"),
    ("operator-unknown-model", "operators.fno", "OperatorModelConfig", dict(name="unet"), "name"),
    ("operator-n_modes-0", "operators.fno", "OperatorModelConfig", dict(n_modes=0), "n_modes"),
    ("operator-rank-nan", "operators.fno", "OperatorModelConfig", dict(rank=float("nan")), "rank"),
    ("operator-hidden-wrong-type", "operators.fno", "OperatorModelConfig", dict(hidden_channels="wide"), "hidden_channels"),
    ("operator-train-epochs-negative", "operators.fno", "OperatorTrainConfig", dict(epochs=-1), "epochs"),
    ("operator-train-lr-inf", "operators.fno", "OperatorTrainConfig", dict(lr=float("inf")), "lr"),
    ("operator-train-unknown-loss", "operators.fno", "OperatorTrainConfig", dict(loss="l3"), "loss"),
    ("operator-train-batch-fractional", "operators.fno", "OperatorTrainConfig", dict(batch_size=2.5), "batch_size"),
    ("operator-train-unknown-field", "operators.fno", "OperatorTrainConfig", dict(learning_rate=0.1), "learning_rate"),
    ("hard-unknown-backend", "operators.hard", "HardModelConfig", dict(backend="qr"), "backend"),
    ("hard-points-negative", "operators.hard", "HardModelConfig", dict(points=-5), "points"),
    ("hard-ridge-nan", "operators.hard", "HardModelConfig", dict(ridge=float("nan")), "ridge"),
    ("hard-unknown-mode", "operators.hard", "HardModelConfig", dict(mode="medium"), "mode"),
    ("hard-train-steps-0", "operators.hard.train", "HardTrainConfig", dict(steps=0), "steps"),
    ("hard-train-clip-inf", "operators.hard.train", "HardTrainConfig", dict(clip=float("inf")), "clip"),
    ("hard-train-checkpoint_every-negative", "operators.hard.train", "HardTrainConfig", dict(checkpoint_every=-1),
     "checkpoint_every"),
    ("dcdm-n-negative", "operators.dcdm", "DCDMTrainConfig", dict(n=-8), "n"),
    ("dcdm-dim-4", "operators.dcdm", "DCDMTrainConfig", dict(dim=4), "dim"),
    ("dcdm-unknown-bc", "operators.dcdm", "DCDMTrainConfig", dict(bc="robin"), "bc"),
    ("dcdm-filters-wrong-type", "operators.dcdm", "DCDMTrainConfig", dict(filters="many"), "filters"),
    ("dcdm-lr-nan", "operators.dcdm", "DCDMTrainConfig", dict(lr=float("nan")), "lr"),
    ("optimize-unknown-problem", "solvers.optim.config", "OptimizeConfig", dict(problem="hs999"), "unknown problem 'hs999'"),
    ("optimize-unknown-method", "solvers.optim.config", "OptimizeConfig", dict(method="newton"), "method"),
    ("optimize-unknown-sketch", "solvers.optim.config", "OptimizeConfig", dict(sketch="gaussian"), "sketch"),
    ("optimize-tol-nan", "solvers.optim.config", "OptimizeConfig", dict(tol=float("nan")), "tol"),
    ("optimize-max_iter-negative", "solvers.optim.config", "OptimizeConfig", dict(max_iter=-1), "max_iter"),
    ("optimize-n-too-small", "solvers.optim.config", "OptimizeConfig", dict(n=2), "n"),
    ("optimize-max_seconds-0", "solvers.optim.config", "OptimizeConfig", dict(max_seconds=0), "max_seconds"),
]


@pytest.mark.parametrize("module, name, kwargs, text", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_typed_configs_refuse_bad_values_naming_the_field(module, name, kwargs, text):
    with pytest.raises(ValidationError) as err:
        _cfg(module, name)(**kwargs)
    assert text in str(err.value)
    if text in kwargs:
        assert any(text in e["loc"] for e in err.value.errors())


@pytest.mark.parametrize("scale", ["huge", "", "SMOKE", None])
def test_unknown_scale_is_refused(scale):
    from flows.scales import check_scale

    with pytest.raises(ValueError, match=f"scale must be one of .*got {scale!r}"):
        check_scale(scale)


# (id, flow module, flow name, parameters, text the message must contain)
FLOW_CASES = [
    ("generate-negative-n", "flows.generate", "generate_dataset", {"spec": {"family": "darcy", "n": -3}},
     "spec.darcy.n: Input should be greater than or equal to 4"),
    ("generate-unknown-family", "flows.generate", "generate_dataset", {"spec": {"family": "burgers"}},
     "spec: Input tag 'burgers' found using 'family' does not match"),
    ("generate-chunk_size-0", "flows.generate", "generate_dataset", {"chunk_size": 0},
     "chunk_size: Input should be greater than or equal to 1"),
    ("nightly-unknown-scale", "flows.nightly", "nightly_benchmark", {"scale": "huge"},
     "scale: Input should be 'smoke', 'small' or 'paper'"),
    ("bench-linear-unknown-scale", "flows.linear", "benchmark_linear_solvers", {"scale": "paper!"},
     "scale: Input should be 'smoke', 'small' or 'paper'"),
    ("operator-epochs-negative", "flows.operator", "train_operator", {"config": {"epochs": -1}},
     "config.epochs: Input should be greater than or equal to 1"),
    ("operator-dataset-of-another-family", "flows.operator", "train_operator", {"dataset": {"family": "poisson"}},
     "dataset.DarcySpec.family: Input should be 'darcy'"),
    ("hard-unknown-backend", "flows.hard_constraint", "train_hard_constraint", {"config": {"model": {"backend": "qr"}}},
     "config.model.backend: Input should be 'auto', 'cholesky', 'cvxpylayers' or 'lm'"),
    ("optimize-unknown-problem", "flows.optimize", "optimize", {"config": {"problem": "hs999"}},
     "config.problem: Value error, unknown problem 'hs999'"),
    ("dcdm-n-negative", "flows.dcdm", "train_dcdm", {"config": {"n": -8}},
     "config.n: Input should be greater than or equal to 8"),
    ("neural-ode-unknown-task", "flows.neural_ode", "train_neural_ode", {"config": {"task": "mnist"}},
     "config.task: Input should be 'digits'"),
]


@pytest.mark.parametrize("module, name, params, text", [c[1:] for c in FLOW_CASES], ids=[c[0] for c in FLOW_CASES])
def test_flow_parameters_are_validated_at_the_boundary(module, name, params, text):
    """What Prefect checks before a flow run starts (also for a deployment run from the UI)."""
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError) as err:
        _cfg(module, name).validate_parameters(params)
    assert text in str(err.value)


def _stored(tmp: Path):
    return data.generate(DarcySpec(n=8, n_train=2, n_test=1), root=tmp / "store", chunk_size=1, progress=False)


def _ckpt(tmp: Path) -> Path:
    from operators.fno import train

    train(_fno_config(1), _pairs(N=4), checkpoint=tmp / "ck.pt")
    return tmp / "ck.pt"


def _setup_tampered_chunk(tmp):
    spec = DarcySpec(n=8, n_train=2, n_test=0)
    chunks = [data.generate_chunk(spec, "train", i, i + 1, tmp / "store") for i in range(2)]
    with h5py.File(chunks[1].path, "r+") as fh:
        fh["u"][0, 0, 0] += 1.0
    return lambda: data.assemble(spec, chunks, tmp / "store")


def _setup_truncated_split(tmp):
    ref = _stored(tmp)
    f = Path(ref.path) / "train.h5"
    f.write_bytes(f.read_bytes()[:700])
    return lambda: store.head(ref)


def _setup_bad_manifest(tmp):
    ref = _stored(tmp)
    (Path(ref.path) / "manifest.json").write_text("{ not json")
    return lambda: data.load(ref.path)


def _setup_truncated_checkpoint(tmp):
    from operators.fno import train

    ck = _ckpt(tmp)
    ck.write_bytes(ck.read_bytes()[:300])
    return lambda: train(_fno_config(2), _pairs(N=4), checkpoint=ck)


def _setup_foreign_checkpoint(tmp):
    from operators import model_from_checkpoint

    torch.save({"weights": torch.zeros(3)}, tmp / "other.pt")
    return lambda: model_from_checkpoint(tmp / "other.pt")


def _setup_operator_checkpoint_into_hard(tmp):
    from operators import model_from_checkpoint

    ck = _ckpt(tmp)
    pde = __import__("operators.hard.pdes", fromlist=["DiffusionSorption"]).DiffusionSorption(
        t=np.linspace(0.0, 50.0, 6), t_final=50.0, x=(np.arange(12) + 0.5) / 12)
    return lambda: model_from_checkpoint(ck, kind="hard", pde=pde)


def _setup_empty_split(tmp):
    from operators.fno import pairs

    ds = data.Dataset(arrays={"a": np.zeros((0, 8, 8), np.float32), "u": np.zeros((0, 8, 8))}, spec=DarcySpec(n=8),
                      split="test", digest="", path=tmp)
    return lambda: pairs(ds)


def _empty_dcdm_checkpoint(tmp):
    (tmp / "empty.pt").write_bytes(b"")
    return lambda: _cfg("operators", "load_checkpoint")(tmp / "empty.pt")


def _fno_train(x, y, **kw):
    from operators.fno import train

    return lambda tmp: (lambda: train(_fno_config(1), (x, y), checkpoint=tmp / "new.pt", **kw))


_nan = _pairs(N=4)[0].clone()
_nan[1, 0, 3, 3] = float("nan")

# (id, setup(tmp) -> call, exception, regex the message must match)
ENTRY_CASES = [
    ("generate-chunk_size-0", lambda t: lambda: data.generate(DarcySpec(n=8, n_train=2), root=t / "s", chunk_size=0,
                                                              progress=False), ValueError, "chunk_size must be >= 1"),
    ("generate-negative-size", lambda t: lambda: data.generate({"family": "darcy", "n": -1}, root=t / "s"),
     ValidationError, "n\n.*greater than or equal to 4"),
    ("generate-unknown-family", lambda t: lambda: data.generate({"family": "burgers"}, root=t / "s"), ValueError,
     "unknown PDE family 'burgers'"),
    ("chunk-unknown-split", lambda t: lambda: data.generate_chunk(DarcySpec(n=8, n_train=2), "validation", 0, 1, t / "s"),
     ValueError, "validation.*outside the spec's splits"),
    ("assemble-chunk-digest-mismatch", _setup_tampered_chunk, data.DatasetError, "does not match its digest"),
    ("load-truncated-hdf5-preview", _setup_truncated_split, data.DatasetError, "unreadable"),
    ("load-manifest-not-json", _setup_bad_manifest, data.DatasetError, "is not valid JSON"),
    ("load-missing-dataset", lambda t: lambda: data.load(t / "nowhere"), data.DatasetError, "manifest.json is missing"),
    ("operator-pairs-empty-split", _setup_empty_split, ValueError, "'test' split is empty"),
    ("operator-train-empty-data", _fno_train(torch.zeros(0, 1, 16, 16), torch.zeros(0, 1, 16, 16)), ValueError,
     "train data are empty"),
    ("operator-train-empty-test-data", _fno_train(*_pairs(N=4), test_xy=(torch.zeros(0, 1, 16, 16),) * 2), ValueError,
     "test data are empty"),
    ("operator-train-mismatched-N", _fno_train(torch.zeros(4, 1, 16, 16), torch.zeros(3, 1, 16, 16)), ValueError,
     "equal N"),
    ("operator-train-missing-channel-axis", _fno_train(torch.zeros(4, 16, 16), torch.zeros(4, 16, 16)), ValueError,
     r"\(N, C, n, n\)"),
    ("operator-train-nan-input", _fno_train(_nan, _pairs(N=4)[1]), "TrainingDivergedError",
     "non-finite training loss.*epoch 1"),
    ("operator-resume-truncated-checkpoint", _setup_truncated_checkpoint, "CheckpointMismatchError",
     "unreadable checkpoint"),
    ("operator-foreign-checkpoint", _setup_foreign_checkpoint, "CheckpointMismatchError",
     r"not a sciflow training checkpoint \(missing \['kind', 'config', 'model'\]\)"),
    ("hard-model-from-operator-checkpoint", _setup_operator_checkpoint_into_hard, "CheckpointMismatchError",
     "holds a 'operator' model, not a 'hard' one"),
    ("dcdm-missing-checkpoint", lambda t: lambda: _cfg("operators", "load_checkpoint")(t / "none.pt"),
     FileNotFoundError, "no checkpoint at"),
    ("dcdm-empty-checkpoint", lambda t: _empty_dcdm_checkpoint(t), ValueError, "unreadable"),
    ("dcdm-odd-grid", lambda t: lambda: _cfg("operators.dcdm", "train")(
        _cfg("operators.dcdm", "DCDMTrainConfig")(n=9, ritz_m=8, n_samples=8, epochs=1), checkpoint=t / "d.pt"),
     ValueError, "n must be even"),
    ("linear-rhs-inf", lambda t: lambda: _solve(np.r_[1.0, np.inf, 1.0, 1.0]), ValueError, "b contains NaN or inf"),
    ("linear-rhs-strings", lambda t: lambda: _solve(np.array(list("abcd"))), ValueError, "could not convert string"),
    ("linear-rhs-wrong-size", lambda t: lambda: _solve(np.ones(5)), ValueError, "b has 5 entries"),
    ("linear-matrix-nan", lambda t: lambda: _solve(np.ones(4), A=np.diag([np.nan, 1.0, 1.0, 1.0])), ValueError, "the matrix A contains NaN"),
    ("linear-tol-nan", lambda t: lambda: _solve(np.ones(4), tol=float("nan")), ValueError, "tol must be in"),
    ("linear-unknown-method", lambda t: lambda: _solve(np.ones(4), method="gmres"), ValueError,
     "unknown method 'gmres'"),
]


def _solve(b, A=None, **kw):
    import scipy.sparse as sp

    from solvers.linear import solve

    return solve(sp.csr_matrix(A) if A is not None else sp.eye(4, format="csr"), b, **kw)


@pytest.mark.parametrize("setup, exc, match", [c[1:] for c in ENTRY_CASES], ids=[c[0] for c in ENTRY_CASES])
def test_entry_points_refuse_bad_input_clearly_and_write_nothing(tmp_path, setup, exc, match):
    if isinstance(exc, str):
        exc = _cfg("operators.fno", exc)
    call = setup(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(exc, match=match):
        call()
    assert _files(tmp_path) == before, "a bad input left (partial) output behind or altered an existing file"


def test_a_truncated_chunk_is_regenerated_not_trusted(tmp_path):
    spec = DarcySpec(n=8, n_train=2, n_test=0)
    ref = data.generate_chunk(spec, "train", 0, 2, tmp_path)
    Path(ref.path).write_bytes(Path(ref.path).read_bytes()[:400])
    again = data.generate_chunk(spec, "train", 0, 2, tmp_path)
    assert again.digest == ref.digest and store_digest_ok(Path(again.path))


def store_digest_ok(path: Path) -> bool:
    arrays, attrs = hdf5.read_h5(path)
    return hdf5.array_digest(arrays) == attrs["sha256"]


def test_retry_policy_retries_transient_errors_and_fails_fast_on_permanent_ones():
    """The generate-chunk task's retry classification (the flow-level proof that a diverged solve
    runs once is tests/test_flows.py::test_failed_solve_fails_the_run_and_writes_nothing)."""
    from types import SimpleNamespace

    from flows.generate import _transient, generate_chunk
    from flows.tracking import TrackingUnavailableError

    assert generate_chunk.retries == 2 and generate_chunk.retry_delay_seconds == [2, 10]  # backoff
    transient = [OSError(errno.EIO, "Input/output error"), ConnectionResetError(), TimeoutError(),
                 TrackingUnavailableError("MLflow tracking server at http://127.0.0.1:5000 is not reachable")]
    permanent = [data.SolverDivergedError("KSP DIVERGED_ITS"), data.DatasetError("corrupted"), ValueError("bad n"),
                 TypeError("wrong type")]
    for exc in transient:
        assert _transient(None, None, SimpleNamespace(data=exc)), exc
    for exc in permanent:
        assert not _transient(None, None, SimpleNamespace(data=exc)), exc


def test_gaps_found_by_the_suite_are_closed():
    import scipy.sparse as sp
    from types import SimpleNamespace

    from flows.generate import _transient
    from operators.dcdm.train import DCDMTrainConfig
    from solvers.linear import solve
    from operators.node.train import ODETrainConfig

    A = sp.diags([2.0] * 5).tocsr()
    with pytest.raises(ValueError, match="maxiter must be >= 1"):
        solve(A, np.ones(5), maxiter=-1)
    with pytest.raises(ValueError, match="x0 .* NaN or inf"):
        solve(A, np.ones(5), x0=np.full(5, np.nan))
    with pytest.raises(ValueError, match="n must be even"):
        DCDMTrainConfig(n=33)
    with pytest.raises(ValueError, match="w_start"):
        ODETrainConfig(w_start=float("inf"))
    assert not _transient(None, None, SimpleNamespace(data=OSError(errno.ENOSPC, "No space left on device")))

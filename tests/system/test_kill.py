"""SIGKILL during data generation and during training: the rerun recovers (figures printed with ``pytest -s``; docs/reliability.md records them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import data
from data import hdf5, store
from data import io as dio
from data.pdes import darcy
from data.spec import DarcySpec

from helpers import SMALL, fno_config, fno_pairs, temporaries

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-work, measured recovery


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_generation_loses_at_most_one_chunk_and_recovers(tmp_path, monkeypatch):
    """Kill the generating process by PID mid-run; the rerun solves only the missing samples and
    yields bit-for-bit the dataset of an uninterrupted run."""
    spec, chunk = DarcySpec(n=96, n_train=48, n_test=0, seed=9), 4
    n_chunks = spec.n_train // chunk
    root = tmp_path / "killed"
    proc = _spawn(
        f"import data; from data.spec import DarcySpec; "
        f"data.generate(DarcySpec(n=96, n_train=48, n_test=0, seed=9), root={str(root)!r}, chunk_size={chunk}, progress=False)"
    )
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
    litter = temporaries(root)  # a SIGKILL mid-write can leave a hidden temporary, never a real name

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
    assert temporaries(root) == []  # the rerun swept the killed writer's litter
    print(
        f"\n[reliability] generation SIGKILL: {len(done)}/{n_chunks} chunks done at the kill; rerun reused "
        f"{chunk * len(done)}/{spec.n_train} samples and re-solved {sum(solved)} (at most one chunk in flight lost); "
        f"recovery run {recovery:.2f} s vs uninterrupted {full:.2f} s; hidden temporaries left: {len(litter)}"
    )


def test_litter_of_killed_writers_is_swept_and_nothing_else(tmp_path):
    """A killed writer's temporary (its PID gone) is removed by the next write in that folder; a
    live writer's temporary, an old one from another host, and unrelated files are handled as
    documented in ``dio.sweep_temporaries``."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final = tmp_path / "train.h5"
    killed = dio.temporary_name(final).with_name(
        dio.temporary_name(final).name.replace(f".{os.getpid()}.", f".{dead.pid}.")
    )
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
        f"train(cfg, (x, y), checkpoint={str(ckpt)!r}, on_epoch=lambda e, r: time.sleep(0.1))\n"
    )
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
    _, hist = train(fno_config(epochs), fno_pairs(), checkpoint=ckpt)
    resume = time.perf_counter() - t0
    assert [h["epoch"] for h in hist] == list(range(1, epochs + 1))
    _, ref = train(fno_config(epochs), fno_pairs())
    assert hist[-1]["loss"] == pytest.approx(ref[-1]["loss"], rel=1e-5)  # same as never interrupted
    print(
        f"\n[reliability] training SIGKILL: {at_kill}/{epochs} epochs checkpointed at the kill, 0 finished epochs "
        f"lost; resuming the remaining {epochs - at_kill} epochs took {resume:.2f} s; "
        f"hidden temporaries left: {len(temporaries(tmp_path))}"
    )

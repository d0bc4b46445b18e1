"""Dataset store: round trips, chunk independence, cache hits, atomic writes, digests."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import data
from data import hdf5
from data.pdes import darcy, poisson
from data.pdes.grid import fv_operator
from data.spec import DarcySpec, HeatSpec, LotkaVolterraSpec, PoissonSpec


def _condition(A) -> float:
    """2-norm condition number of a small sparse SPD matrix on its range."""
    ev = np.linalg.eigvalsh(A.toarray())
    ev = ev[np.abs(ev) > 1e-9 * ev.max()]
    return ev.max() / ev.min()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "spec, arrays",
    [
        (PoissonSpec(n=8, n_train=3, n_test=1, obstacle="box"), {"b", "x", "mask", "A_data", "A_indices", "A_indptr"}),
        (DarcySpec(n=8, n_train=3, n_test=1), {"a", "u"}),
        (HeatSpec(n=8, dim=2, n_train=2, n_test=1, n_times=3), {"u", "t"}),
        (LotkaVolterraSpec(n_train=2, n_test=1, n_times=4), {"u", "t"}),
    ],
)
def test_generate_and_load_round_trip(store, spec, arrays):
    ref = data.generate(spec, root=store, progress=False)
    assert len(ref.digest) == 64 and Path(ref.path).name.startswith(spec.family)
    train = data.load(ref)
    assert set(train.arrays) == arrays and train.spec == spec
    manifest = json.loads((Path(ref.path) / "manifest.json").read_text())
    assert manifest["digest"] == ref.digest and set(manifest["files"]) == {"train.h5", "test.h5"}
    assert manifest["versions"]["petsc"].startswith("3.")
    with h5py.File(Path(ref.path) / "train.h5") as fh:
        assert json.loads(fh.attrs["spec"])["family"] == spec.family
    assert (
        data.load(ref, split="test")
        .arrays[next(iter(arrays - {"mask", "A_data", "A_indices", "A_indptr", "t"}))]
        .shape[0]
        == spec.n_test
    )


def test_solutions_satisfy_the_pde(store):
    ref = data.generate(PoissonSpec(n=12, n_train=2, n_test=0, obstacle="disks"), root=store, progress=False)
    ds = data.load(ref)
    A = poisson.load_matrix(ds.arrays)
    rtol = float(PoissonSpec().solver_options()["ksp_rtol"])  # 1e-10, unpreconditioned residual norm
    for b, x in zip(
        ds["b"], ds["x"], strict=False
    ):  # the KSP's residual is the recursive one: 10x for its drift (measured 4.5e-11)
        assert np.linalg.norm(A @ x.ravel() - b.ravel()) <= 10 * rtol * np.linalg.norm(b)
    d = data.load(data.generate(DarcySpec(n=12, n_train=2, n_test=0), root=store, progress=False))
    a = d["a"][1].astype(float)  # thresholded to {3, 12}: exact in the stored float32
    ref = darcy.solve(a, 1.0)
    # both solves meet rtol on the residual, so each is within cond(A) rtol of the exact discrete
    # solution: 2 cond rtol apart (cond 1.3e2 here: 2.6e-8; measured 1.5e-12)
    assert np.linalg.norm(d["u"][1] - ref) <= 2 * _condition(fv_operator(a)) * rtol * np.linalg.norm(ref)


@pytest.mark.parametrize(
    "spec",
    [
        DarcySpec(n=8, n_train=5, n_test=2),
        HeatSpec(n=8, n_train=5, n_test=0, n_times=3),
        PoissonSpec(n=8, n_train=5, n_test=0),
    ],
    ids=["darcy", "heat", "poisson"],
)
def test_data_are_reproducible_and_chunking_changes_only_solver_noise(tmp_path, spec):
    a = data.generate(spec, root=tmp_path / "a", chunk_size=1, progress=False)
    b = data.generate(spec, root=tmp_path / "b", chunk_size=4, progress=False)
    c = data.generate(spec, root=tmp_path / "c", chunk_size=4, progress=False)
    assert b.digest == c.digest  # same spec and chunking: bit for bit
    da, db = data.load(a), data.load(b)
    # Solver noise only (a KSP reused across a chunk keeps GAMG's first prolongator): each solve meets
    # ksp_rtol, so two groupings differ by <= 2 cond rtol, relative in the 2-norm. The n = 8 operators
    # have cond <= 64 (Darcy, a in {3, 12}) and 26 (Poisson); heat's Crank-Nicolson matrices are
    # near the identity (rtol 1e-12). 2 x 1e2 x rtol; measured 4.4e-12 (Darcy u), 0 for the rest.
    rtol = float(spec.solver_options()["ksp_rtol"])
    for name, arr in da.arrays.items():
        diff = np.asarray(db[name], dtype=np.float64) - np.asarray(arr, dtype=np.float64)
        assert np.linalg.norm(diff) <= 2 * 1e2 * rtol * np.linalg.norm(np.asarray(arr, dtype=np.float64)), name


def test_second_generate_does_no_petsc_work(store, monkeypatch):
    spec = DarcySpec(n=8, n_train=4, n_test=0)
    first = data.generate(spec, root=store, chunk_size=2, progress=False)

    def boom(*a, **k):
        raise AssertionError("PETSc work on a cached spec")

    monkeypatch.setattr(darcy, "sample_arrays", boom)
    assert data.generate(spec, root=store, chunk_size=2, progress=False) == first
    # the split files gone, the chunk cache still serves every sample
    for f in Path(first.path).iterdir():
        f.unlink()
    assert data.generate(spec, root=store, chunk_size=2, progress=False).digest == first.digest


def test_failed_write_leaves_no_file_and_keeps_the_previous(tmp_path):
    target = tmp_path / "x.h5"
    hdf5.write_h5(target, {"v": np.arange(3.0)}, {})
    good = target.read_bytes()
    with pytest.raises(TypeError):
        hdf5.write_h5(target, {"v": np.arange(3.0), "bad": np.array([object()])}, {})
    assert target.read_bytes() == good
    assert _files(tmp_path) == ["x.h5"]  # no temporary left behind


def test_divergence_writes_no_dataset(store):
    spec = DarcySpec(n=16, n_train=3, n_test=0, petsc_options={"pc_type": "none", "ksp_max_it": "1"})
    with pytest.raises(data.SolverDivergedError, match="DIVERGED"):
        data.generate(spec, root=store, progress=False)
    assert data.find(spec, root=store) is None
    assert not any(p.suffix == ".h5" for p in Path(store).rglob("*"))


def test_corruption_is_detected(store):
    ref = data.generate(DarcySpec(n=8, n_train=2, n_test=0), root=store, progress=False)
    path = Path(ref.path) / "train.h5"
    with h5py.File(path, "r+") as fh:
        fh["u"][0, 0, 0] += 1.0
    with pytest.raises(data.DatasetError, match="corrupted: SHA-256"):
        data.load(ref)
    path.write_bytes(path.read_bytes()[:500])  # truncated
    with pytest.raises(data.DatasetError, match="unreadable"):
        data.load(ref)


def test_missing_and_mismatched_datasets(store):
    with pytest.raises(data.DatasetError, match="manifest.json is missing"):
        data.load(store / "nope")
    ref = data.generate(DarcySpec(n=8, n_train=2, n_test=0), root=store, progress=False)
    with pytest.raises(data.DatasetError, match="has no split 'test'"):
        data.load(ref, split="test")
    wrong = ref.model_copy(update={"digest": "0" * 64})
    with pytest.raises(data.DatasetError, match="reference expects 000000000000"):
        data.load(wrong)


def test_chunk_outside_the_spec_is_refused(store):
    with pytest.raises(data.InputError, match="outside the spec's splits"):
        data.generate_chunk(DarcySpec(n=8, n_train=2), "train", 1, 5, store)
    with pytest.raises(data.InputError, match="chunk_size must be >= 1, got 0"):
        data.plan_chunks(DarcySpec(n=8), 0)
    with pytest.raises(data.InputError, match="needs a 'path' key"):
        data.load({"digest": "0" * 64})
    with pytest.raises(data.DatasetError, match="do not cover"):
        spec = DarcySpec(n=8, n_train=4, n_test=0)
        data.assemble(spec, [data.generate_chunk(spec, "train", 0, 2, store)], store)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrays=st.dictionaries(
        st.text("abcdefgh_", min_size=1, max_size=6),
        st.tuples(st.sampled_from(["<f4", "<f8", "<i8", "|u1"]), st.lists(st.integers(0, 4), min_size=0, max_size=3)),
        min_size=1,
        max_size=4,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_h5_round_trip_preserves_arrays_and_digest(tmp_path, arrays, seed):
    rng = np.random.default_rng(seed)
    arrs = {k: (rng.standard_normal(shape) * 100).astype(dt) for k, (dt, shape) in arrays.items()}
    path = tmp_path / f"rt-{seed}.h5"
    digest = hdf5.write_h5(path, arrs, {"note": "x"})
    back, attrs = hdf5.read_h5(path)
    assert attrs["sha256"] == digest == hdf5.array_digest(back)
    for k, v in arrs.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)


def test_one_state_root_for_the_store_and_the_flows(tmp_path, monkeypatch):
    from flows.settings import sciflow_home

    monkeypatch.setenv("SCIFLOW_HOME", str(tmp_path / "state"))
    assert data.home() == sciflow_home() == (tmp_path / "state").resolve()
    assert data.store.dataset_dir(DarcySpec(n=8)).is_relative_to(tmp_path / "state" / "datasets")
    # unset: an absolute default that does not depend on the working directory
    monkeypatch.delenv("SCIFLOW_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("SCIFLOW_CONFIG", str(tmp_path / "no-such-config.toml"))
    monkeypatch.chdir(tmp_path)
    assert data.home() == sciflow_home() == tmp_path / "xdg" / "sciflow"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert data.home() == tmp_path / "user" / ".local" / "share" / "sciflow"

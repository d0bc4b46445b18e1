"""The dataset store: specs -> datasets by chunked generation, manifests, find and verified loads.

Layout under the store root (:func:`data.paths.home`: ``$SCIFLOW_HOME``, default ``~/.local/share/sciflow``)::

    datasets/<family>-<spec hash[:16]>/
        train.h5, test.h5      one file per split; arrays + attrs (spec JSON, axes, digest)
        manifest.json          spec, shapes, dtypes, SHA-256 per split and overall, versions
    chunks/<spec hash[:16]>/<split>-<start>-<stop>.h5    cached chunks (inputs of the splits)

Every file is written to a temporary name in the same folder, fsynced, then renamed, so a crash
never leaves a partial file under a real name. A dataset exists iff its manifest does (the
manifest is written last). Sample ``i`` of split ``s`` is drawn from ``SeedSequence([seed, s, i])``,
so the data do not depend on how generation was chunked.

The file format (:mod:`data.hdf5`), atomic writes (:mod:`data.io`), the store root
(:mod:`data.paths`) and the recorded versions (:mod:`data.provenance`) live in their own modules.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict

from .errors import DatasetError, InputError
from .hdf5 import DigestEntry, array_bytes, array_digest, array_sha256, combine_digests, read_h5, write_h5
from .io import atomic_path, sweep_temporaries
from .paths import home
from .pdes import family_module
from .provenance import package_versions
from .spec import GENERATOR_VERSION, PDESpec, canonical_json, parse_spec, spec_hash

SPLIT_IDS = {"train": 0, "test": 1}
MANIFEST = "manifest.json"
DEFAULT_CHUNK_SIZE = 16


class DatasetRef(BaseModel):
    """What tasks pass around instead of arrays: where a dataset is and what it must hash to."""

    model_config = ConfigDict(frozen=True)

    path: str
    digest: str
    family: str
    spec_hash: str


class ChunkRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    digest: str
    split: str
    start: int
    stop: int


@dataclass
class Dataset:
    """One loaded split: ``arrays`` (name -> ndarray), the validated ``spec`` and the file attrs."""

    arrays: dict[str, np.ndarray]
    spec: PDESpec
    split: str
    digest: str
    path: Path

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


Root = str | os.PathLike | None


def dataset_dir(spec: PDESpec, root: Root = None) -> Path:
    """The folder of ``spec``'s dataset under ``root`` (default :func:`data.paths.home`)."""
    base = Path(root) if root is not None else home()
    return base / "datasets" / f"{spec.family}-{spec_hash(spec)[:16]}"


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# chunks


def plan_chunks(spec: PDESpec, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[tuple[str, int, int]]:
    """``(split, start, stop)`` for every chunk of every split."""
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    return [
        (split, start, min(start + chunk_size, n))
        for split, n in spec.splits.items()
        for start in range(0, n, chunk_size)
    ]


def sample_rngs(spec: PDESpec, split: str, start: int, stop: int) -> list[np.random.Generator]:
    """One generator per sample ``start:stop`` of ``split``, seeded by ``(spec.seed, split, i)``."""
    return [np.random.default_rng(np.random.SeedSequence([spec.seed, SPLIT_IDS[split], i])) for i in range(start, stop)]


def single_threaded_blas() -> Any:
    """Limit BLAS/OpenMP pools to one thread: sequential PETSc gains nothing from them, and
    their spinning threads compete with the solver for the cores."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def chunk_path(spec: PDESpec, split: str, start: int, stop: int, root: Root = None) -> Path:
    """The cache file of samples ``start:stop`` of ``split``."""
    base = Path(root) if root is not None else home()
    return base / "chunks" / spec_hash(spec)[:16] / f"{split}-{start:07d}-{stop:07d}.h5"


def generate_chunk(
    spec: PDESpec | Mapping[str, Any] | str, split: str, start: int, stop: int, root: Root = None
) -> ChunkRef:
    """Solve samples ``start:stop`` of ``split`` with PETSc and store them as a chunk file.

    An existing chunk file whose digest verifies is reused (no PETSc work).
    """
    spec = parse_spec(spec)
    if split not in spec.splits or not (0 <= start < stop <= spec.splits[split]):
        raise InputError(f"chunk {split}[{start}:{stop}] is outside the spec's splits {spec.splits}")
    path = chunk_path(spec, split, start, stop, root)
    sweep_temporaries(path.parent)  # litter of a killed earlier attempt
    if path.exists():
        try:
            arrays, attrs = read_h5(path)
            if array_digest(arrays) == attrs.get("sha256"):
                return ChunkRef(path=str(path), digest=attrs["sha256"], split=split, start=start, stop=stop)
        except DatasetError:
            pass  # unreadable: regenerate below
    with single_threaded_blas():
        arrays = family_module(spec.family).sample_arrays(spec, sample_rngs(spec, split, start, stop))
    digest = write_h5(path, arrays, {"spec": canonical_json(spec), "split": split}, durable=False)
    return ChunkRef(path=str(path), digest=digest, split=split, start=start, stop=stop)


# ---------------------------------------------------------------------------------------------
# datasets


def _write_split(
    path: Path, parts: list[ChunkRef], n: int, shared: Mapping[str, np.ndarray], attrs: Mapping[str, str]
) -> tuple[str, dict[str, tuple[str, tuple[int, ...]]]]:
    """Stream verified chunks into one split file (no concatenated copy in memory); returns
    the file's digest and ``{name: (dtype, shape)}``."""
    entries: dict[str, DigestEntry] = {}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as fh:
        hashers: dict[str, hashlib._Hash] = {}
        offset = 0
        for c in parts:
            arrays, _ = read_h5(Path(c.path))
            if array_digest(arrays) != c.digest:
                raise DatasetError(f"chunk {c.path} does not match its digest {c.digest[:12]}")
            for name, arr in arrays.items():
                if name not in hashers:
                    fh.create_dataset(name, shape=(n, *arr.shape[1:]), dtype=arr.dtype)
                    hashers[name] = hashlib.sha256()
                fh[name][offset : offset + arr.shape[0]] = arr
                hashers[name].update(array_bytes(arr))
            offset += c.stop - c.start
        for name, h in hashers.items():
            entries[name] = (fh[name].dtype.str, fh[name].shape, h.hexdigest())
        for name, arr in shared.items():
            fh.create_dataset(name, data=arr)
            entries[name] = (arr.dtype.str, arr.shape, array_sha256(arr).hexdigest())
        digest = combine_digests(entries)
        for key, value in {**attrs, "sha256": digest}.items():
            fh.attrs[key] = value
    return digest, {k: (v[0], v[1]) for k, v in entries.items()}


def assemble(spec: PDESpec | Mapping[str, Any] | str, chunks: Iterable[ChunkRef], root: Root = None) -> DatasetRef:
    """Concatenate verified chunks into one HDF5 file per split and write the manifest last."""
    spec = parse_spec(spec)
    out_dir = dataset_dir(spec, root)
    sweep_temporaries(out_dir)
    module = family_module(spec.family)
    shared = module.shared_arrays(spec)
    files: dict[str, dict[str, Any]] = {}
    for split, n in spec.splits.items():
        parts = sorted((c for c in chunks if c.split == split), key=lambda c: c.start)
        covered = [(c.start, c.stop) for c in parts]
        if (
            not parts
            or parts[0].start != 0
            or parts[-1].stop != n
            or any(a[1] != b[0] for a, b in itertools.pairwise(covered))
        ):
            raise DatasetError(f"chunks for split {split!r} do not cover 0..{n}: {covered}")
        attrs = {
            "spec": canonical_json(spec),
            "family": spec.family,
            "split": split,
            "axes": json.dumps(module.AXES),
            "generator_version": str(GENERATOR_VERSION),
        }
        digest, shapes = _write_split(out_dir / f"{split}.h5", parts, n, shared, attrs)
        files[f"{split}.h5"] = {
            "sha256": digest,
            "n_samples": n,
            "arrays": {k: {"shape": list(shape), "dtype": dtype} for k, (dtype, shape) in shapes.items()},
        }
    overall = hashlib.sha256("".join(f"{k}:{v['sha256']}" for k, v in sorted(files.items())).encode()).hexdigest()
    manifest = {
        "spec": json.loads(canonical_json(spec)),
        "spec_hash": spec_hash(spec),
        "family": spec.family,
        "digest": overall,
        "files": files,
        "axes": module.AXES,
        "versions": package_versions(),
        "generator_version": GENERATOR_VERSION,
    }
    _write_json(out_dir / MANIFEST, manifest)
    return DatasetRef(path=str(out_dir), digest=overall, family=spec.family, spec_hash=spec_hash(spec))


def find(spec: PDESpec | Mapping[str, Any] | str, root: Root = None) -> DatasetRef | None:
    """The stored dataset for ``spec`` if its manifest exists and names every split file."""
    spec = parse_spec(spec)
    out_dir = dataset_dir(spec, root)
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("spec_hash") != spec_hash(spec):
        return None
    if not all((out_dir / name).exists() for name in manifest.get("files", {})):
        return None
    return DatasetRef(path=str(out_dir), digest=manifest["digest"], family=spec.family, spec_hash=spec_hash(spec))


def generate(
    spec: PDESpec | Mapping[str, Any] | str,
    root: Root = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool | Callable[[int, int], None] = True,
) -> DatasetRef:
    """Generate (or find) the dataset for ``spec``: PETSc solves per chunk, then assembly.

    Args:
        spec: a spec model or a dict with ``family``.
        root: store root (default :func:`data.paths.home`).
        chunk_size: samples per chunk (chunks are the unit of caching and of parallel work).
        progress: True for a console progress bar, or a callback ``(done, total)``.

    Returns:
        DatasetRef with the dataset folder and its overall SHA-256 digest. A stored dataset
        (same spec hash) is returned without any PETSc work.
    """
    spec = parse_spec(spec)
    found = find(spec, root)
    if found is not None:
        return found
    plan = plan_chunks(spec, chunk_size)
    total = sum(stop - start for _, start, stop in plan)
    bar: Any = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{spec.family} samples", unit="sample")
    chunks: list[ChunkRef] = []
    done = 0
    try:
        for split, start, stop in plan:
            chunks.append(generate_chunk(spec, split, start, stop, root))
            done += stop - start
            if bar is not None:
                bar.update(stop - start)
            elif callable(progress):
                progress(done, total)
    finally:
        if bar is not None:
            bar.close()
    return assemble(spec, chunks, root)


PathOrRef = DatasetRef | Mapping[str, Any] | str | os.PathLike


def head(path_or_ref: PathOrRef, split: str = "train", n: int = 3) -> Dataset:
    """The first ``n`` samples of a split, read without the digest check (previews, plots).

    Per-sample arrays (those whose axes start with ``sample``) are sliced; shared ones are whole.
    """
    path, _ = _resolve(path_or_ref)
    manifest = json.loads((path / MANIFEST).read_text())
    file = path / f"{split}.h5"
    try:
        with h5py.File(file, "r") as fh:
            axes = manifest.get("axes", {})
            arrays = {k: (fh[k][:n] if str(axes.get(k, "")).startswith("sample") else fh[k][()]) for k in fh}
    except OSError as exc:
        raise DatasetError(f"dataset file {file} is unreadable: {exc}") from exc
    spec = parse_spec(manifest["spec"])
    return Dataset(arrays=arrays, spec=spec, split=split, digest=manifest["files"][f"{split}.h5"]["sha256"], path=path)


def _resolve(path_or_ref: PathOrRef) -> tuple[Path, str | None]:
    if isinstance(path_or_ref, DatasetRef):
        return Path(path_or_ref.path), path_or_ref.digest
    if isinstance(path_or_ref, Mapping):
        if "path" in path_or_ref:
            return Path(path_or_ref["path"]), path_or_ref.get("digest")
        raise InputError(
            f"path_or_ref: a mapping needs a 'path' key (a DatasetRef as a dict), got keys {sorted(path_or_ref)}"
        )
    return Path(path_or_ref), None


def load(path_or_ref: PathOrRef, split: str = "train", verify: bool = True) -> Dataset:
    """Load one split of a stored dataset, verifying its SHA-256 against the manifest (and
    against the ref's digest when given a :class:`DatasetRef`).

    Raises:
        DatasetError: missing folder/manifest/split, unreadable file, or digest mismatch.
    """
    path, expected = _resolve(path_or_ref)
    if path.is_file() and path.suffix == ".h5":
        path, split = path.parent, path.stem
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise DatasetError(f"no dataset at {path}: {MANIFEST} is missing (generate it first)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise DatasetError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if expected is not None and manifest.get("digest") != expected:
        raise DatasetError(
            f"dataset at {path} has digest {str(manifest.get('digest'))[:12]}, the reference expects {expected[:12]}"
        )
    entry = manifest.get("files", {}).get(f"{split}.h5")
    if entry is None:
        raise DatasetError(f"dataset at {path} has no split {split!r}; it has {sorted(manifest.get('files', {}))}")
    arrays, attrs = read_h5(path / f"{split}.h5")
    if verify:
        actual = array_digest(arrays)
        if actual != entry["sha256"]:
            raise DatasetError(
                f"{path / (split + '.h5')} is corrupted: SHA-256 {actual[:12]} != manifest {entry['sha256'][:12]}"
            )
    return Dataset(arrays=arrays, spec=parse_spec(manifest["spec"]), split=split, digest=entry["sha256"], path=path)

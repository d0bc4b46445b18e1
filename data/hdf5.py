"""The dataset file format: numeric arrays in one HDF5 file, with string attributes and a digest.

A file holds named numeric arrays (dtype kinds :data:`NUMERIC_KINDS`; never objects, strings or
opaque data, so reading one never deserialises a Python object) and string attributes, among them
``sha256``, the :func:`array_digest` of its arrays. :func:`write_h5` writes through
:func:`data.io.atomic_path` (a crash never leaves a partial file under the real name);
:func:`read_h5` refuses unreadable files and non-numeric arrays with :class:`DatasetError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from .errors import DatasetError, InputError
from .io import atomic_path

#: dtype kinds an array in a dataset file may have: bool, signed / unsigned int, float, complex
NUMERIC_KINDS = "biufc"


class NonNumericArrayError(InputError, TypeError):
    """An array with a non-numeric dtype (object, string, ...) given to :func:`write_h5`; also a
    ``TypeError``, as it was before the error family."""


#: one array's digest entry: ``(dtype string, shape, SHA-256 hex of its C-order bytes)``
DigestEntry = tuple[str, tuple[int, ...], str]


def combine_digests(entries: Mapping[str, DigestEntry]) -> str:
    """SHA-256 over the names in sorted order, each ``name|dtype|shape|sha;`` (see :func:`array_digest`)."""
    h = hashlib.sha256()
    for name in sorted(entries):
        dtype, shape, sha = entries[name]
        h.update(f"{name}|{dtype}|{tuple(shape)}|{sha};".encode())
    return h.hexdigest()


def array_bytes(arr: np.ndarray) -> memoryview:
    """The array's bytes in C order, as a flat byte view (no copy when ``arr`` is contiguous)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data


def array_sha256(arr: np.ndarray) -> hashlib._Hash:
    """A ``hashlib`` SHA-256 object fed with the array's C-order bytes (update it with
    :func:`array_bytes` of further slices to hash an array written in parts)."""
    return hashlib.sha256(array_bytes(arr))


def array_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of a set of named arrays: over the names in order, each ``name|dtype|shape|``
    and the SHA-256 of the array's C-order bytes (so arrays written in slices hash alike)."""
    return combine_digests({k: (v.dtype.str, v.shape, array_sha256(v).hexdigest()) for k, v in arrays.items()})


def write_h5(path: Path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, str], durable: bool = True) -> str:
    """Atomically write ``arrays`` (+ ``attrs``, + the digest) to an HDF5 file; return the digest.

    Raises:
        NonNumericArrayError: an array has a non-numeric dtype (nothing is written).
    """
    for name, arr in arrays.items():
        if np.asarray(arr).dtype.kind not in NUMERIC_KINDS:
            raise NonNumericArrayError(
                f"array {name!r} has non-numeric dtype {np.asarray(arr).dtype}; datasets hold numeric arrays only"
            )
    digest = array_digest(arrays)
    with atomic_path(path, durable) as tmp, h5py.File(tmp, "w") as fh:
        for name, arr in arrays.items():
            fh.create_dataset(name, data=arr)
        for key, value in {**attrs, "sha256": digest}.items():
            fh.attrs[key] = value
    return digest


def read_h5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and attributes of a dataset file (no digest check: compare
    :func:`array_digest` of the arrays with ``attrs["sha256"]``).

    Raises:
        DatasetError: the file is missing, unreadable (truncated, not HDF5) or holds a
            non-numeric array.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    try:
        with h5py.File(path, "r") as fh:
            arrays = {name: fh[name][()] for name in fh}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fh.attrs.items()}
    except (OSError, KeyError) as exc:
        raise DatasetError(f"dataset file {path} is unreadable (truncated or not HDF5): {exc}") from exc
    for name, arr in arrays.items():
        if arr.dtype.kind not in NUMERIC_KINDS:  # object / string / opaque / compound: never a dataset array
            raise DatasetError(
                f"dataset file {path}: array {name!r} has non-numeric dtype {arr.dtype} (kind {arr.dtype.kind!r}); "
                "datasets hold numeric arrays only"
            )
    return arrays, attrs


__all__ = [
    "NUMERIC_KINDS",
    "DigestEntry",
    "NonNumericArrayError",
    "array_bytes",
    "array_digest",
    "array_sha256",
    "combine_digests",
    "read_h5",
    "write_h5",
]

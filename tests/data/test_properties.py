"""Property-based tests (hypothesis): every family's spec validator and the dataset round trip."""

from __future__ import annotations

import json
import math
import tempfile
import typing
from pathlib import Path

import h5py
import numpy as np
import pytest
from annotated_types import Ge, Gt, Le, Lt
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import data
from data import hdf5
from data.spec import FAMILIES, DarcySpec, canonical_json, parse_spec, spec_hash

ROOT = Path(__file__).resolve().parents[2]


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
        return st.floats(
            lo,
            hi,
            exclude_min=lo_strict and lo is not None,
            exclude_max=hi_strict and hi is not None,
            allow_nan=False,
            allow_infinity=False,
        )
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

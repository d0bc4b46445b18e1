"""The three scales every benchmark and the nightly flow accept, and the check for per-scale tables."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeVar

from data.errors import InputError

Scale = Literal["smoke", "small", "paper"]
SCALES: tuple[str, ...] = ("smoke", "small", "paper")

T = TypeVar("T")


def check_scale(scale: str) -> str:
    """``scale`` if it is one of :data:`SCALES`, else an :class:`~data.errors.InputError` naming it."""
    if scale not in SCALES:
        raise InputError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def per_scale(table: Mapping[str, T], name: str) -> dict[str, T]:
    """``table`` (a dict keyed by scale, e.g. the nightly's datasets) as a dict, after checking it
    has exactly one entry per scale in :data:`SCALES`; ``name`` names the table in the error."""
    missing, unknown = [s for s in SCALES if s not in table], [s for s in table if s not in SCALES]
    if missing or unknown:
        raise InputError(f"{name} must have one entry per scale {SCALES}: missing {missing}, unknown {unknown}")
    return dict(table)

"""The three scales every benchmark and the nightly flow accept."""

from __future__ import annotations

from typing import Literal

Scale = Literal["smoke", "small", "paper"]
SCALES: tuple[str, ...] = ("smoke", "small", "paper")


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale

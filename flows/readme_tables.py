"""Render the README's result tables from committed benchmark JSON (``python -m flows.readme_tables``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .results import format_table

DATAGEN_COLS = ["method", "problem", "samples", "seconds", "samples_per_s", "ratio_to_bare"]
GAMG_COLS = ["method", "problem", "unknowns", "iterations", "seconds", "solve_seconds", "us_per_unknown", "ratio_to_smallest"]
LINEAR_COLS = ["method", "problem", "rhs", "tol", "iterations", "seconds", "converged", "iters_vs_icpcg", "time_vs_icpcg", "time_vs_gamg"]


def datagen(path: str | Path) -> str:
    rows = json.loads(Path(path).read_text())["rows"]
    flow = [r for r in rows if "ratio_to_bare" in r]
    gamg = [r for r in rows if "ratio_to_smallest" in r]
    return format_table(flow, DATAGEN_COLS) + "\n\n" + format_table(gamg, GAMG_COLS)


def linear(path: str | Path) -> str:
    rows = json.loads(Path(path).read_text())["rows"]
    main = [r for r in rows if not r["problem"].startswith("growth") and r["rhs"] == "grf"]
    other = [r for r in rows if r["method"] in ("dcdm-k2", "icpcg") and r["rhs"] in ("ritz", "divergence") and r["tol"] == 1e-6]
    growth = [r for r in rows if r["problem"].startswith("growth")]
    return "\n\n".join([
        "GRF right-hand sides, both tolerances:\n\n" + format_table(main, LINEAR_COLS),
        "Ritz-sampled and divergence right-hand sides (DCDM k=2 vs ICPCG, tol 1e-6):\n\n" + format_table(other, LINEAR_COLS),
        "Iteration growth from the smallest to the largest 2D grid (mean over the three right-hand sides, tol 1e-6):\n\n"
        + format_table(growth, ["method", "problem", "iterations", "growth", "converged"]),
    ])


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which in ("datagen", "all"):
        print(datagen("results/datagen-small.json"))
    if which in ("linear", "all"):
        print(linear("results/linear-small.json"))

"""The operators-budget benchmark (#19): convergence summaries, the pareto grid, and a smoke run."""

import pytest

from data.errors import InputError


def _history(l2s):
    return [{"epoch": i, "test_l2": v, "test_h1": 2 * v} for i, v in enumerate(l2s)]


def test_curve_summary_finds_the_best_epoch_and_whether_it_still_improves():
    from flows.benchmarks.operators_budget import curve_summary

    flat = curve_summary(_history([1.0, 0.5, 0.4, 0.3, 0.31, 0.30, 0.305, 0.30, 0.301, 0.30]))
    assert flat["best_epoch"] == 4 and flat["best_test_l2"] == 0.3 and flat["best_test_h1"] == 0.6
    assert flat["final_test_l2"] == 0.3 and flat["epochs"] == 10
    assert flat["still_improving"] is False  # the last epoch (10 %) is not 1 % below the best before it
    falling = curve_summary(_history([1.0, 0.8, 0.6, 0.5, 0.45, 0.42, 0.40, 0.39, 0.385, 0.37]))
    assert falling["best_epoch"] == 10 and falling["still_improving"] is True
    with pytest.raises(InputError, match="test errors"):
        curve_summary([{"epoch": 0, "loss": 1.0}])


def test_pareto_grid_is_every_rank_in_every_series_plus_the_dense_model():
    from flows.benchmarks.operators_budget import RANKS, SERIES, pareto_models

    grid = pareto_models(RANKS)
    assert len(grid) == 1 + len(SERIES) * len(RANKS) and grid["fno"] == {"name": "fno"}
    assert grid["mg-tfno-joint-r0.01"] == dict(
        name="mg-tfno", rank=0.01, factorization="joint", levels=1, padding_fraction=0.0625
    )
    assert grid["tfno-per-layer-r0.5"] == dict(name="tfno", rank=0.5, factorization="per-layer")


def test_smoke_run_trains_both_parts_and_reports_a_refused_joint_rank(monkeypatch):
    from flows.benchmarks import operators_budget as ob

    smoke = {**ob.CONFIGS["smoke"], "pareto": {**ob.CONFIGS["smoke"]["pareto"], "ranks": [0.05, 0.002]}}
    monkeypatch.setitem(ob.CONFIGS, "smoke", smoke)
    rows, figures = ob.run("smoke")
    curves = [r for r in rows if r["part"] == "curves"]
    assert [r["model"] for r in curves] == smoke["curves"]["models"]
    for r in curves:
        assert len(r["curve_l2"]) == len(r["curve_h1"]) == smoke["curves"]["epochs"] == r["epochs"]
        assert r["best_test_l2"] == min(r["curve_l2"]) == r["curve_l2"][r["best_epoch"] - 1]
        assert r["l2_vs_fno"] == pytest.approx(r["best_test_l2"] / curves[0]["best_test_l2"], abs=2e-3)
    mg = next(r for r in curves if r["multigrid"])
    assert mg["input_domain"] < 0.5 and mg["factorization"] == "per-layer"
    pareto = {r["model"]: r for r in rows if r["part"] == "pareto"}
    assert len(pareto) == 1 + 4 * 2
    # 0.002 is below one Tucker rank per layer index for the joint tensor: refused with the valid range;
    # the per-layer weights floor each Tucker rank at 1 (tensorly) and train
    for name in ("tfno-joint-r0.002", "mg-tfno-joint-r0.002"):
        assert "params" not in pareto[name] and "valid ranks are >=" in pareto[name]["refused"]
    assert pareto["tfno-per-layer-r0.002"]["params"] < pareto["tfno-per-layer-r0.05"]["params"]
    assert pareto["fno"]["compression_vs_fno"] == 1.0 and pareto["tfno-joint-r0.05"]["compression_vs_fno"] > 5
    seeds = [r for r in rows if r["part"] == "seeds"]
    assert sorted((r["factorization"], r["seed"]) for r in seeds) == [("joint", 1), ("per-layer", 1)]
    assert {r["params"] for r in seeds if r["factorization"] == "joint"} == {pareto["tfno-joint-r0.05"]["params"]}
    assert set(figures) == {"curves", "pareto"}
    assert figures["pareto"].axes[0].get_xscale() == "log"


def test_unknown_parts_are_refused_before_training():
    from flows.benchmarks import operators_budget as ob

    with pytest.raises(InputError, match=r"parts must be a non-empty list of \['curves', 'pareto', 'seeds'\]"):
        ob.run("smoke", parts=["curves", "pareto-front"])


def test_part_is_refused_for_a_benchmark_without_parts(tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "x.json"
    assert main(["bench", "operators", "--part", "curves", "--out", str(out)]) == 2
    assert "--part: benchmark 'operators' has no parts" in capsys.readouterr().err and not out.exists()


def test_seed_spread_joins_seed_zero_from_the_pareto_rows(tmp_path):
    from flows.docs_tables import seed_spread

    def row(part, fact, seed, l2, mg=False):
        return dict(
            part=part, method=f"{part}/{fact}-s{seed}-{mg}", rank=0.05, factorization=fact, multigrid=mg,
            seed=seed, params=100 if fact == "joint" else 110, final_test_l2=l2,
        )  # fmt: skip

    rows = [row("pareto", "joint", 0, 0.2), row("pareto", "joint", 0, 0.9, mg=True), row("pareto", "per-layer", 0, 0.1)]
    rows += [row("seeds", "joint", 1, 0.4), row("seeds", "per-layer", 1, 0.3)]
    out = {r["factorization"]: r for r in seed_spread(rows, tmp_path / "operators-budget-small.json")}
    assert out["joint"]["seeds"] == "0, 1" and out["joint"]["final_test_l2"] == "0.3000 +- 0.1414"
    assert out["per-layer"]["per_seed"] == "0.1000, 0.3000" and out["per-layer"]["params"] == 110

"""How flows/ is wired: one benchmark registry that every name list derives from, per-scale tables
that cover the scales, the CLI's exit status for bad values, the error family, and an import graph
without circles or private imports. Fast: nothing here runs a flow."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest

from data.errors import InputError, SciflowError

ROOT = Path(__file__).resolve().parents[2]
FLOWS = ROOT / "flows"


# ---------------------------------------------------------------------------------------------
# one registry: every list of benchmark names is derived from flows.benchmarks.BENCHMARKS


def test_name_lists_derive_from_the_registry():
    from flows import docs_tables
    from flows.benchmarks import BENCHMARKS
    from flows.cli import build_parser
    from flows.nightly import STAGES, Stage

    bench = build_parser()._subparsers._group_actions[0].choices["bench"]  # the `bench` sub-command
    name = next(a for a in bench._actions if a.dest == "name")
    assert list(name.choices) == list(BENCHMARKS)
    assert typing.get_args(Stage) == tuple(STAGES) == tuple(b.flow_name for b in BENCHMARKS.values() if b.stage)
    assert list(docs_tables.TABLES) == list(BENCHMARKS)
    for b in BENCHMARKS.values():
        assert b.module == f"flows.benchmarks.{b.name.replace('-', '_')}"
        if b.flow is not None:
            assert b.entrypoint == b.flow.replace(".", "/").replace(":", ".py:", 1)


def test_unknown_benchmark_names_the_known_ones():
    from flows.benchmarks import get, run_benchmark

    with pytest.raises(InputError, match=r"benchmark='nope' is unknown; choose one of \['datagen', 'linear'"):
        get("nope")
    with pytest.raises(InputError, match="benchmark='nope'"):
        run_benchmark("nope", "smoke")


def test_registry_entries_are_consistent():
    from flows.benchmarks import Benchmark

    with pytest.raises(InputError, match="give both flow and flow_name"):
        Benchmark("x", "flows.benchmarks.x", flow="flows.x:benchmark_x")
    with pytest.raises(InputError, match="needs a flow"):
        Benchmark("x", "flows.benchmarks.x", stage=True)
    with pytest.raises(InputError, match="has no flow; run it with `sciflow bench x`"):
        Benchmark("x", "flows.benchmarks.x").load_flow()


# ---------------------------------------------------------------------------------------------
# scale tables


def test_per_scale_tables_cover_every_scale():
    """Every benchmark module's tables keyed by scale (SIZES, TRAIN, CONFIGS, ...) have exactly one
    entry per scale of flows.scales.SCALES."""
    from flows.benchmarks import BENCHMARKS
    from flows.scales import SCALES

    checked = 0
    for b in BENCHMARKS.values():
        module = b.load()
        for attr, value in vars(module).items():
            if attr.isupper() and isinstance(value, dict) and set(value) & set(SCALES):
                assert set(value) == set(SCALES), f"{b.module}.{attr} has scales {sorted(value)}, expected {SCALES}"
                checked += 1
    assert checked >= len(BENCHMARKS)


def test_per_scale_refuses_a_table_without_every_scale():
    from flows.scales import check_scale, per_scale

    assert per_scale({"smoke": 1, "small": 2, "paper": 3}, "T") == {"smoke": 1, "small": 2, "paper": 3}
    with pytest.raises(InputError, match=r"T must have one entry per scale .*missing \['paper'\], unknown \['huge'\]"):
        per_scale({"smoke": 1, "small": 2, "huge": 3}, "T")
    with pytest.raises(InputError, match="scale must be one of"):
        check_scale("huge")


# ---------------------------------------------------------------------------------------------
# the `sciflow` command: every bad value exits with status 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "darcy", "--n", "-3", "--no-flow"], "n: Input should be greater than or equal to 4"),
        (
            ["generate", "darcy", "--petsc-option", "pc_type", "--no-flow"],
            "--petsc-option expects KEY=VALUE, got 'pc_type'",
        ),
        (["optimize", "--problem", "hs999"], "problem: Value error, unknown problem 'hs999'"),
    ],
)
def test_cli_validation_errors_exit_2(argv, message, capsys):
    from flows.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sciflow {argv[0]}: error: ") and message in err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "nope", "--out", "x.json"],
        ["bench", "linear", "--scale", "huge", "--out", "x.json"],
        ["run", "nightly", "--chunk-size", "0"],
        ["generate", "darcy", "--chunk-size", "-1"],
        ["loadtest", "--runs", "0"],
        ["loadtest", "--timeout", "nan"],
    ],
)
def test_cli_argument_errors_exit_2(argv, capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2 and "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# one error family


def test_flow_errors_are_sciflow_errors():
    from flows.nightly import RegressionError, StageError
    from flows.tracking import TrackingUnavailableError

    for cls in (StageError, RegressionError, TrackingUnavailableError):
        assert issubclass(cls, SciflowError) and issubclass(cls, RuntimeError), cls


# ---------------------------------------------------------------------------------------------
# the import graph of flows/: no circles, no private names across modules


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, function-level
    ones included (a circle through a lazy import is still a circle)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(FLOWS.rglob("*.py")):
        edges = graph.setdefault(_module_name(path), set())
        for module, names, _ in _imports(path):
            if module != "flows" and not module.startswith("flows."):
                continue
            subs = [f"{module}.{n}" for n in names if _is_module(f"{module}.{n}")]
            edges.update(subs)
            if len(subs) < len(names) or not names:
                edges.add(module)  # names taken from the module itself (its __init__ for a package)
    for edges in graph.values():
        edges.discard("flows")  # the package's __init__ only sets the environment up (flows.settings)
    return graph


def test_flows_has_no_import_circles():
    graph = _graph()
    assert {"flows.cli", "flows.nightly", "flows.generate", "flows.linear"} <= set(graph)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                path = [*trail, node]
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not any("flows.cli" in edges for edges in graph.values()), "only the console script imports flows.cli"


#: the one place a private third-party API is used, fenced in its own module (pinned torchdiffeq)
FENCED_PRIVATE = {("solvers/ode/_rk.py", f"torchdiffeq._impl.{m}") for m in ("dopri5", "misc", "rk_common")}


@pytest.mark.parametrize("package", ["data", "solvers", "operators", "flows"])
def test_no_module_imports_private_names_from_another(package):
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {module}.{n}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for module, names, line in _imports(path)
        if module != "__future__" and (str(path.relative_to(ROOT)), module) not in FENCED_PRIVATE
        for n in names
        if n.startswith("_")
    ]
    assert not bad, bad


# ---------------------------------------------------------------------------------------------
# flow-run names (flows/names.py)


def test_every_flow_names_its_runs():
    """Every flow of the registry has a flow_run_name (no random names in the UI)."""
    from flows import registry

    for name in registry.FLOWS:
        assert registry.load(name).flow_run_name is not None, name


def test_run_names_format_models_dicts_and_the_day():
    import datetime as dt

    from flows.names import format_name
    from operators.fno import OperatorModelConfig, OperatorTrainConfig

    cfg = OperatorTrainConfig(model=OperatorModelConfig(name="tfno"))
    when = dt.datetime(2026, 3, 4, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    template = "train-operator-{config.model.name}-{dataset.family}-n{dataset.n}"
    assert format_name(template, {"config": cfg, "dataset": {"family": "darcy", "n": 32}}) == (
        "train-operator-tfno-darcy-n32"
    )
    assert format_name("nightly-{scale}-{date}", {"scale": "smoke"}, when) == "nightly-smoke-2026-03-05"  # UTC day
    assert format_name("x-{config.model.name}-{missing}", {"config": {}}) == "x-?-?"  # never a random name


def test_generate_dataset_names_its_run_after_the_spec():
    from data.spec import DarcySpec, NavierStokesSpec
    from flows.generate import spec_label

    assert spec_label(DarcySpec(n=32, n_train=4)) == "darcy-n32"
    assert spec_label(NavierStokesSpec(n=64, n_train=1)) == "navier_stokes-n64"


def test_the_night_generates_exactly_the_datasets_the_benchmarks_read():
    """datasets_for(scale) is every spec a stage's module lists in datasets(scale), once; the
    benchmarks obtain their data through flows.generate.get_dataset (the cached generate-dataset
    flow inside a flow run), never data.generate directly."""
    import re
    from pathlib import Path

    import data
    from flows.nightly import STAGES, datasets_for
    from flows.scales import SCALES

    for scale in SCALES:
        listed = [s for b in STAGES.values() if hasattr(b.load(), "datasets") for s in b.load().datasets(scale)]
        night = datasets_for(scale)
        assert {data.spec_hash(s) for s in night} == {data.spec_hash(s) for s in listed}
        assert len({data.spec_hash(s) for s in night}) == len(night)
    assert {b.name for b in STAGES.values() if hasattr(b.load(), "datasets")} >= {
        "operators",
        "neural-odes",
        "hard-constraints",
    }
    bench = Path(__file__).resolve().parents[2] / "flows" / "benchmarks"
    for path in bench.glob("*.py"):
        if path.name != "datagen.py":  # (times the generation itself, in a scratch store)
            assert not re.search(r"\bdata\.generate\(", path.read_text()), path.name

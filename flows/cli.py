"""The ``sciflow`` console script: a command for every flow.

    sciflow run FLOW [--params JSON] [--set KEY=VALUE ...]     # any flow of flows.registry.FLOWS
    sciflow run train-operator --set config.epochs=5 --set dataset.n=32
    sciflow run nightly --scale smoke [--dispatch deployments --gpu-stage benchmark-operators]
    sciflow run train-dcdm --scale small                       # the linear benchmark's training config
    sciflow generate darcy --n 64 --n-train 32 --petsc-option pc_type=hypre
    sciflow bench datagen --scale small --out results/datagen-small.json
    sciflow optimize --problem darcy-inverse --n 32 --method al-sketch --max-seconds 60
    sciflow config [--json | --get NAME]
    sciflow ui
    sciflow stack up|status|down [--backend sqlite|postgres]
    sciflow loadtest --runs 16

Every command that computes runs a Prefect flow (one flow run, one MLflow run). ``run`` takes a
flow's parameters as JSON (``--params``) and dotted assignments (``--set config.epochs=5``; the
value is JSON when it parses as JSON, else text) and checks them against the flow's own parameter
model before anything starts. Bad values exit with status 2 and a message naming the parameter:
argparse's own errors, and what the typed configs and settings reject (:class:`UsageError`, any
:class:`~data.errors.InputError`).
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from data.errors import InputError
from data.spec import FAMILIES

from . import registry, settings
from .benchmarks import BENCHMARKS
from .scales import SCALES

#: Exit status of a command-line value that fails validation (argparse's own).
USAGE = 2


class UsageError(InputError):
    """A command-line value the typed configs reject; :func:`main` prints it and exits with status 2."""


def _positive(typ):
    """An argparse type: ``typ`` (int or float) greater than zero."""

    def parse(text: str):
        value = typ(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = typ.__name__  # argparse names the type in "invalid int value"
    return parse


def _field_type(annotation):
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return type(values[0]), [str(v) if isinstance(v, str) else v for v in values]
    if annotation in (int, float, str):
        return annotation, None
    return None, None


def _add_spec_options(p: argparse.ArgumentParser, model) -> None:
    for name, field in model.model_fields.items():
        if name in ("family", "petsc_options"):
            continue
        typ, choices = _field_type(field.annotation)
        if typ is None:
            continue
        p.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            type=typ,
            choices=choices,
            default=None,
            help=f"{field.description or name} (default {field.default})",
        )
    p.add_argument(
        "--petsc-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="PETSc option for the solver, repeatable, e.g. ksp_type=cg pc_type=hypre",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sciflow", description="Sci-ML pipelines on Prefect + MLflow")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run any flow with parameters checked against its parameter model",
        description="Run one Prefect flow. FLOW is one of: "
        + ", ".join([*registry.FLOWS, *registry.ALIASES])
        + ". Parameters come from --params (a JSON object), then the short options, then each --set "
        "in order; `--show` prints the flow's parameters and their defaults.",
    )
    run.add_argument("flow", metavar="FLOW", help="flow name (nightly = nightly-benchmark)")
    run.add_argument(
        "--params", metavar="JSON", default=None, help='the parameters as a JSON object, e.g. \'{"scale": "small"}\''
    )
    run.add_argument(
        "--set",
        dest="assign",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one parameter, dotted into nested configs (config.epochs=5, dataset.family=darcy); VALUE is "
        "JSON when it parses (5, true, [1,2], {...}), else text; repeatable",
    )
    run.add_argument("--show", action="store_true", help="print the flow's parameters with their defaults and exit")
    run.add_argument(
        "--dry-run", action="store_true", help="check the parameters, print them as the flow will get them, and exit"
    )
    run.add_argument(
        "--scale",
        choices=SCALES,
        default=None,
        help="the flow's `scale`; for train-dcdm: the linear benchmark's training config (default smoke)",
    )
    run.add_argument("--chunk-size", type=_positive(int), default=None, help="the flow's `chunk_size`")
    run.add_argument(
        "--dispatch", default=None, help="nightly: `inline` (subflows here) or `deployments` (flow runs on the pools)"
    )
    run.add_argument(
        "--gpu-stage",
        dest="gpu_stages",
        action="append",
        default=None,
        choices=[b.flow_name for b in BENCHMARKS.values() if b.stage],
        help="nightly: a stage sent to its `gpu` deployment (needs --dispatch deployments); repeatable",
    )

    gen = sub.add_parser("generate", help="generate a PETSc dataset through the generate-dataset flow")
    fam = gen.add_subparsers(dest="family", required=True)
    for family, model in FAMILIES.items():
        p = fam.add_parser(family, help=(model.__doc__ or "").strip().splitlines()[0])
        _add_spec_options(p, model)
        p.add_argument("--chunk-size", type=_positive(int), default=16)
        p.add_argument(
            "--no-flow", action="store_true", help="library call only (no Prefect/MLflow), with a progress bar"
        )
        p.add_argument(
            "--runner",
            choices=["threads", "dask"],
            default="threads",
            help="where the chunk tasks run: threads (default) or Dask (a LocalCluster, or "
            "$SCIFLOW_DASK_ADDRESS / --dask-address)",
        )
        p.add_argument("--dask-address", default=None, help="scheduler address of a running Dask cluster")

    bench = sub.add_parser("bench", help="run a benchmark; writes {rows, meta} JSON")
    bench.add_argument("name", choices=list(BENCHMARKS))
    bench.add_argument("--scale", choices=SCALES, default="smoke")
    bench.add_argument("--out", type=Path, required=True)
    bench.add_argument(
        "--retrain",
        action="store_true",
        help="linear: train the DCDM network from scratch instead of using the shipped one",
    )
    bench.add_argument(
        "--part",
        action="append",
        choices=["curves", "pareto", "seeds"],
        help="operators-budget: run only this part (repeatable; default every part)",
    )

    ship = sub.add_parser(
        "ship-dcdm",
        help="train (cached) the DCDM budget curve's largest model of a network and commit-ready ship it "
        "to operators/dcdm/weights (weights, manifest with SHA-256, data digest, recorded iterations)",
    )
    ship.add_argument("--net", choices=["paper", "multilevel"], default="multilevel")
    ship.add_argument("--scale", choices=SCALES, default="small", help="whose budget list (its largest budget)")
    ship.add_argument(
        "--dim",
        type=int,
        choices=[2, 3],
        default=2,
        help="2: the budget curve's largest model (64^2); 3: the 3D model (32^3 at small)",
    )

    opt = sub.add_parser("optimize", help="one equality-constrained solve through the optimize flow")
    from solvers.optim.config import OptimizeConfig

    for name, field in OptimizeConfig.model_fields.items():
        typ, choices = _field_type(field.annotation)
        if name == "max_seconds":
            typ = float
        if typ is not None:
            opt.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                type=typ,
                choices=choices,
                default=None,
                help=f"{field.description or name} (default {field.default})",
            )

    config = sub.add_parser(
        "config", help="print the effective settings (and where each comes from) and the Prefect / MLflow endpoints"
    )
    shown = config.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="as JSON")
    shown.add_argument("--get", metavar="NAME", help="print one setting's value (home, SCIFLOW_HOME, ...)")
    sub.add_parser("ui", help="print how to open the MLflow UI on this project's runs")
    trk = sub.add_parser("tracking", help="MLflow calls spooled during a tracking-server outage")
    trk.add_argument(
        "action", choices=["status", "flush"], help="status: the spooled runs; flush: deliver them in order"
    )
    stack = sub.add_parser("stack", help="local Prefect server + MLflow server + worker on 127.0.0.1")
    stack.add_argument("action", choices=["up", "status", "down"])
    stack.add_argument(
        "--backend",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="up: where Prefect and MLflow keep their state (postgres: a server started on 127.0.0.1)",
    )
    load = sub.add_parser(
        "loadtest", help="N concurrent optimize flow runs against the running stack, checked in MLflow"
    )
    load.add_argument("--runs", type=_positive(int), default=16)
    load.add_argument("--timeout", type=_positive(float), default=600, help="seconds to wait for all runs to finish")
    load.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    return parser


def _spec_from_args(args) -> object:
    from pydantic import ValidationError

    model = FAMILIES[args.family]
    values = {k: v for k, v in vars(args).items() if k in model.model_fields and v is not None}
    options = {}
    for item in args.petsc_option:
        if "=" not in item:
            raise UsageError(f"--petsc-option expects KEY=VALUE, got {item!r} (e.g. --petsc-option pc_type=hypre)")
        key, value = item.split("=", 1)
        options[key] = value
    try:
        return model(**values, petsc_options=options)
    except ValidationError as exc:
        raise UsageError(_validation_message(exc)) from None


def _validation_message(exc) -> str:
    lines = [f"  {'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()]
    return "invalid parameters\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one ``sciflow`` command; returns the exit status (2 for a bad value, as argparse)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            return _config(args)
        settings.configure()
        return _run(args)
    except InputError as exc:  # UsageError, a bad setting, a flow parameter its model refuses
        print(f"sciflow {args.command}: error: {exc}", file=sys.stderr)
        return USAGE


# ---------------------------------------------------------------------------------------------
# sciflow run FLOW


def _presets(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The short options as parameters of flow ``name`` (only those given)."""
    out: dict[str, Any] = {}
    if name == "train-dcdm" and args.scale is not None:
        from .benchmarks.linear import TRAIN

        out["config"] = TRAIN[args.scale].model_dump(mode="json")
    elif args.scale is not None:
        out["scale"] = args.scale
    for option, param in (("chunk_size", "chunk_size"), ("dispatch", "dispatch"), ("gpu_stages", "gpu_stages")):
        if getattr(args, option) is not None:
            out[param] = getattr(args, option)
    return out


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _default(flow, name: str) -> Any:
    """Parameter ``name``'s default as JSON data (a config model dumped), or None."""
    import inspect

    default = inspect.signature(flow.fn).parameters[name].default
    if default is inspect.Parameter.empty:
        return None
    return default.model_dump(mode="json") if hasattr(default, "model_dump") else default


def flow_parameters(flow, params_json: str | None, presets: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """The parameters of one ``sciflow run``: ``--params``, then the short options, then each
    ``--set KEY=VALUE`` (dotted keys go into nested configs, starting from the flow's default).
    A malformed value or an unknown parameter is a :class:`UsageError` naming it; the types are
    checked by :func:`validated`."""
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            params = json.loads(params_json)
        except ValueError as exc:
            raise UsageError(f'--params is not valid JSON: {exc} (e.g. --params \'{{"scale": "small"}}\')') from None
        if not isinstance(params, dict):
            raise UsageError(f"--params must be a JSON object of parameters, got {type(params).__name__}")
    params.update(presets)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r} (e.g. --set config.epochs=5)")
        top, *path = key.split(".")
        if path:
            if top not in params and top in flow.parameters.properties:
                params[top] = _default(flow, top) or {}
            node, walked = params.setdefault(top, {}), [top]
            for part in path[:-1]:
                if not isinstance(node, dict):
                    break
                node, walked = node.setdefault(part, {}), [*walked, part]
            if not isinstance(node, dict):
                raise UsageError(f"--set {item}: {'.'.join(walked)} is {json.dumps(node)}, not a config with fields")
            node[path[-1]] = _json_value(value)
        else:
            params[top] = _json_value(value)
    known = list(flow.parameters.properties)
    for name in params:
        if name not in known:
            raise UsageError(f"flow {flow.name!r} has no parameter {name!r}; its parameters: {', '.join(known)}")
    return params


def validated(flow, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against the flow's parameter model (Prefect's own validation); a value of
    the wrong type is a :class:`UsageError` that names the parameter and the rule it breaks."""
    import logging

    from prefect.exceptions import ParameterTypeError

    prefect_flows = logging.getLogger("prefect.flows")  # it logs the raw pydantic errors; the message below says it
    level = prefect_flows.level
    prefect_flows.setLevel(logging.CRITICAL)
    try:
        return flow.validate_parameters(params)
    except ParameterTypeError as exc:
        text = str(exc).replace("Flow run received invalid parameters:", f"invalid parameters for flow {flow.name!r}:")
        raise UsageError(text.replace("\n - ", "\n  ")) from None
    finally:
        prefect_flows.setLevel(level)


def _show(flow) -> int:
    """``sciflow run FLOW --show``: the flow's description and each parameter's default, as JSON."""
    print(f"{flow.name}: {(flow.description or '').strip().splitlines()[0] if flow.description else ''}")
    print(json.dumps({name: _default(flow, name) for name in flow.parameters.properties}, indent=2, default=str))
    return 0


def _print_result(name: str, result: Any) -> int:
    from .results import format_by, format_table

    if name == "nightly-benchmark":
        from .tracking import ui_hint

        print(f"\n{name}\n\n" + format_by(result, "stage"))
        print(f"\nMLflow runs: {ui_hint()}")
    elif isinstance(result, list) and result and isinstance(result[0], dict):
        print(format_by(result, "part") if "part" in result[0] else format_table(result))
    elif isinstance(result, dict):
        print(format_table([{k: v for k, v in result.items() if k != "message"}]))
        if "message" in result:
            print(result["message"])
        if result.get("converged") is False:
            return 1
    elif hasattr(result, "digest"):
        print(f"dataset: {result.path}\nsha256:  {result.digest}")
    elif result is not None:
        print(result)
    return 0


def run_flow(args: argparse.Namespace) -> int:
    """``sciflow run FLOW ...``: resolve, assemble and check the parameters, run the flow, print its result."""
    name = registry.resolve(args.flow)
    flow = registry.load(name)
    if args.show:
        return _show(flow)
    params = validated(flow, flow_parameters(flow, args.params, _presets(name, args), args.assign))
    if args.dry_run:
        dumped = {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in params.items()}
        print(f"{name} " + json.dumps(dumped, default=str))
        return 0
    return _print_result(name, flow(**params))


# ---------------------------------------------------------------------------------------------
# sciflow config


def _config(args: argparse.Namespace) -> int:
    """``sciflow config``: every setting with its value and source, then the endpoints in use."""
    from data.settings import Settings, config_file, describe, env_var

    settings.configure(create=False)
    rows = describe()
    if args.get:
        wanted = args.get.lower().removeprefix("sciflow_")
        if wanted not in Settings.model_fields:
            raise UsageError(f"--get {args.get!r} is not a setting; choose one of {list(Settings.model_fields)}")
        value = next(r["value"] for r in rows if r["name"] == wanted)
        print("" if value is None else value)
        return 0
    endpoints = settings.endpoints()
    file = config_file()
    if args.json:
        print(
            json.dumps(
                {"settings": rows, "file": str(file), "file_exists": file.exists(), "endpoints": endpoints},
                indent=2,
                default=str,
            )
        )
        return 0
    print(f"sciflow settings (environment SCIFLOW_*, then {file}{'' if file.exists() else ' (not found)'})")
    width = max(len(env_var(r["name"])) for r in rows)
    for r in rows:
        value = "(unset)" if r["value"] is None else r["value"]
        print(f"  {r['variable']:<{width}}  {value}  [{r['source']}]")
    print("\nendpoints")
    width = max(len(e["name"]) for e in endpoints)
    for e in endpoints:
        print(f"  {e['name']:<{width}}  {e['value']}" + (f"  [{e['source']}]" if e["source"] else ""))
    return 0


# ---------------------------------------------------------------------------------------------
# the other commands


def tracking_command(action: str) -> int:
    """``sciflow tracking status|flush``: list, or deliver, the spools left under ``<home>/spool``
    (exit 1 when a spool could not be delivered: the server is still unreachable)."""
    from . import tracking
    from .spool import Spool, spooled_runs

    runs = spooled_runs()
    if not runs:
        print("no spooled tracking calls")
        return 0
    failed = 0
    for run_id in runs:
        n = sum(1 for _ in Spool(run_id).entries())
        if action == "status":
            print(f"{run_id}: {n} spooled calls in {Spool(run_id).path}")
        elif tracking.deliver(run_id, force=True):
            print(f"{run_id}: delivered {n} spooled calls")
        else:
            failed += 1
            print(f"{run_id}: MLflow still unreachable; {n} calls stay in {Spool(run_id).path}", file=sys.stderr)
    return 1 if failed else 0


def _run(args: argparse.Namespace) -> int:
    from .results import format_by, format_table
    from .tracking import ui_hint

    if args.command == "ui":
        print(ui_hint())
        return 0
    if args.command == "run":
        return run_flow(args)
    if args.command == "tracking":
        return tracking_command(args.action)
    if args.command == "stack":
        from .stack import main as stack_main

        return stack_main(args.action, args.backend)
    if args.command == "loadtest":
        from .loadtest import main as load_main

        return load_main(args.runs, args.out, args.timeout)
    if args.command == "generate":
        spec = _spec_from_args(args)
        if args.no_flow:
            import data

            ref = data.generate(spec, chunk_size=args.chunk_size)
        else:
            from .generate import generate_dataset

            ref = generate_dataset(
                spec=spec, chunk_size=args.chunk_size, runner=args.runner, dask_address=args.dask_address
            )
        print(f"dataset: {ref.path}\nsha256:  {ref.digest}")
        return 0
    if args.command == "optimize":
        from pydantic import ValidationError

        from solvers.optim.config import OptimizeConfig

        from .optimize import optimize

        try:
            cfg = OptimizeConfig(
                **{k: v for k, v in vars(args).items() if k in OptimizeConfig.model_fields and v is not None}
            )
        except ValidationError as exc:
            raise UsageError(_validation_message(exc)) from None
        row = optimize(config=cfg)
        print(format_table([{k: v for k, v in row.items() if k != "message"}]))
        print(row["message"])
        return 0 if row["converged"] else 1
    if args.command == "ship-dcdm":
        from .benchmarks.linear_budget import ship_dcdm

        print(ship_dcdm(args.net, args.scale, args.dim))
        return 0
    if args.command == "bench":
        from .benchmarks import get

        flow = get(args.name).load_flow()  # a flow run of benchmark-NAME: in Prefect and in MLflow
        options = {"retrain": True} if args.retrain else {}
        if args.retrain and "retrain" not in flow.parameters.properties:
            raise UsageError(f"--retrain: benchmark {args.name!r} has no network to retrain (only 'linear' takes it)")
        if args.part:
            if "parts" not in flow.parameters.properties:
                raise UsageError(f"--part: benchmark {args.name!r} has no parts (only 'operators-budget' takes it)")
            options["parts"] = args.part
        rows = flow(scale=args.scale, out=str(args.out), **options)
        print(format_by(rows, "part") if rows and "part" in rows[0] else format_table(rows))
        print(f"\nwrote {args.out}")
        return 0
    return USAGE

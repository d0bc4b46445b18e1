"""The ``sciflow`` console script.

    sciflow run nightly --scale smoke
    sciflow generate darcy --n 64 --n-train 32 --petsc-option pc_type=hypre
    sciflow bench datagen --scale small --out results/datagen-small.json
    sciflow optimize --problem darcy-inverse --n 32 --method al-sketch --max-seconds 60
    sciflow ui
    sciflow stack up|status|down [--backend sqlite|postgres]
    sciflow loadtest --runs 16

Each command runs the same functions that back the Prefect flows. Bad parameters exit with
status 2 and a message naming the field (argparse's own errors, and the values the typed configs
reject: :class:`UsageError`).
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from . import settings

settings.configure()

from data.errors import InputError
from data.spec import FAMILIES  # noqa: E402

from .benchmarks import BENCHMARKS
from .scales import SCALES  # noqa: E402

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

    run = sub.add_parser("run", help="run a flow")
    run.add_argument(
        "flow",
        choices=["nightly", "train-dcdm"],
        help="nightly-benchmark, or train-dcdm with the benchmark's config for --scale",
    )
    run.add_argument("--scale", choices=SCALES, default="smoke")
    run.add_argument("--chunk-size", type=_positive(int), default=16)

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

    sub.add_parser("ui", help="print how to open the MLflow UI on this project's runs")
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
        return _run(args)
    except UsageError as exc:
        print(f"sciflow {args.command}: error: {exc}", file=sys.stderr)
        return USAGE


def _run(args: argparse.Namespace) -> int:
    from .results import format_by, format_table
    from .tracking import ui_hint

    if args.command == "ui":
        print(ui_hint())
        return 0
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
    if args.command == "run" and args.flow == "train-dcdm":
        from .benchmarks.linear import TRAIN
        from .dcdm import train_dcdm

        print(f"checkpoint: {train_dcdm(config=TRAIN[args.scale])}")
        return 0
    if args.command == "run":
        from .nightly import nightly_benchmark

        rows = nightly_benchmark(scale=args.scale, chunk_size=args.chunk_size)
        print(f"\nnightly-benchmark (scale={args.scale})\n\n" + format_by(rows, "stage"))
        print(f"\nMLflow runs: {ui_hint()}")
        return 0
    if args.command == "bench":
        from .benchmarks import run_benchmark

        rows, meta = run_benchmark(args.name, args.scale, args.out)
        print(format_by(rows, "part") if rows and "part" in rows[0] else format_table(rows))
        print(f"\nwrote {args.out}")
        return 0
    return USAGE

"""Command line for data-parallel neural-operator training (:mod:`operators.fno.ddp`), with MLflow.

    torchrun --nproc_per_node 2 -m flows.operator_ddp --scale smoke          # 2 processes, gloo on CPU
    torchrun --nproc_per_node 8 -m flows.operator_ddp --scale paper          # 8 GPUs, NCCL
    python -m flows.operator_ddp --scale small                               # 1 process, no process group

Rank 0 logs one MLflow run (params, the dataset, per-epoch metrics; under ``$MLFLOW_TRACKING_URI``)
unless ``--no-mlflow``, and prints each epoch to stderr; the other ranks only train.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from data.io import write_text
from operators.fno import MODELS
from operators.fno.ddp import SCALES, DDPConfig, config_for, train_ddp


def tracker(cfg: DDPConfig, mlflow: bool, run: dict):
    """The rank-0 tracker of :func:`operators.fno.ddp.train_ddp`: an MLflow run (its id goes to
    ``run["id"]``) and a progress line per epoch on stderr."""

    @contextlib.contextmanager
    def track(facts: dict) -> Iterator:
        def show(epoch: int, row: dict) -> None:
            print(
                f"epoch {epoch}/{cfg.train.epochs} loss {row['loss']:.4f} test L2 {row['test_l2']:.4f} "
                f"H1 {row['test_h1']:.4f} ({row['seconds']:.1f} s, {facts['world_size']} rank(s))",
                file=sys.stderr,
                flush=True,
            )

        if not mlflow:
            yield show
            return
        from . import tracking

        params = {
            "config": cfg.train.model_dump(mode="json"),
            "config_key": cfg.train.key(),
            "dataset": cfg.dataset.model_dump(mode="json"),
            "world_size": facts["world_size"],
            "backend": facts["backend"],
            "threads_per_rank": facts["threads_per_rank"],
            "local_batch": facts["local_batch"],
            "checkpoint": facts["checkpoint"],
        }
        name = f"train-operator-ddp-{cfg.train.model.name}-{cfg.dataset.family}-{cfg.dataset.n}-x{facts['world_size']}"
        with tracking.mlflow_run(name, params, {"sciflow.stage": "train-operator-ddp"}) as run_id:
            run["id"] = run_id
            tracking.log_dataset(run_id, facts["dataset"], "training")

            def log(epoch: int, row: dict) -> None:
                tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                show(epoch, row)

            yield log

    return track


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node N -m flows.operator_ddp",
        description="DistributedDataParallel FNO training on a stored dataset.",
    )
    p.add_argument("--scale", choices=tuple(SCALES), default="smoke")
    p.add_argument("--family", choices=("darcy", "navier_stokes"))
    p.add_argument("--n", type=int, help="resolution")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch (split over the ranks)")
    p.add_argument("--hidden", type=int, help="hidden channels")
    p.add_argument("--modes", type=int, help="Fourier modes per dimension")
    p.add_argument("--model", choices=tuple(MODELS))
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="intra-op threads per rank (CPU)")
    p.add_argument("--checkpoint", help="checkpoint file (an existing one is resumed)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--hash-dir", help="every rank writes the hash of its final weights here (tests)")
    p.add_argument("--out", type=Path, help="rank 0 writes the summary JSON here")
    args = p.parse_args(argv)
    cfg = config_for(
        args.scale,
        family=args.family,
        n=args.n,
        n_train=args.n_train,
        n_test=args.n_test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        hidden=args.hidden,
        modes=args.modes,
        model=args.model,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        checkpoint=args.checkpoint,
    )
    run: dict = {}
    summary = train_ddp(cfg, hash_dir=args.hash_dir, tracker=tracker(cfg, not args.no_mlflow, run))
    summary["mlflow_run_id"] = run.get("id")
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(summary)
        print(text, flush=True)
        if args.out:
            write_text(args.out, text + "\n")
    return summary


if __name__ == "__main__":
    main()

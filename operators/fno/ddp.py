"""Data-parallel neural-operator training with ``torch.nn.parallel.DistributedDataParallel``.

    torchrun --nproc_per_node 2 -m operators.fno.ddp --scale smoke          # 2 processes, gloo on CPU
    torchrun --nproc_per_node 8 -m operators.fno.ddp --scale paper          # 8 GPUs, NCCL
    python -m operators.fno.ddp --scale small                               # 1 process, no process group

The same recipe as :func:`operators.fno.train.train` (AdamW, step LR, relative L2 / H1 loss from
neuraloperator, test errors each epoch, an atomic checkpoint after every epoch in the same format,
so either trainer resumes the other's checkpoint) with the work split over ``WORLD_SIZE`` ranks:

* every rank builds the model from the same seed; DDP broadcasts rank 0's weights and averages the
  gradients after each backward, so the weights stay identical on every rank;
* the **global** batch ``batch_size`` is the one of the 1-process run: each rank takes
  ``batch_size / WORLD_SIZE`` samples per step from a ``DistributedSampler`` (shuffled per epoch
  from ``seed``), and the averaged gradient is the global batch's mean gradient;
* the test set is evaluated in shards, one per rank, and the errors summed across ranks;
* **rank 0 alone** generates the dataset (cached by spec hash; the others wait, then load it),
  writes the checkpoint and logs to MLflow (one run, through :mod:`flows.tracking`, under
  ``$MLFLOW_TRACKING_URI``); other ranks never touch either;
* backend ``nccl`` with one GPU per local rank when CUDA is present, else ``gloo``; on CPU each rank
  uses ``cores / LOCAL_WORLD_SIZE`` intra-op threads (1 when 2 ranks share 2 cores).

A non-finite gradient norm (the same on every rank after the all-reduce) stops every rank with
:class:`TrainingDivergedError`; the last good checkpoint stays. ``--hash-dir`` (tests) makes every
rank write the SHA-256 of its final weights to ``<dir>/rank<r>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Literal, Sequence, Union

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from data.spec import DarcySpec, NavierStokesSpec

from ..device import default_device
from .models import OperatorModelConfig, build_model
from .train import (OperatorTrainConfig, TrainingDivergedError, _check_config, _save_atomic, evaluate, load_checkpoint,
                    losses, pairs, weights)

NS_FLOW = dict(viscosity=1e-4, t0=0.0, horizon=5.0)  # the operators benchmark's w(0) -> w(5)
SCALES = {  # dataset + training budget per scale (global batch)
    "smoke": dict(family="darcy", n=16, n_train=32, n_test=8, epochs=1, batch_size=8, hidden=8, modes=4),
    # 2 CPU cores: about 35 s per epoch with one process (see infra/SCALEOUT.md)
    "small": dict(family="darcy", n=64, n_train=2000, n_test=200, epochs=3, batch_size=16, hidden=32, modes=16),
    "paper": dict(family="navier_stokes", n=128, n_train=10000, n_test=1000, epochs=100, batch_size=32, hidden=64,
                  modes=32),
}


class DDPConfig(BaseModel):
    """One data-parallel training run: which data, which training config, where the checkpoint goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Union[DarcySpec, NavierStokesSpec] = Field(discriminator="family")
    train: OperatorTrainConfig
    checkpoint: str | None = Field(None, description="default: $SCIFLOW_HOME/models/operator-ddp-<key>-<digest>/")
    mlflow: bool = True
    threads: int | None = Field(None, ge=1, le=1024, description="intra-op threads per rank (default cores / local ranks)")


def config_for(scale: Literal["smoke", "small", "paper"], **overrides) -> DDPConfig:
    """The :class:`DDPConfig` of a scale; ``overrides`` replace entries of :data:`SCALES`
    (``family, n, n_train, n_test, epochs, batch_size, hidden, modes``) or ``model``, ``lr``,
    ``checkpoint``, ``mlflow``, ``threads``, ``seed``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    c = {**SCALES[scale], **{k: v for k, v in overrides.items() if k in SCALES[scale] and v is not None}}
    extra = {k: v for k, v in overrides.items() if k not in SCALES[scale] and v is not None}
    common = dict(n=c["n"], n_train=c["n_train"], n_test=c["n_test"], seed=extra.pop("seed", 0))
    spec = DarcySpec(**common) if c["family"] == "darcy" else NavierStokesSpec(**common, **NS_FLOW)
    model = OperatorModelConfig(name=extra.pop("model", "fno"), hidden_channels=c["hidden"], n_modes=c["modes"])
    train_fields = {k: extra.pop(k) for k in ("lr", "loss", "step_size") if k in extra}
    train = OperatorTrainConfig(model=model, epochs=c["epochs"], batch_size=c["batch_size"], seed=common["seed"],
                                **train_fields)
    return DDPConfig(dataset=spec, train=train, **extra)


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the model's weights (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(weights(model).items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _Ranks:
    """World facts from torchrun's environment; a lone process (no ``WORLD_SIZE``) is rank 0 of 1
    and creates no process group."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        self.distributed = "WORLD_SIZE" in os.environ

    def reduce(self, values: list[float], op=None) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.backend == "nccl" else "cpu")
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t.tolist()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _setup(cfg: DDPConfig) -> _Ranks:
    """Threads, device and (under torchrun) the process group."""
    ranks = _Ranks()
    device = default_device()
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(cfg.threads or max(1, _cores() // ranks.local_world))
    ranks.device = device
    ranks.backend = "nccl" if device.type == "cuda" else "gloo"
    if ranks.distributed and not dist.is_initialized():
        dist.init_process_group(ranks.backend, **({"device_id": device} if device.type == "cuda" else {}))
    return ranks


def _dataset(cfg: DDPConfig, ranks: _Ranks):
    """Rank 0 generates (or finds) the dataset; every rank then loads it. Returns ``(ref, train, test)``."""
    import data

    ref = [data.generate(cfg.dataset, progress=False) if ranks.rank == 0 else None]
    if ranks.distributed:
        dist.broadcast_object_list(ref, src=0)
    ref = ref[0]
    return ref, pairs(data.load(ref, "train")), pairs(data.load(ref, "test"))


def _checkpoint_path(cfg: DDPConfig, digest: str) -> Path:
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    import data

    return data.home() / "models" / f"operator-ddp-{cfg.train.key()}-{digest[:12]}" / "checkpoint.pt"


def _tracking(cfg: DDPConfig, ranks: _Ranks, ref, path: Path):
    """Rank 0's MLflow run (a context yielding its id); a no-op yielding None elsewhere."""
    if ranks.rank != 0 or not cfg.mlflow:
        return contextlib.nullcontext(None)
    from flows import tracking

    @contextlib.contextmanager
    def run():
        params = {"config": cfg.train.model_dump(mode="json"), "config_key": cfg.train.key(),
                  "dataset": cfg.dataset.model_dump(mode="json"), "world_size": ranks.world, "backend": ranks.backend,
                  "threads_per_rank": torch.get_num_threads(), "local_batch": cfg.train.batch_size // ranks.world,
                  "checkpoint": str(path)}
        name = f"train-operator-ddp-{cfg.train.model.name}-{cfg.dataset.family}-{cfg.dataset.n}-x{ranks.world}"
        with tracking.mlflow_run(name, params, {"sciflow.stage": "train-operator-ddp"}) as run_id:
            tracking.log_dataset(run_id, ref, "training")
            yield run_id

    return run()


def train_ddp(cfg: DDPConfig, hash_dir: str | Path | None = None) -> dict:
    """Run on every rank (see the module docstring). Returns the summary (the same on every rank
    except ``mlflow_run_id``, which only rank 0 has): world size, backend, threads, batches,
    per-epoch history (``loss``, ``test_l2``, ``test_h1``, ``lr``, ``seconds`` = the slowest rank's
    training time), final errors, checkpoint path and the weights' hash."""
    ranks = _setup(cfg)
    try:
        return _train(cfg, ranks, hash_dir)
    finally:
        if ranks.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: DDPConfig, ranks: _Ranks, hash_dir) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler

    tc = cfg.train
    if tc.batch_size % ranks.world:
        raise ValueError(f"batch_size (the global batch, {tc.batch_size}) must be divisible by the "
                         f"{ranks.world} ranks")
    local_batch = tc.batch_size // ranks.world
    ref, (x, y), (xt, yt) = _dataset(cfg, ranks)
    periodic = cfg.dataset.family == "navier_stokes"
    if x.shape[1] != tc.model.in_channels or y.shape[1] != tc.model.out_channels:
        raise ValueError(f"data has {x.shape[1]} input / {y.shape[1]} output channels; the model config "
                         f"expects {tc.model.in_channels} / {tc.model.out_channels}")
    path = _checkpoint_path(cfg, ref.digest)
    torch.manual_seed(tc.seed)
    model = build_model(tc.model, periodic=periodic).to(ranks.device)
    net = DDP(model, device_ids=[ranks.device.index] if ranks.device.type == "cuda" else None) if ranks.distributed \
        else model
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=tc.step_size, gamma=tc.gamma)
    history, start = [], 0
    if path.exists():  # every rank reads it (a shared filesystem on a cluster)
        ckpt = load_checkpoint(path)
        _check_config(ckpt, tc, path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history, start = list(ckpt["history"]), int(ckpt["epoch"])
    loss_fn = losses(periodic)[tc.loss]
    sampler = DistributedSampler(x, num_replicas=ranks.world, rank=ranks.rank, shuffle=True, seed=tc.seed)
    shard = slice(ranks.rank, None, ranks.world)  # this rank's test samples
    with _tracking(cfg, ranks, ref, path) as run_id:
        for epoch in range(start + 1, tc.epochs + 1):
            net.train()
            sampler.set_epoch(epoch)
            idx_all = torch.tensor(list(sampler))
            t0, total = time.perf_counter(), 0.0
            for i in range(0, len(idx_all), local_batch):
                idx = idx_all[i:i + local_batch]
                xb, yb = x[idx].to(ranks.device), y[idx].to(ranks.device)
                loss = loss_fn(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                (loss / len(idx)).backward()  # DDP averages over ranks: the global batch's mean
                gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))  # same on every rank
                if not torch.isfinite(gnorm):
                    raise TrainingDivergedError(
                        f"non-finite gradient in epoch {epoch}; the last good checkpoint "
                        f"({'epoch ' + str(epoch - 1) if epoch > 1 else 'none'}) is kept. Lower lr (now {tc.lr}).")
                opt.step()
                total += float(loss.detach())
            seconds = time.perf_counter() - t0
            lr = opt.param_groups[0]["lr"]
            sched.step()
            err = evaluate(model, xt[shard], yt[shard], periodic=periodic) if len(xt[shard]) else {"l2": 0.0, "h1": 0.0}
            n_shard = len(xt[shard])
            loss_sum, n_seen, l2, h1 = ranks.reduce([total, len(idx_all), err["l2"] * n_shard, err["h1"] * n_shard])
            seconds = ranks.reduce([seconds], dist.ReduceOp.MAX if ranks.distributed else None)[0]
            row = {"epoch": epoch, "loss": loss_sum / n_seen, "lr": lr, "seconds": seconds,
                   "test_l2": l2 / len(xt), "test_h1": h1 / len(xt)}
            history.append(row)
            if ranks.rank == 0:
                _save_atomic({"config": tc.model_dump(mode="json"), "epoch": epoch, "model": weights(model),
                              "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "history": history,
                              "world_size": ranks.world}, path)
                if run_id is not None:
                    from flows import tracking

                    tracking.log_metrics(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                print(f"epoch {epoch}/{tc.epochs} loss {row['loss']:.4f} test L2 {row['test_l2']:.4f} "
                      f"H1 {row['test_h1']:.4f} ({seconds:.1f} s, {ranks.world} rank(s))", file=sys.stderr, flush=True)
        digest = state_hash(model)
        if hash_dir is not None:
            Path(hash_dir).mkdir(parents=True, exist_ok=True)
            (Path(hash_dir) / f"rank{ranks.rank}.json").write_text(json.dumps(
                {"rank": ranks.rank, "world_size": ranks.world, "pid": os.getpid(), "sha256": digest}))
        summary = {"world_size": ranks.world, "backend": ranks.backend if ranks.distributed else "none",
                   "device": str(ranks.device), "threads_per_rank": torch.get_num_threads(),
                   "global_batch": tc.batch_size, "local_batch": local_batch, "epochs": tc.epochs,
                   "dataset": ref.path, "dataset_digest": ref.digest, "n_train": len(x), "n_test": len(xt),
                   "history": history, "test_l2": history[-1]["test_l2"] if history else None,
                   "test_h1": history[-1]["test_h1"] if history else None, "checkpoint": str(path),
                   "weights_sha256": digest, "mlflow_run_id": run_id}
    if ranks.distributed:
        dist.barrier()  # rank 0's run is ended before anyone reports success
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m operators.fno.ddp",
                                description="DistributedDataParallel FNO training on a stored dataset.")
    p.add_argument("--scale", choices=tuple(SCALES), default="smoke")
    p.add_argument("--family", choices=("darcy", "navier_stokes"))
    p.add_argument("--n", type=int, help="resolution")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch (split over the ranks)")
    p.add_argument("--hidden", type=int, help="hidden channels")
    p.add_argument("--modes", type=int, help="Fourier modes per dimension")
    p.add_argument("--model", choices=("fno", "tfno", "mg-tfno"))
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="intra-op threads per rank (CPU)")
    p.add_argument("--checkpoint", help="checkpoint file (an existing one is resumed)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--hash-dir", help="every rank writes the hash of its final weights here (tests)")
    p.add_argument("--out", type=Path, help="rank 0 writes the summary JSON here")
    args = p.parse_args(argv)
    cfg = config_for(args.scale, family=args.family, n=args.n, n_train=args.n_train, n_test=args.n_test,
                     epochs=args.epochs, batch_size=args.batch_size, hidden=args.hidden, modes=args.modes,
                     model=args.model, lr=args.lr, seed=args.seed, threads=args.threads, checkpoint=args.checkpoint,
                     mlflow=False if args.no_mlflow else None)
    summary = train_ddp(cfg, hash_dir=args.hash_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(summary)
        print(text, flush=True)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
    return summary


if __name__ == "__main__":
    main()

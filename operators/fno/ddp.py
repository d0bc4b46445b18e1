"""Data-parallel neural-operator training with ``torch.nn.parallel.DistributedDataParallel``.

    torchrun --nproc_per_node 2 -m flows.operator_ddp --scale smoke          # 2 processes, gloo on CPU
    torchrun --nproc_per_node 8 -m flows.operator_ddp --scale paper          # 8 GPUs, NCCL
    python -m flows.operator_ddp --scale small                               # 1 process, no process group

(the command line and its MLflow logging live in :mod:`flows.operator_ddp`; this module is the
library part). The recipe is :class:`operators.fno.train.OperatorTask` in the one training loop
(:func:`operators.training.fit`) with the world size of the process group, so the checkpoints are
those of :func:`operators.fno.train.train` and either resumes the other's:

* every rank builds the model from the same seed; DDP broadcasts rank 0's weights and averages the
  gradients after each backward, so the weights stay identical on every rank;
* the **global** batch ``batch_size`` is the one of the 1-process run: every rank draws the same
  shuffle and takes every ``WORLD_SIZE``-th sample of each global batch, and the averaged
  gradient is the global batch's mean gradient, so one process and N ranks see the same batches;
* the test set is evaluated in shards, one per rank, and the errors summed across ranks;
* **rank 0 alone** generates the dataset (cached by spec hash; the others wait, then load it),
  writes the checkpoint and enters the caller's ``tracker`` (e.g. an MLflow run); other ranks
  never touch either;
* backend ``nccl`` with one GPU per local rank when CUDA is present, else ``gloo``; on CPU each rank
  uses ``cores / LOCAL_WORLD_SIZE`` intra-op threads (1 when 2 ranks share 2 cores).

A non-finite loss on any rank stops every rank with :class:`data.errors.TrainingDivergedError`; the
last good checkpoint stays. ``hash_dir`` (tests) makes every rank write the SHA-256 of its final
weights to ``<dir>/rank<r>.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from data.errors import InputError
from data.io import write_text
from data.spec import DarcySpec, NavierStokesSpec

from ..checkpoint import weights
from ..device import default_device
from ..training import OnEpoch, fit
from .models import OperatorModelConfig
from .train import OperatorTask, OperatorTrainConfig, pairs

#: ``tracker(facts)``: a context manager entered on rank 0 around the training, yielding an
#: ``on_epoch`` callback (or None); ``facts``: config, dataset ref, world size, backend, threads,
#: batches and checkpoint path
Tracker = Callable[[dict], AbstractContextManager[OnEpoch | None]]

NS_FLOW = dict(viscosity=1e-4, t0=0.0, horizon=5.0)  # the operators benchmark's w(0) -> w(5)
SCALES = {  # dataset + training budget per scale (global batch)
    "smoke": dict(family="darcy", n=16, n_train=32, n_test=8, epochs=1, batch_size=8, hidden=8, modes=4),
    # 2 CPU cores: about 35 s per epoch with one process (see infra/SCALEOUT.md)
    "small": dict(family="darcy", n=64, n_train=2000, n_test=200, epochs=3, batch_size=16, hidden=32, modes=16),
    "paper": dict(
        family="navier_stokes", n=128, n_train=10000, n_test=1000, epochs=100, batch_size=32, hidden=64, modes=32
    ),
}


class DDPConfig(BaseModel):
    """One data-parallel training run: which data, which training config, where the checkpoint goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DarcySpec | NavierStokesSpec = Field(discriminator="family")
    train: OperatorTrainConfig
    checkpoint: str | None = Field(
        default=None, description="default: $SCIFLOW_HOME/models/operator-ddp-<key>-<digest>/"
    )
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="intra-op threads per rank (default cores / local ranks)"
    )


def config_for(scale: Literal["smoke", "small", "paper"], **overrides) -> DDPConfig:
    """The :class:`DDPConfig` of a scale; ``overrides`` replace entries of :data:`SCALES`
    (``family, n, n_train, n_test, epochs, batch_size, hidden, modes``) or ``model``, ``lr``,
    ``loss``, ``step_size``, ``checkpoint``, ``threads``, ``seed``."""
    if scale not in SCALES:
        raise InputError(f"scale must be one of {tuple(SCALES)}, got {scale!r}")
    c = {**SCALES[scale], **{k: v for k, v in overrides.items() if k in SCALES[scale] and v is not None}}
    extra = {k: v for k, v in overrides.items() if k not in SCALES[scale] and v is not None}
    seed = extra.pop("seed", 0)
    spec: DarcySpec | NavierStokesSpec
    if c["family"] == "darcy":
        spec = DarcySpec.model_validate(dict(n=c["n"], n_train=c["n_train"], n_test=c["n_test"], seed=seed))
    else:
        spec = NavierStokesSpec.model_validate(
            dict(n=c["n"], n_train=c["n_train"], n_test=c["n_test"], seed=seed, **NS_FLOW)
        )
    model = OperatorModelConfig(name=extra.pop("model", "fno"), hidden_channels=c["hidden"], n_modes=c["modes"])
    train_fields = {k: extra.pop(k) for k in ("lr", "loss", "step_size") if k in extra}
    train = OperatorTrainConfig.model_validate(
        dict(model=model, epochs=c["epochs"], batch_size=c["batch_size"], seed=seed, **train_fields)
    )
    return DDPConfig(dataset=spec, train=train, **extra)


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the model's weights (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, t in sorted(weights(model).items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Ranks:
    """World facts from torchrun's environment; a lone process (no ``WORLD_SIZE``) is rank 0 of 1
    and creates no process group. :meth:`setup` picks the device and threads and joins the group."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        self.distributed = "WORLD_SIZE" in os.environ
        self.device = default_device()
        self.backend = "nccl" if self.device.type == "cuda" else "gloo"

    def setup(self, threads: int | None = None) -> Ranks:
        """Threads, device and (under torchrun) the process group."""
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            torch.set_num_threads(threads or max(1, _cores() // self.local_world))
        if self.distributed and not dist.is_initialized():
            if self.device.type == "cuda":
                dist.init_process_group(self.backend, device_id=self.device)
            else:
                dist.init_process_group(self.backend)
        return self


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _dataset(cfg: DDPConfig, ranks: Ranks):
    """Rank 0 generates (or finds) the dataset; every rank then loads it. Returns ``(ref, train, test)``."""
    import data

    box = [data.generate(cfg.dataset, progress=False) if ranks.rank == 0 else None]
    if ranks.distributed:
        dist.broadcast_object_list(box, src=0)
    ref = box[0]
    assert ref is not None  # rank 0 generated it; the broadcast delivered it to every rank
    return ref, pairs(data.load(ref, "train")), pairs(data.load(ref, "test"))


def checkpoint_path(cfg: DDPConfig, digest: str) -> Path:
    """``cfg.checkpoint``, or ``$SCIFLOW_HOME/models/operator-ddp-<config key>-<digest[:12]>/checkpoint.pt``."""
    if cfg.checkpoint:
        return Path(cfg.checkpoint)
    import data

    return data.home() / "models" / f"operator-ddp-{cfg.train.key()}-{digest[:12]}" / "checkpoint.pt"


def train_ddp(cfg: DDPConfig, hash_dir: str | Path | None = None, tracker: Tracker | None = None) -> dict:
    """Run on every rank (see the module docstring). Returns the summary (the same on every rank):
    world size, backend, threads, batches, per-epoch history (``loss``, ``test_l2``, ``test_h1``,
    ``lr``, ``seconds`` = the slowest rank's training time), final errors, checkpoint path and the
    weights' hash. ``tracker``: see :data:`Tracker` (rank 0 only)."""
    ranks = Ranks().setup(cfg.threads)
    try:
        summary = _train(cfg, ranks, hash_dir, tracker)
        if ranks.distributed:
            dist.barrier()  # rank 0's tracker is closed before anyone reports success
        return summary
    finally:
        if ranks.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: DDPConfig, ranks: Ranks, hash_dir, tracker: Tracker | None) -> dict:
    tc = cfg.train
    ref, (x, y), (xt, yt) = _dataset(cfg, ranks)
    task = OperatorTask(tc, (x, y), (xt, yt), periodic=cfg.dataset.family == "navier_stokes")
    path = checkpoint_path(cfg, ref.digest)
    facts = {
        "config": tc,
        "dataset": ref,
        "world_size": ranks.world,
        "backend": ranks.backend,
        "threads_per_rank": torch.get_num_threads(),
        "local_batch": tc.batch_size // ranks.world,
        "checkpoint": str(path),
    }
    track = tracker(facts) if tracker is not None and ranks.rank == 0 else contextlib.nullcontext(None)
    with track as on_epoch:
        model, history = fit(task, path, on_epoch, world_size=ranks.world, rank=ranks.rank, device=ranks.device)
    digest = state_hash(model)
    if hash_dir is not None:
        write_text(
            Path(hash_dir) / f"rank{ranks.rank}.json",
            json.dumps({"rank": ranks.rank, "world_size": ranks.world, "pid": os.getpid(), "sha256": digest}),
        )
    return {
        "world_size": ranks.world,
        "backend": ranks.backend if ranks.distributed else "none",
        "device": str(ranks.device),
        "threads_per_rank": torch.get_num_threads(),
        "global_batch": tc.batch_size,
        "local_batch": tc.batch_size // ranks.world,
        "epochs": tc.epochs,
        "dataset": ref.path,
        "dataset_digest": ref.digest,
        "n_train": len(x),
        "n_test": len(xt),
        "history": history,
        "test_l2": history[-1]["test_l2"] if history else None,
        "test_h1": history[-1]["test_h1"] if history else None,
        "checkpoint": str(path),
        "weights_sha256": digest,
    }


__all__ = [
    "DDPConfig",
    "NS_FLOW",
    "Ranks",
    "SCALES",
    "Tracker",
    "checkpoint_path",
    "config_for",
    "state_hash",
    "train_ddp",
]

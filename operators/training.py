"""The one training loop of every learned model.

    model, history = fit(task, checkpoint="model.pt", on_epoch=log)

A :class:`TrainingTask` holds what differs between model kinds: how to build the network and its
optimizer, one epoch of training, the evaluation after an epoch. :func:`fit` does the rest, the
same way for every kind:

* **resume**: an existing ``checkpoint`` (:mod:`operators.checkpoint`) is loaded weights-only,
  refused if it belongs to another kind or config, and training continues after its last epoch
  with the weights, optimizer, scheduler, history and RNG states it stored, so an interrupted and
  resumed run gives the rows of an uninterrupted one;
* **divergence guard**: a non-finite loss (checked by the task through :meth:`World.all_finite`)
  or non-finite weights after an epoch raise :class:`data.errors.TrainingDivergedError`; nothing
  past the last good epoch is written;
* **atomic checkpoints** after every epoch (:func:`operators.checkpoint.save_checkpoint`: fsync
  and rename through :func:`data.io.atomic_path`);
* **data parallelism**: ``world_size > 1`` trains in the caller's ``torch.distributed`` process
  group: the model is wrapped in ``DistributedDataParallel``, each rank takes its
  :meth:`World.shard` of every batch, and rank 0 alone writes checkpoints and calls ``on_epoch``;
* **tracking**: ``on_epoch(index, row)`` for every history row once its epoch is checkpointed.

An *epoch* is the unit between checkpoints. Step budgets (hard-constraint training) make an epoch
``checkpoint_every`` optimizer steps; such a task may return any number of history rows per epoch,
indexed by ``counter = "step"`` instead of ``"epoch"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from pydantic import BaseModel
from torch import nn

from data.errors import InputError, TrainingDivergedError

from .checkpoint import FORMAT, config_json, load_checkpoint, save_checkpoint, weights
from .device import record, resolve_device

#: ``on_epoch(index, row)``: ``index`` is the row's epoch (or step, for step budgets)
OnEpoch = Callable[[int, dict], None]
#: a task's typed training config
ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True)
class World:
    """The data-parallel world a training run is part of: ``size`` ranks, this one ``rank``.

    ``size == 1`` is a lone process (no process group); ``size > 1`` needs an initialized
    ``torch.distributed`` process group of that size (e.g. under ``torchrun``)."""

    size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise InputError(
                f"world_size={self.size}, rank={self.rank}: need world_size >= 1 and 0 <= rank < world_size"
            )
        if self.size > 1:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise InputError(
                    f"world_size={self.size} needs an initialized torch.distributed process group "
                    "(run under torchrun and call init_process_group), or world_size=1"
                )
            if (dist.get_world_size(), dist.get_rank()) != (self.size, self.rank):
                raise InputError(
                    f"world_size={self.size}, rank={self.rank} disagree with the process group "
                    f"({dist.get_world_size()} ranks, this one {dist.get_rank()})"
                )

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of sample indices (every ``size``-th, from ``rank``)."""
        return index if self.size == 1 else index[self.rank :: self.size]

    def _reduce(self, values: Sequence[float], op: str) -> list[float]:
        if self.size == 1:
            return list(values)
        import torch.distributed as dist

        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks (the values themselves for one rank)."""
        return self._reduce(values, "sum")

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maxima over the ranks."""
        return self._reduce(values, "max")

    def all_finite(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is finite on every rank (one all-reduce per call when ``size > 1``), so all
        ranks stop together on a divergence."""
        ok = bool(torch.isfinite(value).all())
        return ok if self.size == 1 else self.max([0.0 if ok else 1.0])[0] == 0.0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``DistributedDataParallel(model)`` for ``size > 1`` (the forward to train through), else ``model``."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class TrainingTask(ABC, Generic[ConfigT]):
    """One model kind's part of :func:`fit`.

    Attributes:
        kind: the model kind (a name of :data:`operators.registry.KINDS`), stored in checkpoints.
        counter: the key of the index in a history row (``"epoch"``, or ``"step"`` for step budgets).
        distributed: whether :meth:`train_epoch` splits its batches over a :class:`World` of > 1 rank.
        config: the typed training config (stored as JSON; a checkpoint of another config is refused).
        epochs: the number of epochs (units between checkpoints).
        gen: the ``"shuffle"`` stream of the default :meth:`generators`.
    """

    kind: ClassVar[str]
    counter: ClassVar[str] = "epoch"
    distributed: ClassVar[bool] = False
    config: ConfigT
    epochs: int
    gen: torch.Generator

    @abstractmethod
    def build(self, device: torch.device, world: World) -> nn.Module:
        """Seed, prepare the data and return the untrained network on ``device``."""

    def optimizers(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer and the learning-rate scheduler (``None``: none) for ``model``; the
        scheduler steps once after every epoch. Default: Adam at the config's ``lr``, no scheduler."""
        config: Any = self.config  # a config without ``lr`` overrides this method
        return torch.optim.Adam(model.parameters(), lr=config.lr), None

    def generators(self) -> dict[str, torch.Generator]:
        """The task's RNG streams by name (created afresh; their states are checkpointed). Default:
        one stream, ``"shuffle"``, seeded from the config's ``seed`` and kept as :attr:`gen`."""
        config: Any = self.config  # a config without ``seed`` overrides this method
        self.gen = torch.Generator().manual_seed(config.seed)
        return {"shuffle": self.gen}

    @abstractmethod
    def train_epoch(self, epoch: int, net: nn.Module, opt: torch.optim.Optimizer, world: World) -> list[dict]:
        """Train epoch ``epoch`` (1-based) through ``net`` (the model, or its DDP wrapper); return the
        history rows it produced (one per epoch, or any number for step budgets). Raise
        :meth:`diverged` on a non-finite loss."""

    def evaluate(self, model: nn.Module, world: World) -> dict:
        """Metrics after an epoch, added to the epoch's last row (default: none)."""
        return {}

    def context(self) -> dict:
        """What the network's constructor needs beyond the config (stored in checkpoints)."""
        return {}

    def progress(self, epoch: int) -> dict:
        """Extra checkpoint fields after ``epoch`` (e.g. ``{"step": ...}`` for step budgets)."""
        return {}

    def position(self, epoch: int) -> str:
        """``epoch`` in words for messages (``"epoch 3"``, ``"step 150"``)."""
        return f"epoch {epoch}"

    def step(self, objective: torch.Tensor, opt: torch.optim.Optimizer, epoch: int, world: World) -> None:
        """One optimizer step on ``objective``, refused (:meth:`diverged`) when it is not finite
        on any rank."""
        if not world.all_finite(objective):
            raise self.diverged(f"non-finite training loss ({float(objective.detach())}) in epoch {epoch}", epoch)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()

    def diverged(self, what: str, epoch: int) -> TrainingDivergedError:
        """The error for a divergence during ``epoch``: ``what`` happened, the last good state is kept."""
        last = self.position(epoch - 1) if epoch > 1 else "none"
        lr = getattr(self.config, "lr", None)
        return TrainingDivergedError(
            f"{what}; nothing after the last good checkpoint ({last}) is written. Lower lr (now {lr})."
        )


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def fit(
    task: TrainingTask[Any],
    checkpoint: str | Path | None = None,
    on_epoch: OnEpoch | None = None,
    *,
    world_size: int = 1,
    rank: int = 0,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train ``task``'s model for ``task.epochs`` epochs; resume from ``checkpoint`` if it exists.

    Args:
        checkpoint: file written atomically after every epoch (rank 0 only); an existing one is resumed.
        on_epoch: ``(index, row)`` for every history row, after its epoch's checkpoint (rank 0 only).
        world_size, rank: the data-parallel world (see :class:`World`); ``world_size > 1`` needs the
            process group and a task with ``distributed = True``.
        device: where to train (default :func:`operators.device.default_device`); the task moves
            its data there once, in :meth:`TrainingTask.build`.

    Returns:
        ``(model, history)``: the trained model (unwrapped) and every history row, the resumed
        checkpoint's included.

    Raises:
        TrainingDivergedError: non-finite loss or weights (the last checkpoint is the last good epoch).
        CheckpointError: the checkpoint is unreadable or belongs to another kind or configuration.
    """
    world = World(world_size, rank)
    if world.size > 1 and not task.distributed:
        raise InputError(f"{task.kind!r} training does not split batches over ranks; use world_size=1")
    dev = resolve_device(device)
    model = task.build(dev, world)
    record(f"{task.kind} training", dev)
    opt, sched = task.optimizers(model)
    gens = task.generators()
    net = world.wrap(model, dev)
    path = Path(checkpoint) if checkpoint is not None else None
    history: list[dict] = []
    done = 0
    if path is not None and path.exists():  # every rank reads it (a shared filesystem on a cluster)
        ckpt = load_checkpoint(path, task.kind, task.config)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if sched is not None:
            sched.load_state_dict(ckpt["scheduler"])
        rng = ckpt.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        for name, gen in gens.items():
            gen.set_state(rng[name])
        history, done = list(ckpt["history"]), int(ckpt["epoch"])
    for epoch in range(done + 1, task.epochs + 1):
        rows = task.train_epoch(epoch, net, opt, world)
        if sched is not None:
            sched.step()
        if not _all_finite(model):
            raise task.diverged(f"non-finite weights after {task.position(epoch)} (not checkpointed)", epoch)
        metrics = task.evaluate(model, world)
        if metrics and rows:
            rows[-1].update(metrics)
        history.extend(rows)
        if world.rank != 0:
            continue
        if path is not None:
            save_checkpoint(
                {
                    "format": FORMAT,
                    "kind": task.kind,
                    "config": config_json(task.config),
                    "context": task.context(),
                    "epoch": epoch,
                    **task.progress(epoch),
                    "model": weights(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "history": history,
                    "rng": {"torch": torch.get_rng_state(), **{name: g.get_state() for name, g in gens.items()}},
                    "world_size": world.size,
                },
                path,
            )
        if on_epoch is not None:
            for row in rows:
                on_epoch(int(row[task.counter]), row)
    return model, history


__all__ = ["OnEpoch", "TrainingTask", "World", "fit"]

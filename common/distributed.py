"""Data-parallel training under ``torchrun``: the process group and a sharded in-memory loader.

``torchrun --nproc_per_node=K -m common.train ...`` starts K processes and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; :func:`setup`
reads them and joins the group (``nccl`` on CUDA, one GPU per process; ``gloo`` on the CPU).
Without those variables everything here is a no-op for one process.

Same training as one process. :class:`ShardedLoader` draws the *global* order of the epoch
from a generator seeded identically on every rank, cuts it into the same global batches a
single process would use, augments the whole global batch (so every rank draws the same
crops and flips), and gives rank ``r`` its slice (``torch.tensor_split`` of the batch into
``world`` parts). Its ``loss_weight`` is ``local size * world / global size``, which
``common.training.fit`` multiplies into the rank's mean loss: DDP averages the ranks'
gradients, so the step uses the gradient of the mean loss over the global batch, even for a
last batch that does not split evenly. What still differs from one process is the order of
floating-point sums (per-rank means, then an all-reduce) and anything computed per rank:
BatchNorm statistics (over the rank's slice, unless converted to SyncBatchNorm) and
dropout masks (drawn from each rank's global generator).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from .data import TensorLoader

__all__ = ["Context", "setup", "cleanup", "ShardedLoader"]


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> Context:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    ``device`` is the device chosen for a single process; on CUDA each process takes
    ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise RuntimeError(f"distributed training runs on CUDA (nccl) or the CPU (gloo), not on {device}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedLoader(TensorLoader):
    """A :class:`common.data.TensorLoader` of which rank ``rank`` of ``world_size`` yields its slice.

    ``batch_size`` is the *global* batch (a multiple of ``world_size``); every rank must be
    built with the same tensors, ``seed`` and ``transform``.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, rank: int, world_size: int,
                 shuffle: bool = False, drop_last: bool = False, seed: int = 0, transform=None):
        super().__init__(*tensors, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                         transform=transform)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        if batch_size % world_size:
            raise ValueError(f"the global batch size {batch_size} is not a multiple of the {world_size} processes")
        last = self.num_examples % batch_size
        if not drop_last and 0 < last < world_size:
            raise ValueError(f"the last batch holds {last} examples, fewer than the {world_size} processes; "
                             f"change the batch size or the number of examples")
        self.rank, self.world_size = rank, world_size
        self.loss_weight = 1.0

    def __iter__(self) -> Iterator[tuple]:
        for batch in super().__iter__():              # the global batch, already transformed
            parts = [torch.tensor_split(t, self.world_size)[self.rank] for t in batch]
            self.loss_weight = parts[0].shape[0] * self.world_size / batch[0].shape[0]
            yield tuple(parts)

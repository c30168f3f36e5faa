"""Data-parallel helpers for runs launched with ``torchrun`` (gloo on CPU, NCCL on GPU)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler


STRATEGIES = ("ddp", "fsdp")  # train.strategy: replicate the model (DDP) or shard it (FSDP2, lors.fsdp_wrap)


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when started by torchrun; returns (rank, world_size)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def launched_rank() -> tuple[int, int]:
    """(rank, world size) of this process as torchrun announces them in the environment ((0, 1) otherwise)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def wrap(model: nn.Module, world_size: int) -> nn.Module:
    """``DistributedDataParallel(model)`` in a multi-process run, the model itself otherwise."""
    return DistributedDataParallel(model) if world_size > 1 else model


def train_loader(dataset, batch_size: int, seed: int, collate_fn=None, num_workers: int = 0) -> DataLoader:
    """A training loader whose sampler shards ``dataset`` over the torchrun processes and shuffles by
    (seed, epoch); the Trainer calls its ``set_epoch`` every epoch."""
    rank, world = launched_rank()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False, num_workers=num_workers,
                      collate_fn=collate_fn)

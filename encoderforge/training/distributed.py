"""Distributed setup for torchrun (DDP): read the environment torchrun sets, pick the backend and device.

Launch with `torchrun --nproc_per_node K -m encoderforge pretrain ...`; a plain `python -m` run is world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU.

    Args:
        device: "auto" (CUDA if available), "cpu" or "cuda".
    Returns:
        this process's rank, world size and device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    """Sum a few floats over all processes (one collective); identity for a single process."""
    if dist.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t)
    return t.tolist()


def all_reduce_dict(values: dict[str, float], dist: Dist) -> dict[str, float]:
    """Sum named floats over all processes; a key missing on some process counts as 0 there. Task eval stats are
    sparse (per-class counts only for classes a rank's share holds), so ranks can hold different keys: agree on
    the union first, or the collectives would pair vectors of different keys (gloo then hangs)."""
    if dist.world == 1:
        return dict(values)
    key_sets: list[list[str] | None] = [None] * dist.world
    tdist.all_gather_object(key_sets, sorted(values))
    keys = sorted(set().union(*(k or [] for k in key_sets)))
    return dict(zip(keys, all_reduce_sum([values.get(k, 0.0) for k in keys], dist)))


def barrier(dist: Dist) -> None:
    if dist.world > 1:
        tdist.barrier()


def teardown(dist: Dist) -> None:
    if dist.world > 1 and tdist.is_initialized():
        tdist.destroy_process_group()

"""Data parallelism with torch.distributed, launched by torchrun.

``torchrun --nproc-per-node N -m superpos fit ...`` (and multi-node with the usual rendezvous flags)
starts N copies; each calls ``init_from_env`` (NCCL on CUDA, gloo on CPU). Every rank reads the same
shuffled stream of *global* batches (``--batch-size`` is the global batch) and trains on its own slice
of each (``shard``); gradients are averaged in one flat all-reduce per step, and firing counts are
summed, so dead-latent statistics, decoder normalisation and every parameter stay identical across
ranks. Only rank 0 writes checkpoints and the result; a checkpoint resumes on any world size because
the global batch, and with it the stream, does not depend on the number of ranks.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from superpos.errors import SuperposError


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when not running under torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (or without torchrun)."""
    return world()[0] == 0


def init_from_env(device: str = "auto") -> str:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns this rank's device spec."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if n <= 1 or dist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise SuperposError("--device cuda requested but no CUDA device is available (use --device cpu or auto)")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch: int) -> None:
    """Refuse a global batch that the ranks cannot split evenly."""
    n = world()[1]
    if batch % n:
        raise SuperposError(f"--batch-size {batch} (the global batch) must be divisible by the {n} ranks")


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's equal slice of a global batch."""
    rank, n = world()
    if n == 1:
        return x
    b = len(x) // n
    return x[rank * b:(rank + 1) * b]


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op on one process)."""
    if world()[1] > 1:
        dist.all_reduce(t)
    return t


def average_grads_(params) -> None:
    """Average the gradients of ``params`` over ranks: one flat all-reduce, as DDP's bucket does."""
    n = world()[1]
    if n == 1:
        return
    params = [p for p in params if p.grad is not None]
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= n
    i = 0
    for p in params:
        p.grad.copy_(flat[i:i + p.grad.numel()].view_as(p.grad))
        i += p.grad.numel()

"""Data-parallel execution through PyTorch's own distributed engine (torchrun; gloo on CPU, NCCL on GPU).

Semantics, identical for 1 and N processes: `batch_size` is the global batch (each rank takes its slice of
every global batch), the learning rate belongs to that global batch, and an epoch is the same sequence of
global batches. Rank 0 alone writes logs, metrics, checkpoints and summary.json.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Return True on the process that writes files (rank 0)."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Return True when more than one process takes part."""
        return self.world_size > 1


_INFO = DistInfo()


def info() -> DistInfo:
    """Return the current process's distributed info (single process unless `init` ran under torchrun)."""
    return _INFO


def launched_by_torchrun() -> bool:
    """Return True when the environment carries torchrun's variables for a multi-process job."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init(backend: str = "auto", timeout_seconds: float = 120.0) -> DistInfo:
    """Join the process group described by torchrun's environment; return this process's info."""
    global _INFO
    if not launched_by_torchrun():
        _INFO = DistInfo()
        return _INFO
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        # A bounded timeout: a rank that died makes the others fail with a message instead of hanging.
        dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout_seconds))
    _INFO = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if backend == "nccl":
        torch.cuda.set_device(_INFO.local_rank)
    return _INFO


def shutdown() -> None:
    """Leave the process group (no-op in a single process)."""
    global _INFO
    if dist.is_available() and dist.is_initialized():
        # Leave together: rank 0 hosts the rendezvous store, and a rank still talking to it when rank 0
        # exits aborts instead of finishing cleanly.
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
    _INFO = DistInfo()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Return the element-wise sum of `t` over all ranks (the tensor itself in a single process)."""
    if _INFO.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of parameters that live outside DDP (objective adapters) over all ranks."""
    if not _INFO.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(_INFO.world_size)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _INFO.enabled:
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Return rank 0's value of `obj` on every rank (the value itself in a single process)."""
    if not _INFO.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]

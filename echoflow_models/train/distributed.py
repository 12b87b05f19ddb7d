"""Data parallelism for the trainers: one process per device under `torchrun`, gradients averaged with
`torch.distributed` (NCCL on GPUs, gloo on CPUs).

Without torchrun (no ``WORLD_SIZE`` in the environment, or ``WORLD_SIZE=1``) every function here is a
no-op for rank 0 of a world of 1, so single-process runs execute exactly the code they always did.

Why gradients are all-reduced after backward instead of wrapping models in `DistributedDataParallel`: the
A-VAE trainer calls ``encode``/``decode`` (not ``forward``, where DDP hooks in), takes ``autograd.grad`` for
its adaptive GAN weight and steps two optimizers; one flat all-reduce per optimizer step is the same
arithmetic as DDP (the average of the ranks' gradients) for every stage, and gradient accumulation needs no
``no_sync``. What it does not do is overlap communication with the backward pass (docs/scale.md).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_world() -> World:
    """Rank, world size and local rank from torchrun's environment (a world of 1 without torchrun)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> World:
    """Join torchrun's process group (once per process): NCCL when `device` is CUDA (which is then this
    rank's ``cuda:LOCAL_RANK``), else gloo. A world of 1 initialises nothing."""
    world = launched_world()
    if not world.distributed or dist.is_initialized():
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return world


def rank_device(name: str, world: World) -> str:
    """Under torchrun with CUDA, "auto"/"cuda" mean this rank's GPU (``cuda:LOCAL_RANK``); an explicit
    ``cuda:N`` for a multi-process run would put every rank on one GPU, which is refused."""
    if not world.distributed or not (name in ("auto", "cuda") or name.startswith("cuda")):
        return name
    if name.startswith("cuda:"):
        raise SystemExit(f"error: --device {name} under torchrun would put all {world.size} ranks on one GPU; "
                         "use --device cuda (each rank takes the GPU of its LOCAL_RANK)")
    if name == "auto" and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{world.local_rank}"


def current_world() -> World:
    """The world of an initialised process group (a world of 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    return current_world().is_main


def average_gradients(params) -> None:
    """Replace every gradient by its mean over the ranks, as DDP does, with one flat all-reduce. A parameter
    without a gradient on some ranks gets zeros there; one without a gradient on every rank keeps None (so
    the optimizer skips it, as in a single process)."""
    world = current_world()
    if not world.distributed:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has_grad)
    live = [p for p, n in zip(params, has_grad.tolist(), strict=True) if n > 0]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not live:
        return
    flat = torch.cat([p.grad.reshape(-1).float() for p in live])
    dist.all_reduce(flat)
    flat.div_(world.size)
    for p, part in zip(live, flat.split([p.numel() for p in live]), strict=True):
        p.grad.copy_(part.view_as(p.grad))


def broadcast_buffers(models) -> None:
    """Rank 0's buffers (e.g. BatchNorm statistics) to every rank, as DDP's `broadcast_buffers` does."""
    if not current_world().distributed:
        return
    for model in models:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over the ranks of each float value (for the logged losses of the global batch)."""
    world = current_world()
    keys = [k for k, v in values.items() if isinstance(v, float)]
    if not world.distributed or not keys:
        return values
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {**values, **{k: float(v) / world.size for k, v in zip(keys, t.tolist(), strict=True)}}


def gather_to_main(obj):
    """Every rank's `obj` as a list in rank order on rank 0 (None elsewhere); `[obj]` without a world."""
    world = current_world()
    if not world.distributed:
        return [obj]
    out = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj):
    """Rank 0's `obj` on every rank."""
    if not current_world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if current_world().distributed:
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group (at the end of a command) so NCCL/gloo shut down cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

"""PyTorch's side of data parallelism (see ``rnn/backends/world.py``): a process group set up from
torchrun's environment (gloo on CPU, NCCL on CUDA), the gradients summed over the ranks before
clipping, and checkpoints broadcast from rank 0."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rnn.backends.torch.runtime import resolve_device
from rnn.backends.world import World
from rnn.errors import PipelineError


@dataclass(frozen=True)
class TorchWorld(World):
    device: str = "cpu"

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's bytes on every rank, as tensors (no pickling, unlike broadcast_object_list)."""
        size = torch.tensor([len(data) if self.is_root else 0], dtype=torch.int64)
        size = size.to(self.device)
        dist.broadcast(size, src=0)
        if int(size.item()) == 0:
            return b""
        buffer = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.is_root:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return bytes(buffer.cpu().numpy().tobytes())

    def all_reduce_sum(self, value: float) -> float:
        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return float(total.item())

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def join_world(device_name: str) -> TorchWorld:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR/PORT): gloo on
    CPU, NCCL with one GPU per local rank on CUDA."""

    device = resolve_device(device_name)
    if not dist.is_available():
        raise PipelineError(
            "this PyTorch build has no torch.distributed",
            "install a build with distributed support",
        )
    comm = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=comm)
    return TorchWorld(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        comm=comm,
        device=f"cuda:{torch.cuda.current_device()}" if device.type == "cuda" else "cpu",
    )


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over the ranks, in one flat buffer (one collective a step)."""
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()

"""PyTorch's runtime: its version and the device a run asks for; what the engine and the
the distributed set-up both need, so neither imports the other for it."""

from __future__ import annotations

import torch

from rnn.errors import PipelineError


def framework_version() -> str:
    return torch.__version__


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; asking for an absent device is an error."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name in ("cuda", "gpu") and not torch.cuda.is_available():
        raise PipelineError(
            f"train.device={name} but PyTorch sees no CUDA device",
            "set train.device to cpu or auto",
        )
    if name == "mps" and not has_mps:
        raise PipelineError("train.device=mps but MPS is not available", "use cpu or auto")
    return torch.device("cuda" if name == "gpu" else name)

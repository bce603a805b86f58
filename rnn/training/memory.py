"""A model's memory, estimated before it is built, against what this process may use.

Without it a model too large for the machine ends in an allocator traceback, or worse, in the
kernel's OOM killer an hour into training with no word of why. The estimate counts what grows
with the configuration (weights, gradients, optimiser slots, one minibatch's activations) and is
deliberately a little generous (biases counted twice, activations kept for the backward pass and
their gradients alongside); the framework's own fixed footprint is left out, as it does not depend
on anything the user can change.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

from rnn.errors import PipelineError

FLOAT_BYTES = 4  # every engine trains in float32
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per layer
OPTIMIZER_SLOTS = {"sgd": 0, "adam": 2, "adamw": 2}  # state arrays per parameter
CUDA_DEVICES = ("cuda", "gpu")


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes a run needs, by what they hold."""

    parameters: int  # how many floats the model has
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def parameter_count(cell: str, vocab_size: int, num_hiddens: int, num_layers: int) -> int:
    """Input and recurrent weights with two bias vectors per gate block (the frameworks' layers
    keep an input and a recurrent bias), then the output layer."""
    gates, hidden = GATES[cell], num_hiddens
    count = 0
    for layer in range(num_layers):
        inputs = vocab_size if layer == 0 else hidden
        count += gates * (inputs * hidden + hidden * hidden + 2 * hidden)
    return count + hidden * vocab_size + vocab_size


def estimate(
    cell: str,
    vocab_size: int,
    num_hiddens: int,
    num_layers: int,
    batch: tuple[int, int],
    optimizer: str | None = None,
    replicas: int = 1,
) -> MemoryNeed:
    """What one model needs for a minibatch of ``batch`` = (rows, steps): training when
    ``optimizer`` names one (gradients, its slots, activations kept for backward), inference
    otherwise. ``replicas`` processes each hold their own copy of the weights (data parallelism
    on one machine); the minibatch's rows are split between them."""
    params = parameter_count(cell, vocab_size, num_hiddens, num_layers)
    weights = params * FLOAT_BYTES
    training = optimizer is not None
    rows, steps = batch
    # per row and step: each layer's gate pre-activations and outputs, its state (and an LSTM's
    # cell), then the output layer's logits, probabilities and the one-hot input
    per_token = num_layers * (2 * GATES[cell] + 2) * num_hiddens + 3 * vocab_size
    activations = rows * steps * per_token * FLOAT_BYTES * (2 if training else 1)
    return MemoryNeed(
        parameters=params,
        weights=weights * replicas,
        gradients=weights * replicas if training else 0,
        optimizer=weights * replicas * OPTIMIZER_SLOTS.get(optimizer or "sgd", 2)
        if training
        else 0,
        activations=activations,
    )


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_room() -> int | None:
    """What the process's memory cgroup still allows (v2, then v1), if it sets a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        limit, usage = _read_int(Path(limit_file)), _read_int(Path(usage_file))
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(limit - usage, 0)
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_room() -> int | None:
    """An address-space limit (``ulimit -v``) less what the process has mapped already."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(soft - int(line.split()[1]) * 1024, 0)
    except (OSError, ValueError, IndexError):
        pass
    return soft


def host_room() -> tuple[int, str] | None:
    """The most this process may still allocate on the host, and which limit says so."""
    rooms = [
        (room, what)
        for room, what in (
            (_mem_available(), "available memory"),
            (_cgroup_room(), "the cgroup's memory limit"),
            (_address_space_room(), "the address-space limit (ulimit -v)"),
        )
        if room is not None
    ]
    return min(rooms) if rooms else None


def cuda_room() -> tuple[int, str] | None:
    """Free memory on the current CUDA device, where PyTorch is installed and sees one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return free, "free GPU memory"


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**27 else f"{size / 2**20:.1f} MiB"


def check_fits(need: MemoryNeed, device: str, what: str) -> None:
    """Refuse, in one line naming both figures and the fix, a ``what`` that cannot fit on
    ``device`` (``train.device``); do nothing when the room cannot be told."""
    room = cuda_room() if device in CUDA_DEVICES else host_room()
    if room is None or need.total <= room[0]:
        return
    raise PipelineError(
        f"{what} needs about {gib(need.total)} ({need.parameters:,} parameters: weights "
        f"{gib(need.weights)}, gradients and optimiser {gib(need.gradients + need.optimizer)}, "
        f"activations {gib(need.activations)}) but {room[1]} is {gib(room[0])}",
        "use a smaller model or minibatch (models.<name>.num_hiddens or num_layers, "
        "partition.batch_size, partition.num_steps), or free memory",
    )

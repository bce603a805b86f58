"""The scratch GRU's and LSTM's per-step elementwise work as one C call per step, a tiled
transpose for the products' operands and the scatter of a first layer's table gradient
(``pointwise.c``), compiled on first use with the system's
C compiler for the machine at hand and loaded with ctypes.

Why: a step of the LSTM runs about ten eager elementwise operations between its products, each a
call of several microseconds; fused, the step is its product plus one call. Not a PyTorch
extension (no torch headers, so it compiles in a fraction of a second) and not ``torch.compile``
(a compiled call's guards cost more than the operations it would fuse at these sizes).

Built with OpenMP where the compiler has it: each step's rows are split over the threads that
the step's product just used (PyTorch's own OpenMP runtime, already loaded, so the library shares
its pool and its thread count, and rows are independent: the result does not depend on it).

The library is cached under ``$XDG_CACHE_HOME/rnn-pipeline`` (default ``~/.cache``), keyed by
the source, the compiler, its flags and the CPU, and written by rename, so concurrent first uses are safe.
``RNN_TORCH_FUSED=0`` turns it off; without a compiler, or if the library misbehaves on a start-up
check, the recurrences keep their eager code (the same maths, rounded differently).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("pointwise.c")
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared"]
# OpenMP splits a step's rows over PyTorch's threads (its libgomp is already loaded, so the
# library shares that runtime and its thread count); a compiler without it builds the serial loops.
THREADING = (["-fopenmp"], ["-fopenmp-simd"])
FUNCTIONS = {  # name -> number of pointers (after two ints: rows, hidden)
    "lstm_forward": 8,
    "lstm_backward": 7,
    "gru_gates": 6,
    "gru_blend": 7,
    "gru_backward_z": 8,
    "gru_backward_r": 7,
    "scatter_add": 3,
}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnn-pipeline"


def _cpu_id() -> str:
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if "flags" in line
        )
    except (OSError, StopIteration):
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _build(compiler: str) -> Path:
    """The compiled library, built on first use: with OpenMP where the compiler has it."""
    failure: subprocess.SubprocessError | None = None
    for threading in THREADING:
        try:
            return _build_with(compiler, [*FLAGS, *threading])
        except subprocess.SubprocessError as error:
            failure = error
    raise failure  # type: ignore[misc]


def _build_with(compiler: str, flags: list[str]) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        source + compiler.encode() + " ".join(flags).encode() + _cpu_id().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"pointwise-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", str(built)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, target)
    return target


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, a failed build or check)."""
    if os.environ.get("RNN_TORCH_FUSED", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError):
        return None
    for name, pointers in FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int] * 2 + [ctypes.c_void_p] * pointers
        fn.restype = None
    lib.transpose.argtypes = [ctypes.c_int] * 3 + [ctypes.c_void_p] * 2
    lib.transpose.restype = None
    return lib if _agrees(lib) else None


def usable(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and library() is not None


def kernel(name: str) -> Callable[..., None]:
    """The step kernel ``name`` (one of FUNCTIONS), called as ``f(rows, hidden, *addresses)``:
    the addresses of contiguous float32 (ids: int64) arrays, from ``addresses`` or
    ``Tensor.data_ptr()``, kept alive by the caller; None for an absent ids operand. Look it up
    once per loop, not per step."""
    return getattr(library(), name)


def addresses(t: Tensor) -> list[int]:
    """The address of each ``t[i]`` of a contiguous tensor: the kernels' per-step operands
    without a tensor view per step (a view, or a check of one, costs as much as the call)."""
    assert t.is_contiguous(), "the fused kernels take contiguous tensors"
    base, stride = t.data_ptr(), t.stride(0) * t.element_size()
    return [base + i * stride for i in range(t.shape[0])]


def transposed(t: Tensor) -> Tensor:
    """``t.T`` as a new contiguous tensor, for a 2-D ``t`` (a column slice of a wider matrix
    too): tiled in C where the library is usable, else PyTorch's strided copy."""
    rows, cols = t.shape
    if t.stride(1) != 1 or t.stride(0) < cols or not usable(t):
        return t.t().contiguous()
    out = t.new_empty(cols, rows)
    library().transpose(rows, cols, t.stride(0), t.data_ptr(), out.data_ptr())  # type: ignore[union-attr]
    return out


def _agrees(lib: ctypes.CDLL) -> bool:
    """One LSTM step, its input gathered from a table, against PyTorch's own functions: a
    miscompiled or mis-vectorised library is never used."""
    rows, h = 3, 5
    gen = torch.Generator().manual_seed(0)
    pre, c = torch.randn(rows, 4 * h, generator=gen) * 3, torch.randn(rows, h, generator=gen)
    table, ids = torch.randn(4, 4 * h, generator=gen), torch.tensor([2, 0, 2])
    gates, c_new, tanh_c, h_new = (torch.empty(rows, n) for n in (4 * h, h, h, h))
    pointers = (t.data_ptr() for t in (pre, table, ids, c, gates, c_new, tanh_c, h_new))
    lib.lstm_forward(rows, h, *pointers)
    block = torch.randn(7, 40, generator=gen)[:, 3:38]  # a column slice: rows 40 floats apart
    flipped = torch.empty(35, 7)
    lib.transpose(7, 35, 40, block.data_ptr(), flipped.data_ptr())
    total = pre + table[ids]
    want = torch.cat([torch.sigmoid(total[:, : 3 * h]), torch.tanh(total[:, 3 * h :])], 1)
    want_c = want[:, h : 2 * h] * c + want[:, :h] * want[:, 3 * h :]
    return bool(
        torch.allclose(gates, want, atol=1e-6)
        and torch.allclose(c_new, want_c, atol=1e-6)
        and torch.allclose(h_new, want[:, 2 * h : 3 * h] * torch.tanh(want_c), atol=1e-6)
        and torch.equal(flipped, block.t())
    )

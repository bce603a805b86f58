"""The scratch GRU's and LSTM's recurrences in C (``cells.c``: each direction of a minibatch in
one call, products included), a tiled transpose for the weight gradients' operands and the
scatter of a first layer's table gradient (``layout.c``), compiled on first use with the system's
C compiler for the machine at hand and loaded with ctypes.

Why: at the book's sizes a step is a small product and about ten elementwise operations; in
eager PyTorch each is a call of several microseconds and the products run on libraries that reach
about half the machine's rate at that shape. In one C call a thread keeps its block of the
batch's rows for the whole sequence, with no barrier between steps. Not a PyTorch extension (no
torch headers, so it compiles in seconds) and not ``torch.compile`` (a compiled call's guards cost
more than the operations it would fuse at these sizes).

Built with OpenMP where the compiler has it, on PyTorch's own runtime (its libgomp is already
loaded, so the library shares its pool and thread count); each row's sums run in the same order
on any thread, so results do not depend on the thread count.

The library is cached under ``$XDG_CACHE_HOME/rnn-pipeline`` (default ``~/.cache``), keyed by
the sources, the compiler, its flags and the CPU, and written by rename, so concurrent first uses
are safe. ``RNN_TORCH_FUSED=0`` turns it off; without a compiler, or if the library misbehaves on
a start-up check, the recurrences keep their eager code (the same maths, rounded differently).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from rnn.names import TORCH_FUSED_ENV

SOURCES = [Path(__file__).with_name(name) for name in ("cells.c", "layout.c")]
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared"]
# OpenMP splits a minibatch's rows over PyTorch's threads (its libgomp is already loaded, so the
# library shares that runtime and its thread count); a compiler without it builds the serial loops.
THREADING = (["-fopenmp"], ["-fopenmp-simd"])
FUNCTIONS = {  # name -> (number of ints, then of pointers)
    "lstm_forward": (3, 7),
    "lstm_backward": (3, 8),
    "gru_forward": (3, 9),
    "gru_backward": (3, 11),
    "pack_gates": (4, 2),
    "pack_transposed": (3, 2),
    "scatter_add": (2, 3),
    "transpose": (3, 2),
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
    source = b"".join(path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(
        source + compiler.encode() + " ".join(flags).encode() + _cpu_id().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"cells-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *flags, *map(str, SOURCES), "-o", str(built)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(built, target)
    return target


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, a failed build or check)."""
    if os.environ.get(TORCH_FUSED_ENV, "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError):
        return None
    for name, (ints, pointers) in FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_int] * ints + [ctypes.c_void_p] * pointers
        fn.restype = None
    lib.panel_columns.restype = ctypes.c_int
    return lib if _agrees(lib) else None


def usable(t: Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype == torch.float32 and library() is not None


# Packing the recurrent weights costs about as much as a few steps' products: shorter sequences
# (generation feeds one token at a time) run the eager loops, measured 2-4x faster per token.
MIN_STEPS = 4


def runs(t: Tensor, steps: int) -> bool:
    """Whether a recurrence of ``steps`` steps on tensors like ``t`` runs in C."""
    return steps >= MIN_STEPS and usable(t)


def _lib() -> ctypes.CDLL:
    lib = library()
    assert lib is not None, "check fused.usable first"
    return lib


def _address(t: Tensor | None) -> int | None:
    """A contiguous operand's address for C (None stays NULL); the caller keeps ``t`` alive."""
    if t is None:
        return None
    assert t.is_contiguous(), "the C kernels take contiguous tensors"
    return t.data_ptr()


def pack_gates(w: Tensor, groups: int) -> Tensor:
    """``w`` (k x groups * hidden: ``groups`` gates side by side; rows may be a column slice of a
    wider matrix) packed for the forward kernels: panels holding every gate of a block of
    hidden units (cells.c, pack_gates)."""
    k_len, width = w.shape
    assert w.stride(1) == 1, "pack a row-major matrix or a column slice of one"
    hidden, columns = width // groups, _lib().panel_columns()
    packed = w.new_empty(-(-hidden // columns) * groups * k_len * columns)
    _lib().pack_gates(k_len, hidden, groups, w.stride(0), w.data_ptr(), packed.data_ptr())
    return packed


def pack_transposed(w: Tensor) -> Tensor:
    """``w.T`` packed for the backward kernels, ``w`` (n x k; rows may be a column slice of a
    wider matrix): panels of the columns of ``w.T`` (cells.c, pack_transposed)."""
    rows, k_len = w.shape
    assert w.stride(1) == 1, "pack a row-major matrix or a column slice of one"
    columns = _lib().panel_columns()
    packed = w.new_empty(-(-rows // columns) * k_len * columns)
    _lib().pack_transposed(k_len, rows, w.stride(0), w.data_ptr(), packed.data_ptr())
    return packed


def lstm_forward(x, ids, W_h, hs, cs, gates, tanh_c) -> None:
    """The LSTM's forward pass over a minibatch into the buffers LSTMRecurrence allocated
    (``hs[0]``, ``cs[0]``: the initial state); ``x`` is xw, or a table with ``ids``."""
    steps, rows, hidden = tanh_c.shape
    packed = pack_gates(W_h, 4)
    operands = (packed, x, ids, hs, cs, gates, tanh_c)
    _lib().lstm_forward(steps, rows, hidden, *map(_address, operands))


def lstm_backward(grad_hs, grad_c, gates, cs, tanh_c, W_h) -> tuple[Tensor, Tensor]:
    """The LSTM's backward pass: (dL/d pre-activations for every step, dL/dH_0); ``grad_c``
    holds dL/dC at the last step and is updated in place to dL/dC_0."""
    steps, rows, hidden = tanh_c.shape
    packed = pack_transposed(W_h)
    grad_pre, grad_h0 = gates.new_empty(gates.shape), gates.new_empty(rows, hidden)
    operands = (packed, gates, cs, tanh_c, grad_hs, grad_c, grad_pre, grad_h0)
    _lib().lstm_backward(steps, rows, hidden, *map(_address, operands))
    return grad_pre, grad_h0


def gru_forward(x_zr, x_h, ids, W_h, hs, gates, inner, cand) -> None:
    """The book's GRU forward pass over a minibatch into GRURecurrence's buffers (``hs[0]``: the
    initial state); ``x_zr``, ``x_h`` are the input's shares, or tables with ``ids``."""
    steps, rows, hidden = cand.shape
    zr, hh = pack_gates(W_h[:, : 2 * hidden], 2), pack_gates(W_h[:, 2 * hidden :], 1)
    operands = (zr, hh, x_zr, x_h, ids, hs, gates, inner, cand)
    _lib().gru_forward(steps, rows, hidden, *map(_address, operands))


def gru_backward(grad_hs, gates, cand, hs, W_h) -> tuple[Tensor, Tensor, Tensor]:
    """The book's GRU backward pass: (dL/d[z, r] pre-activations, dL/d candidate
    pre-activation, for every step; dL/dH_0)."""
    steps, rows, hidden = cand.shape
    zr, hh = pack_transposed(W_h[:, : 2 * hidden]), pack_transposed(W_h[:, 2 * hidden :])
    back, grad_cand = gates.new_empty(gates.shape), cand.new_empty(cand.shape)
    grad_h, carry, grad_h0 = (cand.new_empty(rows, hidden) for _ in range(3))
    operands = (zr, hh, gates, cand, hs, grad_hs, back, grad_cand, grad_h, carry, grad_h0)
    _lib().gru_backward(steps, rows, hidden, *map(_address, operands))
    return back, grad_cand, grad_h0


def scatter_add(src: Tensor, ids: Tensor, table: Tensor) -> None:
    """``table[ids[i]] += src[i]`` for the rows of ``src``, in row order (layout.c)."""
    _lib().scatter_add(*src.shape, *map(_address, (ids, src, table)))


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
    """Two LSTM steps (a product, the gates and the cell, their input gathered from a table)
    against PyTorch's own functions, and a transpose: a miscompiled or mis-vectorised library is
    never used."""
    steps, rows, h = 2, 3, 5
    gen = torch.Generator().manual_seed(0)
    W_h = torch.randn(h, 4 * h, generator=gen)
    table, ids = torch.randn(4, 4 * h, generator=gen), torch.tensor([[2, 0, 2], [1, 1, 3]])
    hs, cs = (
        torch.randn(steps + 1, rows, h, generator=gen),
        torch.randn(steps + 1, rows, h, generator=gen),
    )
    gates, tanh_c = torch.empty(steps, rows, 4 * h), torch.empty(steps, rows, h)
    columns = lib.panel_columns()
    packed = torch.empty(-(-h // columns) * 4 * h * columns)
    lib.pack_gates(h, h, 4, 4 * h, W_h.data_ptr(), packed.data_ptr())
    operands = (packed, table, ids, hs, cs, gates, tanh_c)
    lib.lstm_forward(steps, rows, h, *(t.data_ptr() for t in operands))
    block = torch.randn(7, 40, generator=gen)[:, 3:38]  # a column slice: rows 40 floats apart
    flipped = torch.empty(35, 7)
    lib.transpose(7, 35, 40, block.data_ptr(), flipped.data_ptr())
    agrees = torch.equal(flipped, block.t())
    for t in range(steps):
        total = hs[t] @ W_h + table[ids[t]]
        want = torch.cat([torch.sigmoid(total[:, : 3 * h]), torch.tanh(total[:, 3 * h :])], 1)
        want_c = want[:, h : 2 * h] * cs[t] + want[:, :h] * want[:, 3 * h :]
        want_h = want[:, 2 * h : 3 * h] * torch.tanh(want_c)
        agrees &= torch.allclose(gates[t], want, atol=1e-5)
        agrees &= torch.allclose(cs[t + 1], want_c, atol=1e-5)
        agrees &= torch.allclose(hs[t + 1], want_h, atol=1e-5)
    return bool(agrees)

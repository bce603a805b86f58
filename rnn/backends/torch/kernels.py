"""Matrix products for the book's RNN and for the gated cells' eager loops (and the large
weight-gradient products), on oneDNN with a pre-packed weight where that is possible; on the CPU
the gated cells' per-step products run in C instead (``rnn/backends/torch/cells.c``).

Why: PyTorch's CPU ``torch.mm`` goes to MKL, which takes its AVX2 code path on non-Intel CPUs and
re-reads the weight in its plain layout on every call. oneDNN (bundled with PyTorch and used by
Inductor) picks its kernels by instruction set, and a weight packed once per minibatch into its
blocked layout is then reused by all 35 steps: at the recurrent shape (32 x 512 x 512) that ran
at about 2.5x MKL's rate on the two-core AVX-512 host of 2026-11-28. Whether packing pays
depends on the host and the product's width: on the AMD host of 2026-12-04 MKL matched packed
oneDNN within 10% at the gated cells' shapes, and the book's GRU, which packs four narrower
weights a minibatch, ran 18% faster unpacked, so it passes ``pack=False``. Everything else
(CUDA, MPS, float64, builds without oneDNN) uses plain ``addmm``. Both give the same maths; the
tests compare them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor

from rnn.backends.torch import fused
from rnn.names import TORCH_ONEDNN_ENV

RightMultiply = Callable[[Tensor, "Tensor | None"], Tensor]
TanhLinear = Callable[[Tensor], Tensor]


def _onednn_ops():
    """oneDNN's linear and weight packing (private ops Inductor uses), if they are present and
    compute what they did when this was written; otherwise None and plain products are used."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        ops = torch.ops.mkldnn
        linear, reorder = ops._linear_pointwise, ops._reorder_linear_weight
        x, w, b = (
            torch.arange(n, dtype=torch.float32).reshape(shape) / 7
            for n, shape in ((6, (2, 3)), (12, (4, 3)), (4, (4,)))
        )
        activated = linear(x, reorder(w, 2), b, "tanh", [], "")
        added = linear.binary(x, b.expand(2, 4).contiguous(), w, None, "add")
    except (AttributeError, RuntimeError, TypeError):
        return None
    expected = torch.addmm(b, x, w.t())
    agrees = torch.allclose(activated, torch.tanh(expected), atol=1e-5)
    if agrees and torch.allclose(added, expected):
        return linear, reorder
    return None


_ONEDNN = _onednn_ops()


def onednn_usable(t: Tensor) -> bool:
    """oneDNN for CPU float32 tensors, unless disabled (RNN_TORCH_ONEDNN=0) or absent."""
    return (
        _ONEDNN is not None
        and os.environ.get(TORCH_ONEDNN_ENV, "1") != "0"
        and t.device.type == "cpu"
        and t.dtype == torch.float32
        and torch.backends.mkldnn.enabled  # availability was checked once, in _onednn_ops
    )


# Packing a weight costs about as much as a few products save: not worth it for generation.
PACK_MIN_CALLS = 4


def right_multiplier(w: Tensor, rows: int, calls: int, pack: bool = True) -> RightMultiply:
    """``f(x, add) = x @ w (+ add)`` for ``rows``-row inputs ``x``, to be called ``calls`` times;
    ``w`` is packed once for oneDNN when that pays (``pack=False``: the caller measured that it
    does not); it may be a view (a column slice of the gates' weights, or a transpose): packing
    reads it through one explicit copy, the plain product reads it in place."""
    if pack and onednn_usable(w) and calls >= PACK_MIN_CALLS:
        linear, reorder = _ONEDNN  # type: ignore[misc]
        packed = reorder(fused.transposed(w), rows)  # oneDNN's linear computes x @ W^T

        def onednn(x: Tensor, add: Tensor | None = None) -> Tensor:
            if add is None:
                return linear(x, packed, None, "none", [], "")
            return linear.binary(x, add, packed, None, "add")

        return onednn

    def dense(x: Tensor, add: Tensor | None = None) -> Tensor:
        return x @ w if add is None else torch.addmm(add, x, w)

    return dense


def tanh_linear(weight: Tensor, bias: Tensor, rows: int, calls: int) -> TanhLinear:
    """``f(x) = tanh(x @ weight.T + bias)`` (``weight`` laid out as nn.Linear's: out x in) for
    ``rows``-row inputs ``x``, ``calls`` times; on oneDNN one fused call per step with the weight
    packed once."""
    if onednn_usable(weight) and calls >= PACK_MIN_CALLS:
        linear, reorder = _ONEDNN  # type: ignore[misc]
        packed = reorder(weight, rows)
        return lambda x: linear(x, packed, bias, "tanh", [], "")
    return lambda x: torch.tanh(torch.addmm(bias, x, weight.t()))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for one large product; ``a`` should be contiguous (oneDNN copies it otherwise)."""
    if onednn_usable(a):
        linear, _ = _ONEDNN  # type: ignore[misc]
        return linear(a, b.t(), None, "none", [], "")
    return a @ b

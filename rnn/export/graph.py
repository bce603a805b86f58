"""One step of a trained model as an ONNX graph, built from its canonical weights.

The canonical weights (``rnn/backends/canonical.py``) are the whole model in the book's names, the
same for both frameworks and both implementations, so one builder serves every backend x variant x
cell: a model file is the mathematics, and this writes that mathematics out op by op (Gather,
MatMul, Add, Sigmoid, Tanh, Mul), with nothing framework-specific to convert.

The graph takes ``token`` (int64, [batch]) and the state, ``H`` and for the LSTM ``C`` (float32,
[layers, batch, hidden]), and returns ``logits`` ([batch, vocab]) and the next state (``H_next``,
``C_next``). A generator calls it once per token (``rnn/serving/runtime.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rnn.backends.canonical import GRU_RECURRENT_BIAS, join_gates
from rnn.registry import CELLS

OPSET = 17
TOKEN, LOGITS = "token", "logits"


def state_names(cell: str) -> list[str]:
    """The graph's state inputs (``H``, ``C``); each output is the name + ``_next``."""
    return list(CELLS[cell].states)


@dataclass
class _Graph:
    """Nodes and initializers as they are added, with fresh names."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    count: int = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, kind: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        self.count += 1
        out = f"{kind.lower()}_{self.count}"
        self.nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def split(self, x: str, sizes: list[int], name: str) -> list[str]:
        """``x`` cut along its last axis into blocks of ``sizes``."""
        from onnx import helper

        sizes_name = self.const(f"{name}_sizes", np.asarray(sizes, dtype=np.int64))
        outs = [f"{name}_{k}" for k in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, sizes_name], outs, axis=-1))
        return outs


def _layer_input(g: _Graph, k: int, below: str | None, W_x: np.ndarray, b: np.ndarray) -> str:
    """The input's share of every gate: for layer 0 a row of ``W_x + b`` (the book's one-hot
    product), above it the layer below's output times ``W_x`` plus ``b``."""
    f32 = np.float32
    if below is None:
        table = g.const(f"table_l{k}", (W_x + b).astype(f32))
        return g.op("Gather", table, TOKEN, axis=0)
    return g.op("Add", g.op("MatMul", below, g.const(f"W_x_l{k}", W_x.astype(f32))),
                g.const(f"b_l{k}", b.astype(f32)))  # fmt: skip


def _rnn(g: _Graph, k: int, xs: str, h: str, W_h: np.ndarray) -> tuple[str, None]:
    rec = g.op("MatMul", h, g.const(f"W_h_l{k}", W_h.astype(np.float32)))
    return g.op("Tanh", g.op("Add", xs, rec)), None


def _gru(g: _Graph, k: int, xs: str, h: str, W_h: np.ndarray, b_hh: np.ndarray | None):
    """The book's GRU (reset before the candidate's product) or, where the weights carry the
    recurrent candidate bias ``b_hh``, PyTorch's and Keras's (reset after it)."""
    hidden, f32 = W_h.shape[0], np.float32
    x_z, x_r, x_h = g.split(xs, [hidden] * 3, f"x_l{k}")
    if b_hh is None:
        W_zr = g.const(f"W_zr_l{k}", W_h[:, : 2 * hidden].astype(f32))
        rec_z, rec_r = g.split(g.op("MatMul", h, W_zr), [hidden] * 2, f"rec_l{k}")
        W_hh = g.const(f"W_hh_l{k}", W_h[:, 2 * hidden :].astype(f32))
        z, r = g.op("Sigmoid", g.op("Add", x_z, rec_z)), g.op("Sigmoid", g.op("Add", x_r, rec_r))
        cand = g.op("Tanh", g.op("Add", x_h, g.op("MatMul", g.op("Mul", r, h), W_hh)))
    else:
        W_all = g.const(f"W_h_l{k}", W_h.astype(f32))
        rec_z, rec_r, rec_h = g.split(g.op("MatMul", h, W_all), [hidden] * 3, f"rec_l{k}")
        z, r = g.op("Sigmoid", g.op("Add", x_z, rec_z)), g.op("Sigmoid", g.op("Add", x_r, rec_r))
        inner = g.op("Add", rec_h, g.const(f"b_hh_l{k}", b_hh.astype(f32)))
        cand = g.op("Tanh", g.op("Add", x_h, g.op("Mul", r, inner)))
    one = g.const(f"one_l{k}", np.ones((), dtype=f32))
    # H' = Z * H + (1 - Z) * C
    return g.op("Add", g.op("Mul", z, h), g.op("Mul", g.op("Sub", one, z), cand)), None


def _lstm(g: _Graph, k: int, xs: str, h: str, c: str, W_h: np.ndarray) -> tuple[str, str]:
    hidden = W_h.shape[0]
    pre = g.op("Add", xs, g.op("MatMul", h, g.const(f"W_h_l{k}", W_h.astype(np.float32))))
    i, f, o, c_new = g.split(pre, [hidden] * 4, f"gates_l{k}")
    i, f, o, c_new = (g.op("Sigmoid", i), g.op("Sigmoid", f), g.op("Sigmoid", o),
                      g.op("Tanh", c_new))  # fmt: skip
    c_next = g.op("Add", g.op("Mul", f, c), g.op("Mul", i, c_new))
    return g.op("Mul", o, g.op("Tanh", c_next)), c_next


def step_graph(
    weights: dict[str, np.ndarray], cell: str, num_layers: int, vocab_size: int, name: str
):
    """The ``onnx.ModelProto`` of one step of the model whose canonical weights are ``weights``."""
    from onnx import TensorProto, helper

    g = _Graph()
    num_hiddens = int(weights["W_hq"].shape[0])
    states = state_names(cell)
    layer_states = {
        s: [g.op("Gather", s, g.const(f"layer_{k}_{s}", np.asarray(k, dtype=np.int64)), axis=0)
            for k in range(num_layers)]
        for s in states
    }  # fmt: skip
    below, new = None, {s: [] for s in states}
    for k in range(num_layers):
        W_x, W_h, b = join_gates(cell, k, weights)
        xs = _layer_input(g, k, below, W_x, b)
        h = layer_states["H"][k]
        if cell == "rnn":
            h_next, c_next = _rnn(g, k, xs, h, W_h)
        elif cell == "gru":
            h_next, c_next = _gru(g, k, xs, h, W_h, weights.get(f"{GRU_RECURRENT_BIAS}_l{k}"))
        else:
            h_next, c_next = _lstm(g, k, xs, h, layer_states["C"][k], W_h)
        new["H"].append(h_next)
        if c_next is not None:
            new["C"].append(c_next)
        below = h_next
    logits = g.op(
        "Add",
        g.op("MatMul", below, g.const("W_hq", weights["W_hq"].astype(np.float32))),
        g.const("b_q", weights["b_q"].astype(np.float32)),
    )
    g.nodes.append(helper.make_node("Identity", [logits], [LOGITS]))
    axis0 = g.const("axis_0", np.asarray([0], dtype=np.int64))
    for s in states:
        stacked = [g.op("Unsqueeze", t, axis0) for t in new[s]]
        g.nodes.append(helper.make_node("Concat", stacked, [f"{s}_next"], axis=0))
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info(TOKEN, i64, ["batch"])] + [
        helper.make_tensor_value_info(s, f32, [num_layers, "batch", num_hiddens]) for s in states
    ]
    outputs = [helper.make_tensor_value_info(LOGITS, f32, ["batch", vocab_size])] + [
        helper.make_tensor_value_info(f"{s}_next", f32, [num_layers, "batch", num_hiddens])
        for s in states
    ]
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnn-pipeline"
    )
    model.ir_version = 8  # what onnxruntime releases from 1.14 on read
    return model

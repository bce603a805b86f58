import pytest
import torch
from torch.nn import functional as F

from rnn.backends.torch.concise import RNNModel
from rnn.backends.torch.engine import clip_gradients, time_major_labels
from rnn.backends.torch.kernels import onednn_usable
from rnn.backends.torch.recurrences import OneHotTanhRecurrence
from rnn.backends.torch.scratch import RNNModelScratch
from tests.support.models_util import B, H, T, V, random_weights, tokens


@pytest.mark.parametrize("cls", [RNNModelScratch, RNNModel])
def test_shapes_and_time_major_logits(cls, scratch_inputs):
    model = cls(V, H, seed=0)
    X = torch.from_numpy(tokens()[0])
    logits, state = model(X, model.begin_state(B))
    assert logits.shape == (T * B, V)
    assert state[0].shape == (1, B, H)  # (layers, batch, hiddens)
    # Row t * B + b is the output for sequence b at step t: compare with stepping one token.
    state = model.begin_state(B)
    for t in range(T):
        step_logits, state = model(X[:, t : t + 1], state)
        assert torch.allclose(step_logits, logits[t * B : (t + 1) * B], atol=1e-6)


def test_gather_path_equals_one_hot_path(monkeypatch):
    """The scratch recurrence's two input paths (a row gather of W_xh + b_h, and one-hot columns
    inside the step's product) give the same hidden states and the same gradients."""
    import rnn.backends.torch.recurrences

    weights = {k: torch.from_numpy(v) for k, v in random_weights().items()}
    X, Y = (torch.from_numpy(a) for a in tokens())
    results = []
    for share in (0.0, float("inf")):  # 0: always gather; inf: always one-hot
        monkeypatch.setattr(rnn.backends.torch.recurrences, "ONE_HOT_MAX_SHARE", share)
        model = RNNModelScratch(V, H)
        model.load_canonical_weights(weights)
        h0 = (0.1 * torch.ones(1, B, H)).requires_grad_()
        logits, _ = model(X, (h0,))
        F.cross_entropy(logits, time_major_labels(Y)).backward()
        grads = [p.grad for p in (*model.layer(0), h0)]
        results.append((logits.detach(), grads))
    (gather, gather_grads), (one_hot, one_hot_grads) = results
    assert torch.allclose(gather, one_hot, atol=1e-6)
    for a, b in zip(gather_grads, one_hot_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_labels_are_time_major():
    Y = torch.arange(B * T).reshape(B, T)
    labels = time_major_labels(Y)
    for b in range(B):
        for t in range(T):
            assert labels[t * B + b] == Y[b, t]
    assert not torch.equal(labels, Y.reshape(-1))  # the book's TF bug would fail here


def test_scratch_model_gradient_matches_finite_differences(scratch_inputs):
    """The whole scratch RNN (input gather or one-hot path, recurrence, output layer)."""
    model = RNNModelScratch(V, H, seed=1).double()
    X, Y = (torch.from_numpy(a) for a in tokens())
    h0 = model.begin_state(B)[0][0].double()

    def loss(W_xh, W_hh, b_h, W_hq, b_q):
        hs = OneHotTanhRecurrence.apply(X.T, h0, W_hh, W_xh, b_h)
        return F.cross_entropy(hs.reshape(-1, H) @ W_hq + b_q, time_major_labels(Y))

    names = ("W_xh_l0", "W_hh_l0", "b_h_l0", "W_hq", "b_q")
    weights = model.canonical_weights()
    params = tuple(weights[n].detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(loss, params)


@pytest.mark.skipif(not onednn_usable(torch.zeros(1)), reason="no oneDNN in this PyTorch build")
def test_onednn_products_equal_plain_ones(monkeypatch, scratch_inputs):
    """The fused oneDNN path (CPU float32) and plain addmm give the same logits and gradients."""
    weights = {k: torch.from_numpy(v) for k, v in random_weights().items()}
    X, Y = (torch.from_numpy(a) for a in tokens())
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("RNN_TORCH_ONEDNN", flag)
        model = RNNModelScratch(V, H)
        model.load_canonical_weights(weights)
        h0 = torch.randn(1, B, H, generator=torch.Generator().manual_seed(3)).requires_grad_()
        logits, (h_last,) = model(X, (h0,))
        (F.cross_entropy(logits, time_major_labels(Y)) + h_last.sum()).backward()
        grads = [p.grad for p in model.parameters()] + [h0.grad]
        results.append([logits.detach(), h_last.detach(), *grads])
    for fused, plain in zip(*results, strict=True):
        assert torch.allclose(fused, plain, atol=1e-5), (fused - plain).abs().max()


def test_clipping_is_the_books_global_norm():
    p = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(4))]
    p[0].grad, p[1].grad = torch.full((3,), 3.0), torch.full((4,), 4.0)
    norm = float(torch.sqrt(torch.tensor(9.0 * 3 + 16.0 * 4)))
    clip_gradients(p, 1.0)
    assert torch.allclose(p[0].grad, torch.full((3,), 3.0 / norm))
    p[0].grad, p[1].grad = torch.full((3,), 0.1), torch.full((4,), 0.1)
    clip_gradients(p, 1.0)  # below theta: unchanged
    assert torch.allclose(p[0].grad, torch.full((3,), 0.1))

"""Generation: the chapter's warm-up then greedy argmax, plus temperature and top-k sampling."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn.backends.sampling import choose_next, generate

LOGITS = st.lists(st.floats(-20, 20), min_size=2, max_size=30).map(np.array)


@settings(max_examples=200, deadline=None)
@given(logits=LOGITS, k=st.integers(1, 30), temperature=st.floats(0.05, 5), seed=st.integers(0, 99))
def test_top_k_draws_only_among_the_k_largest(logits, k, temperature, seed):
    choice = choose_next(logits, temperature, k, np.random.default_rng(seed))
    # Ties at the cut-off may widen the set; nothing below the k-th largest value is drawn.
    assert logits[choice] >= np.sort(logits)[-min(k, logits.size)]


@given(logits=LOGITS)
def test_temperature_zero_is_the_books_argmax(logits):
    assert choose_next(logits, 0.0, 0, np.random.default_rng(0)) == int(np.argmax(logits))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_follow_softmax_of_logits_over_temperature(temperature):
    logits = np.array([2.0, 1.0, 0.0, -1.0])
    rng = np.random.default_rng(0)
    draws = np.bincount(
        [choose_next(logits, temperature, 0, rng) for _ in range(20_000)], minlength=4
    )
    expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    assert np.abs(draws / draws.sum() - expected).max() < 0.015


def test_generate_warms_up_on_the_whole_prefix_and_threads_the_state():
    """Every prefix token but the last is fed only to build the state; the state returned by one
    step is the one passed to the next, never reset; predictions start after the whole prefix."""
    calls = []

    def step(token, state):
        calls.append((token, state))
        history = (*state, token)
        logits = np.zeros(10)
        logits[sum(history) % 10] = 1.0  # depends on everything fed so far
        return logits, history

    out = generate(step, lambda: (), [3, 1, 4], num_preds=5)
    assert out[:3] == [3, 1, 4] and len(out) == 8
    assert [token for token, _ in calls] == out[:-1]  # each output is fed back as next input
    states = [state for _, state in calls]
    assert states == [tuple(out[:i]) for i in range(len(out) - 1)]  # threaded from a fresh start
    assert out[3] == sum(out[:3]) % 10  # the first prediction has seen the whole prefix


def test_generate_rejects_an_empty_prefix():
    with pytest.raises(ValueError, match="at least one token"):
        generate(lambda t, s: (np.zeros(2), s), lambda: None, [], 3)

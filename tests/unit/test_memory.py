"""The memory estimate made before a model is built (rnn/training/memory.py)."""

from __future__ import annotations

import pytest

from rnn.backends.engine import make_engine
from rnn.errors import PipelineError
from rnn.training.memory import check_fits, estimate, host_room, parameter_count


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize("variant", ["scratch", "concise"])
@pytest.mark.parametrize("cell, layers", [("rnn", 1), ("gru", 2), ("lstm", 2)])
def test_the_parameter_count_bounds_every_engine_within_a_few_percent(
    backend, variant, cell, layers
):
    engine = make_engine(backend, variant, 28, 32, cell=cell, num_layers=layers, threads=1)
    counted = parameter_count(cell, 28, 32, layers)
    assert engine.num_params() <= counted <= 1.05 * engine.num_params()


def test_training_needs_gradients_optimiser_state_and_activations():
    infer = estimate("lstm", 100, 256, 2, (32, 35))
    sgd = estimate("lstm", 100, 256, 2, (32, 35), optimizer="sgd")
    adam = estimate("lstm", 100, 256, 2, (32, 35), optimizer="adam")
    assert infer.gradients == infer.optimizer == 0
    assert sgd.gradients == sgd.weights and sgd.optimizer == 0
    assert adam.optimizer == 2 * adam.weights
    assert adam.activations == sgd.activations == 2 * infer.activations
    assert estimate("lstm", 100, 256, 2, (64, 35)).activations == 2 * infer.activations
    two = estimate("lstm", 100, 256, 2, (32, 35), optimizer="sgd", replicas=2)
    assert two.weights == 2 * sgd.weights and two.activations == sgd.activations


def test_check_fits_names_both_figures_and_passes_what_fits():
    room, where = host_room()
    check_fits(estimate("rnn", 28, 512, 1, (32, 35), optimizer="sgd"), "cpu", "the book's model")
    too_big = estimate("rnn", 28, 400_000, 1, (32, 35), optimizer="sgd")
    assert too_big.total > room
    with pytest.raises(PipelineError) as err:
        check_fits(too_big, "cpu", "training x")
    line = err.value.one_line()
    assert "training x needs about" in line and f"{where} is" in line and "num_hiddens" in line

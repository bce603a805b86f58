"""Both frameworks' engines satisfy the one ``Engine`` protocol: every method it names, with the
same parameters, and the spec they were built from."""

from __future__ import annotations

import inspect

import pytest

from rnn.backends.engine import Engine, backend_module, make_engine

PROTOCOL_METHODS = [
    name
    for name, member in inspect.getmembers(Engine, inspect.isfunction)
    if not name.startswith("_")
]


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_each_engine_has_the_protocols_methods_with_its_parameters(backend):
    engine_class = backend_module(backend).Engine
    assert len(PROTOCOL_METHODS) >= 10
    for name in PROTOCOL_METHODS:
        wanted = list(inspect.signature(getattr(Engine, name)).parameters)
        have = list(inspect.signature(getattr(engine_class, name)).parameters)
        assert have == wanted, f"{backend} Engine.{name}{have} is not the protocol's {wanted}"


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_an_engine_keeps_the_spec_it_was_built_from(backend):
    engine = make_engine(backend, "scratch", 28, 8, cell="gru", num_layers=2, threads=1)
    assert (engine.spec.cell, engine.spec.num_layers, engine.spec.vocab_size) == ("gru", 2, 28)
    assert engine.spec.threads == 1

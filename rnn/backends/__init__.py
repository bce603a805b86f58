"""The frameworks: the ``Engine`` protocol and its factory, the ``ModelSpec`` an engine is built
from, and ``torch/`` and ``tf/``, which mirror each other file for file."""

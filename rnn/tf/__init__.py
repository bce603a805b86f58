"""TensorFlow implementations; they mirror ``rnn/torch`` module for module and name for name."""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing) is noise in a CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's custom CPU kernels give results that depend on allocation history, so a resumed run
# would not end bit-identical to an uninterrupted one. Off by default; TF_ENABLE_ONEDNN_OPTS=1
# (set before running) trades that guarantee for ~2x throughput on the concise model.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

"""TensorFlow implementations; they mirror ``rnn/torch`` module for module and name for name."""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing) is noise in a CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

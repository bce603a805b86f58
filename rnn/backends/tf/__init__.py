"""TensorFlow implementations; they mirror ``rnn/backends/torch`` module for module and name for name."""

import os
import sys

# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probing) is noise in a CLI.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3: its false alarms too (oneDNN "E" lines)


def _import_quietly() -> None:
    """Import TensorFlow with the process's stderr closed: its notices printed before absl's
    logging starts ignore TF_CPP_MIN_LOG_LEVEL. A failing import still raises, and Python's
    own error reporting is back in place by then."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_import_quietly()

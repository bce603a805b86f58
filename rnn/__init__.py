"""Character- and word-level RNN language models: data stages, engines, records."""

import os

# Intel MKL (PyTorch's CPU matrix products) may split a long inner dimension over its threads, so
# a product such as the output layer's weight gradient (512 x 1120 by 1120 x 28) rounds
# differently at 1 and at 2 threads. Strict conditional numerical reproducibility makes its
# products bitwise independent of the thread count, which keeps `train.threads` a pure speed
# setting (tests/integration/test_threads.py). MKL reads this on its first call, so it is set here, before
# any engine imports torch; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

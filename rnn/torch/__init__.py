"""PyTorch implementations; ``rnn/tf`` mirrors every module, class and function name."""

import os

# MKL picks kernels by memory alignment unless told not to; STRICT makes a repeated or resumed CPU
# run bit-identical. Must be set before MKL loads (importing torch).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

"""PyTorch implementations; ``rnn/backends/tf`` mirrors every module, class and function name."""

"""PyTorch implementations; ``rnn/tf`` mirrors every module, class and function name."""

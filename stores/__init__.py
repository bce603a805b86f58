"""The stores that runs share, and the adapters to them: the DVC remote (stage outputs, the
run-cache, tracked corpora, training checkpoints) and git origin (recorded experiments,
the model registry's versions and stages). The flows call these; the library (rnn/) knows neither."""

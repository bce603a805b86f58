"""Evaluating a trained model (perplexities, generation) and the report that compares runs."""

"""Hyperparameter search: the space declared in sweep.yaml (space), the Optuna study behind it
(study), a trial seen from the training it runs (trial), `rnn sweep` on one machine (local) and
the sweep's report (report)."""

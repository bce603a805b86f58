"""Storage plumbing: writes that land whole or not at all, the workspace lock, run records and
weights files, streamed ``.npy`` arrays, and the ``dvc`` program of this environment."""

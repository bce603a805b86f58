"""Data parallelism: the launcher that starts a training's ranks and follows them, and one rank's
part (join the world, train through the training layer)."""

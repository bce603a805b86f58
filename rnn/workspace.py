"""One object for every location a run reads or writes, so no stage resolves a path against the
process's current directory behind its caller's back. ``dvc.yaml`` spells out the same layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnn.registry import RunKey


@dataclass(frozen=True)
class Workspace:
    """A run's working tree: ``root`` holds params.yaml, ``data/`` and ``reports/``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def at(cls, root: str | Path) -> Workspace:
        return cls(Path(root).resolve())

    def resolve(self, path: str | Path) -> Path:
        """A path from the user's own parameters or options: relative ones are relative to
        ``root`` (and may leave it: a corpus beside the checkout is the user's choice)."""
        return self.root / path

    def inside(self, path: str | Path, what: str) -> Path:
        """``path`` resolved, which must lie in the workspace: what a flow argument or an
        override names cannot reach the machine's other files."""
        from rnn.errors import PipelineError

        root = self.root.resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise PipelineError(
                f"{what} {str(path)!r} is outside the workspace {root}",
                "use a path inside the workspace, relative to it",
            )
        return target

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        """Source texts tracked by DVC (`rnn corpus add`), the ingest stage's input."""
        return self.data / "raw"

    @property
    def corpus(self) -> Path:
        return self.data / "corpus.parquet"

    @property
    def vocab(self) -> Path:
        return self.data / "vocab"

    @property
    def partition(self) -> Path:
        return self.data / "partition"

    @property
    def models(self) -> Path:
        return self.data / "models"

    @property
    def metrics(self) -> Path:
        return self.data / "metrics"

    @property
    def checkpoints(self) -> Path:
        return self.data / "checkpoints"

    @property
    def evals(self) -> Path:
        return self.data / "eval"

    @property
    def exports(self) -> Path:
        return self.data / "export"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def lock_file(self) -> Path:
        return self.root / ".rnn-workspace.lock"

    def model(self, run: RunKey) -> Path:
        return self.models / run.name

    def metrics_of(self, run: RunKey) -> Path:
        return self.metrics / run.name

    def checkpoint(self, run: RunKey) -> Path:
        return self.checkpoints / run.name

    def eval_of(self, run: RunKey) -> Path:
        return self.evals / run.name

    def export_of(self, run: RunKey) -> Path:
        return self.exports / run.name

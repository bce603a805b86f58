"""The pipeline's stages, each one function: a workspace and validated parameters in, files out.

The ``rnn`` CLI (which ``dvc.yaml`` calls) and the Prefect tasks call these same functions, so
the entry points cannot drift; every location comes from the ``Workspace``.
"""

from __future__ import annotations

from pathlib import Path

from rnn.config import IngestConfig, Params
from rnn.workspace import Workspace, run_name


def rooted_ingest(cfg: IngestConfig, ws: Workspace) -> IngestConfig:
    """The download cache lives in the workspace unless the parameters name an absolute one."""
    return cfg.model_copy(update={"cache_dir": str(ws.resolve(cfg.cache_dir))})


def ingest_stage(ws: Workspace, params: Params):
    from rnn.corpus import ingest

    return ingest(rooted_ingest(params.ingest, ws), ws.corpus, root=ws.root)


def vocab_stage(ws: Workspace, params: Params):
    from rnn.vocab import build_vocab

    return build_vocab(ws.corpus, params.vocab, ws.vocab)


def partition_stage(ws: Workspace, params: Params):
    from rnn.partition import partition

    return partition(ws.vocab, params.partition, ws.partition)


def train_stage(ws: Workspace, params: Params, backend: str, variant: str, **options):
    """``options``: ``epoch_budget``, ``progress``, ``on_epoch``, ``checkpoint_sync`` (see
    ``rnn.train.train_model``)."""
    from rnn.train import train_model

    return train_model(
        backend,
        variant,
        params,
        partition_dir=ws.partition,
        vocab_dir=ws.vocab,
        model_dir=ws.model(backend, variant),
        metrics_dir=ws.metrics_of(backend, variant),
        checkpoint_dir=ws.checkpoint(backend, variant),
        **options,
    )


def evaluate_stage(ws: Workspace, params: Params, backend: str, variant: str):
    from rnn.evaluate import evaluate_model

    return evaluate_model(
        backend,
        variant,
        params,
        ws.model(backend, variant),
        ws.partition,
        ws.vocab,
        ws.eval_of(backend, variant),
    )


def report_stage(ws: Workspace, runs: list[tuple[str, str]], out: Path | None = None):
    from rnn.report import RunFiles, build_report

    files = [
        RunFiles(run_name(b, v), ws.model(b, v), ws.eval_of(b, v), ws.metrics_of(b, v))
        for b, v in runs
    ]
    return build_report(files, out or ws.reports)

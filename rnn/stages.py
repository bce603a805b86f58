"""The pipeline's stages, each one function: a workspace and validated parameters in, files out.

The ``rnn`` CLI (which ``dvc.yaml`` calls) and the Prefect tasks call these same functions, so
the entry points cannot drift; every location comes from the ``Workspace``.
"""

from __future__ import annotations

from pathlib import Path

from rnn.config import IngestConfig, Params
from rnn.registry import RunKey
from rnn.workspace import Workspace


def rooted_ingest(cfg: IngestConfig, ws: Workspace) -> IngestConfig:
    """The download cache lives in the workspace unless the parameters name an absolute one."""
    return cfg.model_copy(update={"cache_dir": str(ws.resolve(cfg.cache_dir))})


def ingest_stage(ws: Workspace, params: Params):
    from rnn.data.corpus import ingest

    return ingest(rooted_ingest(params.ingest, ws), ws.corpus, root=ws.root)


def vocab_stage(ws: Workspace, params: Params):
    from rnn.data.vocab import build_vocab

    return build_vocab(ws.corpus, params.vocab, ws.vocab)


def partition_stage(ws: Workspace, params: Params):
    from rnn.data.partition import partition

    return partition(ws.vocab, params.partition, ws.partition)


def train_stage(ws: Workspace, params: Params, run: RunKey, world=None, **options):
    """``options``: ``epoch_budget``, ``progress``, ``on_epoch``, ``checkpoint_sync`` (see
    ``rnn.training.loop.train_model``). With ``train.data_parallel`` above 1 it launches that many
    processes (rnn/dataparallel/launcher.py), unless it runs in one of them (``world``: its rank)."""
    from rnn.training.loop import train_in_workspace

    if world is None:  # the launcher's process checks for every rank
        check_training_memory(ws, params, run)
    if world is None and params.train.data_parallel > 1:
        from rnn.dataparallel.launcher import train_data_parallel

        return train_data_parallel(ws, params, run, **options)
    if world is not None:
        options["world"] = world
    return train_in_workspace(ws, params, run, **options)


def check_training_memory(ws: Workspace, params: Params, run: RunKey) -> None:
    """Refuse a run too large for this machine before anything is built or written."""
    from rnn.data.tokens import Vocab
    from rnn.training.memory import check_fits, estimate

    arch, tcfg, part = params.model(run.model), params.train, params.partition
    need = estimate(
        arch.cell,
        len(Vocab.load(ws.vocab)),
        arch.hiddens(run.variant),
        arch.num_layers,
        (part.batch_size, part.num_steps),
        optimizer=tcfg.optimizer.name,
        replicas=tcfg.data_parallel,
    )
    check_fits(need, tcfg.device, f"training {run.name}")


def evaluate_stage(ws: Workspace, params: Params, run: RunKey):
    from rnn.evaluation.evaluate import evaluate_model

    return evaluate_model(run, params, ws.model(run), ws.partition, ws.vocab, ws.eval_of(run))


def export_stage(ws: Workspace, run: RunKey):
    from rnn.data.tokens import VOCAB_FILE
    from rnn.export.bundle import export_run

    return export_run(run.name, ws.model(run), ws.vocab / VOCAB_FILE, ws.export_of(run))


def report_stage(ws: Workspace, runs: list[RunKey], out: Path | None = None):
    from rnn.evaluation.report import RunFiles, build_report

    files = [RunFiles(r.name, ws.model(r), ws.eval_of(r), ws.metrics_of(r)) for r in runs]
    return build_report(files, out or ws.reports)

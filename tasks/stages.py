"""One Prefect task per stage, each a thin call of the library function the CLI calls.

Arguments are paths and plain parameter dicts; results are small JSON summaries (never tensors,
never pickles). ``reuse=True`` returns the summary of outputs that DVC reports up to date.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from rnn.config import IngestConfig, Params, PartitionConfig, VocabConfig
from tasks.caching import StageFiles

JSON_RESULTS = {"persist_result": True, "result_serializer": "json"}


@task(
    name="ingest",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=StageFiles(inputs=("local_source",)),
    **JSON_RESULTS,
)
def ingest_task(cfg: dict, out: str, local_source: str | None = None, reuse: bool = False) -> dict:
    """``local_source`` repeats ``cfg['source']`` when it is a local path, so its content is hashed."""
    from rnn.corpus import ingest, read_provenance

    if reuse and Path(out).is_file():
        return {"path": out, "reused": True, "sha256": read_provenance(out)["sha256"]}
    return asdict(ingest(IngestConfig(**cfg), out))


@task(
    name="vocab",
    cache_policy=StageFiles(inputs=("corpus",)),
    **JSON_RESULTS,
)
def vocab_task(cfg: dict, corpus: str, out: str, reuse: bool = False) -> dict:
    from rnn.vocab import build_vocab

    if reuse and Path(out, "vocab.json").is_file():
        return {"out_dir": out, "reused": True}
    return asdict(build_vocab(corpus, VocabConfig(**cfg), out))


@task(
    name="partition",
    cache_policy=StageFiles(inputs=("ids",)),
    **JSON_RESULTS,
)
def partition_task(cfg: dict, ids: str, out: str, reuse: bool = False) -> dict:
    from rnn.partition import partition

    if reuse and Path(out, "partition.json").is_file():
        return {"out_dir": out, "reused": True}
    return asdict(partition(ids, PartitionConfig(**cfg), out))


@task(
    name="train",
    task_run_name="train-{backend}-{variant}",
    cache_policy=StageFiles(inputs=("partition_dir", "vocab_dir")),
    **JSON_RESULTS,
)
def train_task(
    backend: str,
    variant: str,
    params: dict,
    partition_dir: str,
    vocab_dir: str,
    model_dir: str,
    metrics_dir: str,
    reuse: bool = False,
) -> dict[str, Any]:
    from rnn.record import read_record
    from rnn.train import train_model

    if reuse and Path(model_dir, "run.json").is_file():
        record = read_record(model_dir)
        return {
            "run": f"{backend}-{variant}",
            "model_dir": model_dir,
            "reused": True,
            "train_perplexity": record["train_perplexity"],
        }
    summary = train_model(
        backend,
        variant,
        Params(**params),
        partition_dir,
        vocab_dir,
        model_dir,
        metrics_dir,
        progress=False,
    )
    return asdict(summary)


@task(
    name="evaluate",
    task_run_name="evaluate-{backend}-{variant}",
    cache_policy=StageFiles(inputs=("model_dir", "partition_dir")),
    **JSON_RESULTS,
)
def evaluate_task(
    backend: str,
    variant: str,
    params: dict,
    model_dir: str,
    partition_dir: str,
    vocab_dir: str,
    out_dir: str,
    reuse: bool = False,
) -> dict[str, Any]:
    from rnn.evaluate import evaluate_model, read_eval

    if reuse and Path(out_dir, "eval.json").is_file():
        return read_eval(out_dir)
    return asdict(
        evaluate_model(
            backend, variant, Params(**params), model_dir, partition_dir, vocab_dir, out_dir
        )
    )


@task(name="report", **JSON_RESULTS)
def report_task(
    runs: list[tuple[str, str]], out_dir: str, models_root: str, eval_root: str, metrics_root: str
) -> list[dict]:
    from rnn.report import build_report

    rows = build_report(runs, out_dir, Path(models_root), Path(eval_root), Path(metrics_root))
    return [asdict(r) for r in rows]

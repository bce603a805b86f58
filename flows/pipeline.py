"""The pipeline flow: ingest -> vocabulary -> partition -> train every backend x variant
concurrently -> evaluate -> report, with the report published as Prefect artifacts.

Parameters default to params.yaml. In a DVC repository, with the parameters of params.yaml, the
flow runs only the stages DVC reports stale and commits its outputs to dvc.lock, so `dvc repro`
afterwards has nothing to do, and the flow after `dvc repro` reuses its results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import wait

from flows import dvc_sync
from rnn import paths
from rnn.config import Params, load_params, validate_params
from tasks.caching import with_outputs
from tasks.stages import (
    evaluate_task,
    ingest_task,
    partition_task,
    report_task,
    train_task,
    vocab_task,
)


def resolve_params(params_file: str, overrides: dict[str, Any] | None) -> tuple[Params, bool]:
    """params.yaml with ``overrides`` (a nested dict, e.g. {"train": {"lr": 0.5}}) merged in;
    also says whether the result equals the file (only then is dvc.lock kept in step)."""
    base = load_params(params_file)
    if not overrides:
        return base, True
    merged = base.model_dump()
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    params = validate_params(merged, "flow parameters")
    return params, params == base


def downstream(stale: set[str], stages: dict[str, list[str]]) -> set[str]:
    """`dvc status` names only stages whose own inputs changed; everything after them reruns too."""
    out = set(stale)
    data = ["ingest", "vocab", "partition"]
    for i, stage in enumerate(data):
        if any(s in out for s in data[:i]):
            out.add(stage)
    for train, evaluate in zip(stages["train"], stages["evaluate"], strict=True):
        if out & {"vocab", "partition"} or train in out:
            out.update({train, evaluate})
        if evaluate in out:
            out.add("report")
    return out


def _stage_names(runs: list[tuple[str, str]]) -> dict[str, list[str]]:
    names = [paths.run_name(b, v) for b, v in runs]
    return {"train": [f"train@{n}" for n in names], "evaluate": [f"evaluate@{n}" for n in names]}


@flow(name="rnn-pipeline", persist_result=True, result_serializer="json", log_prints=True)
def pipeline(
    params_file: str = "params.yaml",
    backend: str | None = None,
    variant: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole pipeline. ``backend``/``variant`` restrict the fan-out to one of each."""
    logger = get_run_logger()
    params, is_file_params = resolve_params(params_file, overrides)
    backends = [backend] if backend else list(params.train.backends)
    variants = [variant] if variant else list(params.train.variants)
    runs = [(b, v) for b in backends for v in variants]
    tracked = dvc_sync.in_dvc_repo() and is_file_params
    stages = _stage_names(runs)
    stale = downstream(dvc_sync.stale_stages(), stages) if tracked else None

    def reuse(stage: str) -> bool:
        return stale is not None and stage not in stale

    def runnable(task, stage: str, *outputs):
        return with_outputs(task, *outputs, stale=stale is not None and stage in stale)

    pdict = params.model_dump()
    local = None if params.ingest.is_url else params.ingest.source
    runnable(ingest_task, "ingest", paths.CORPUS)(
        pdict["ingest"], str(paths.CORPUS), local, reuse=reuse("ingest")
    )
    runnable(vocab_task, "vocab", paths.VOCAB_DIR)(
        pdict["vocab"], str(paths.CORPUS), str(paths.VOCAB_DIR), reuse=reuse("vocab")
    )
    runnable(partition_task, "partition", paths.PARTITION_DIR)(
        pdict["partition"],
        str(paths.VOCAB_DIR / "ids.npy"),
        str(paths.PARTITION_DIR),
        reuse=reuse("partition"),
    )
    trained = [
        runnable(train_task, stage, paths.model_dir(b, v)).submit(
            b,
            v,
            pdict,
            str(paths.PARTITION_DIR),
            str(paths.VOCAB_DIR),
            str(paths.model_dir(b, v)),
            str(paths.DATA / "metrics" / paths.run_name(b, v)),
            reuse=reuse(stage),
        )
        for (b, v), stage in zip(runs, stages["train"], strict=True)
    ]
    evaluated = [
        runnable(evaluate_task, stage, paths.eval_dir(b, v)).submit(
            b,
            v,
            pdict,
            str(paths.model_dir(b, v)),
            str(paths.PARTITION_DIR),
            str(paths.VOCAB_DIR),
            str(paths.eval_dir(b, v)),
            reuse=reuse(stage),
            wait_for=[t],
        )
        for (b, v), stage, t in zip(runs, stages["evaluate"], trained, strict=True)
    ]
    wait(evaluated)
    evals = [e.result() for e in evaluated]
    rows = report_task(
        runs,
        str(paths.REPORT_DIR),
        str(paths.MODELS_DIR),
        str(paths.EVAL_DIR),
        str(paths.DATA / "metrics"),
    )
    publish(rows, evals)
    if tracked and set(runs) == {
        (b, v) for b in params.train.backends for v in params.train.variants
    }:
        done = ["ingest", "vocab", "partition", *stages["train"], *stages["evaluate"], "report"]
        dvc_sync.commit([s for s in done if s in stale])
        logger.info("dvc.lock updated for %d stages", len([s for s in done if s in stale]))
    return {"runs": [r["run"] for r in rows], "report": rows}


def publish(rows: list[dict], evals: list[dict]) -> None:
    """The comparison as Prefect artifacts: a table and the generated samples."""
    create_table_artifact(
        key="rnn-comparison",
        table=[
            {
                "run": r["run"],
                "train ppl": round(r["train_perplexity"], 3),
                "valid ppl": None
                if r["valid_perplexity"] is None
                else round(r["valid_perplexity"], 3),
                "test ppl": None
                if r["test_perplexity"] is None
                else round(r["test_perplexity"], 3),
                "tokens/s": round(r["tokens_per_s"]),
                "wall time (s)": round(r["wall_time_s"], 1),
                "parameters": r["num_params"],
            }
            for r in rows
        ],
        description="Perplexities, throughput and wall time per backend x variant",
    )
    lines = ["# Samples", ""]
    for e in evals:
        for prefix, text in e["samples"].items():
            lines.append(f"- **{e['run']}** ({prefix!r}): `{text}`")
    create_markdown_artifact(
        key="rnn-samples",
        markdown="\n".join(lines),
        description="Text generated by each trained model",
    )


if __name__ == "__main__":
    pipeline(str(Path("params.yaml")))

"""What a finished run publishes: its model directory (the weights it keeps, their ONNX bundle
for serving, and ``run.json``, the record of everything that shaped them) and its metrics, each
written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

from rnn.backends.world import World
from rnn.config import Params
from rnn.data.tokens import VOCAB_FILE, Vocab
from rnn.export.bundle import EXPORT_SHA_KEY, MANIFEST, bundle_of, sha256, write_bundle
from rnn.registry import RunKey
from rnn.store.atomic import atomic_dir
from rnn.store.record import RECORD_FILE, WEIGHTS_FILE, file_sha256, write_weights
from rnn.training.identity import DATA_INGEST_KEYS, RunIdentity
from rnn.training.schedule import VALID_KEY, best_epoch


def publish(
    run: RunKey,
    params: Params,
    engine,
    ident: RunIdentity,
    vocab: Vocab,
    history: list[dict],
    best: dict,
    stopped: bool,
    world: World,
    vocab_dir: Path,
    model_dir: Path,
    metrics_dir: Path,
) -> None:
    """Write the model directory and the metrics of a run that trained all its epochs (or
    stopped early): the best epoch's weights with ``train.keep_best``, else the last's, and
    their ONNX export (rnn/export/bundle.py), so the bundle is versioned with the weights."""
    tcfg = params.train
    chosen = best_epoch(history) if tcfg.keep_best else None
    final = history[chosen - 1] if chosen else history[-1]
    record = run_record(run, params, engine, ident, vocab, history, stopped, world, final)
    meta = {"backend": run.backend, "variant": run.variant, "model": run.model}
    with atomic_dir(model_dir) as tmp:
        if chosen:
            write_weights(tmp / WEIGHTS_FILE, best, metadata=meta)
        else:
            engine.save(tmp / WEIGHTS_FILE, metadata=meta)
        weights = (tmp / WEIGHTS_FILE).read_bytes()
        record["weights_sha256"] = sha256(weights)  # checked before loading
        vocab_bytes = (Path(vocab_dir) / VOCAB_FILE).read_bytes()
        write_bundle(bundle_of(tmp), run.name, record, weights, vocab_bytes)
        record[EXPORT_SHA_KEY] = file_sha256(bundle_of(tmp) / MANIFEST)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    with atomic_dir(metrics_dir) as tmp:
        log_metrics(tmp, history)


def run_record(
    run: RunKey,
    params: Params,
    engine,
    ident: RunIdentity,
    vocab: Vocab,
    history: list[dict],
    stopped: bool,
    world: World,
    final: dict,
) -> dict:
    """``run.json``: the model's arguments, every parameter and data hash that shaped it, the
    library versions, and the perplexities of the epoch whose weights are kept."""
    tcfg, arch = params.train, params.model(run.model)
    return {
        "backend": run.backend,
        "variant": run.variant,
        "model": run.model,
        "model_args": {
            "vocab_size": len(vocab),
            "num_hiddens": arch.hiddens(run.variant),
            "cell": arch.cell,
            "num_layers": arch.num_layers,
            "dropout": arch.dropout,
        },
        "num_params": engine.num_params(),
        # every parameter that shaped the model: the data's (also in dvc.yaml's train params, so
        # the record cannot go stale) and training's; fetch settings change no content
        "params": {
            "ingest": params.ingest.model_dump(include=set(DATA_INGEST_KEYS)),
            "vocab": params.vocab.model_dump(),
            **ident.trained_with,
        },
        **ident.data_hashes,
        "token_type": vocab.token_type,
        "versions": ident.versions,
        "device": tcfg.device,
        "data_parallel": {"world_size": world.size, "comm": world.comm},
        "epochs": len(history),
        "weights_epoch": final["epoch"],
        "best_epoch": best_epoch(history),
        "stopped_early": stopped,
        "train_perplexity": final["train/perplexity"],
        "valid_perplexity": final.get(VALID_KEY),
    }


def log_metrics(metrics_dir: Path, history: list[dict]) -> None:
    """Write per-epoch metrics with dvclive (what `dvc metrics` / `dvc plots` read)."""
    from dvclive import Live

    with Live(dir=str(metrics_dir), save_dvc_exp=False, dvcyaml=None) as live:
        for row in history:
            for key, value in row.items():
                if key != "epoch" and value is not None:
                    live.log_metric(key, value, plot=True)
            live.next_step()

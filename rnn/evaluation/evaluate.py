"""Stage 5, evaluate: perplexity of a trained run on every split, and text generated from prefixes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rnn.backends.engine import build_engine
from rnn.backends.spec import ModelSpec
from rnn.config import Params
from rnn.data.partition import SPLITS, evaluation_minibatches, load_split
from rnn.data.tokens import VOCAB_FILE, Vocab, stream_text
from rnn.errors import PipelineError
from rnn.registry import RunKey
from rnn.store.atomic import atomic_path
from rnn.store.record import (
    WEIGHTS_FILE,
    check_vocabulary,
    read_record,
    verified_weights,
    weights_from_bytes,
)
from rnn.training.loop import perplexity
from rnn.training.memory import check_fits, estimate

EVAL_FILE = "eval.json"


@dataclass(frozen=True)
class EvalSummary:
    run: str
    perplexity: dict[str, float]
    samples: dict[str, str]  # per prefix, decoded as evaluate.temperature / top_k say
    sampled: dict[str, str]  # per prefix, at evaluate.sample_temperature among sample_top_k


def load_trained(
    backend: str, variant: str, params: Params, model_dir: Path, vocab_dir: Path
) -> tuple[object, Vocab]:
    """An engine holding a trained run's weights, rebuilt from its self-describing record, and
    the vocabulary it was trained with. The record's checksums are checked first: a weights
    file that is truncated or damaged, or another vocabulary, is an error, not a wrong model."""
    record = read_record(model_dir)
    vocab = Vocab.load(vocab_dir)
    check_vocabulary(record, Path(model_dir), Path(vocab_dir) / VOCAB_FILE)
    weights = verified_weights(record, Path(model_dir) / WEIGHTS_FILE)
    args = record["model_args"]
    if (record.get("backend"), record.get("variant")) != (backend, variant):
        raise PipelineError(
            f"{model_dir} holds a {record.get('backend')} {record.get('variant')} model, "
            f"not {backend} {variant}",
            "pick the backend and variant it was trained with",
        )
    if args["vocab_size"] != len(vocab):
        raise PipelineError(
            f"{model_dir} was trained with {args['vocab_size']} tokens, the vocabulary has "
            f"{len(vocab)}",
            "retrain (`dvc repro`) after changing the vocabulary",
        )
    spec = ModelSpec(
        backend,
        variant,
        args["vocab_size"],
        args["num_hiddens"],
        cell=args.get("cell", "rnn"),
        num_layers=args.get("num_layers", 1),
        device=params.train.device,
        seed=params.train.seed,
        threads=params.train.threads,
    )
    need = estimate(
        spec.cell,
        spec.vocab_size,
        spec.num_hiddens,
        spec.num_layers,
        (params.partition.batch_size, params.partition.num_steps),
    )
    check_fits(need, spec.device, f"loading {model_dir}")
    engine = build_engine(spec)
    engine.load_canonical_weights(weights_from_bytes(weights))
    return engine, vocab


def generate_text(
    engine,
    vocab: Vocab,
    prefix: str,
    num_preds: int,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
) -> str:
    return "".join(stream_text(engine, vocab, prefix, num_preds, temperature, top_k, seed))


def sample_text(engine, vocab: Vocab, prefix: str, params: Params, sampled: bool = False) -> str:
    """The text for ``prefix``: decoded as ``evaluate.temperature``/``top_k`` say, or with
    ``sampled`` at ``evaluate.sample_temperature`` among ``sample_top_k``."""
    cfg = params.evaluate
    temperature, top_k = (
        (cfg.sample_temperature, cfg.sample_top_k) if sampled else (cfg.temperature, cfg.top_k)
    )
    return generate_text(engine, vocab, prefix, cfg.num_preds, temperature, top_k, cfg.seed)


def evaluate_model(
    run: RunKey,
    params: Params,
    model_dir: str | Path,
    partition_dir: str | Path,
    vocab_dir: str | Path,
    out_dir: str | Path,
) -> EvalSummary:
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    engine, vocab = load_trained(run.backend, run.variant, params, model_dir, Path(vocab_dir))
    pcfg = params.partition
    ppl = {}
    for split in SPLITS:
        ids = load_split(partition_dir, split)
        if len(ids) > pcfg.num_steps:
            ppl[split] = perplexity(
                *engine.evaluate(*evaluation_minibatches(ids, pcfg.batch_size, pcfg.num_steps))
            )
    prefixes = params.evaluate.prefixes
    samples = {p: sample_text(engine, vocab, p, params) for p in prefixes}
    sampled = (
        {p: sample_text(engine, vocab, p, params, sampled=True) for p in prefixes}
        if params.evaluate.sample_temperature > 0
        else {}
    )
    summary = EvalSummary(run.name, ppl, samples, sampled)
    with atomic_path(out_dir / EVAL_FILE) as tmp:
        tmp.write_text(json.dumps(asdict(summary), indent=2, sort_keys=True) + "\n")
    return summary


def read_eval(out_dir: str | Path) -> dict:
    path = Path(out_dir) / EVAL_FILE
    if not path.is_file():
        raise PipelineError(f"{path} not found", "run `rnn evaluate` for this variant")
    return json.loads(path.read_text(encoding="utf-8"))

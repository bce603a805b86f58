"""``rnn``: one subcommand per pipeline stage. ``dvc.yaml`` and the Prefect tasks call the same
stage functions, so the three entry points cannot drift."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rnn import paths
from rnn.config import DEFAULT_PARAMS, load_params
from rnn.errors import PipelineError

app = typer.Typer(
    help="Train and compare RNN language models: each subcommand is one pipeline stage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
F = TypeVar("F", bound=Callable[..., Any])
ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="parameter file")]


def one_line_errors(func: F) -> F:
    """Turn a PipelineError into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PipelineError as err:
            print(err.one_line(), file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def echo_summary(summary: Any) -> None:
    data = asdict(summary) if is_dataclass(summary) else summary
    typer.echo(json.dumps(data, sort_keys=True, default=str))


@app.command()
@one_line_errors
def ingest(
    params: ParamsOpt = DEFAULT_PARAMS,
    out: Annotated[Path, typer.Option(help="Parquet file to write")] = paths.CORPUS,
) -> None:
    """Fetch or read the source text, strip Gutenberg boilerplate, normalise, write Parquet."""
    from rnn.corpus import ingest as run

    echo_summary(run(load_params(params).ingest, out))


@app.command()
@one_line_errors
def fetch(
    params: ParamsOpt = DEFAULT_PARAMS,
    from_file: Annotated[
        Path | None, typer.Option(help="seed the download cache with this verified local copy")
    ] = None,
) -> None:
    """Download the URL source into the cache (or seed the cache from a local copy)."""
    from rnn.fetch import download, seed_cache

    cfg = load_params(params).ingest
    if not cfg.is_url:
        raise PipelineError(f"ingest.source {cfg.source} is not a URL", "nothing to fetch")
    path = seed_cache(cfg, from_file) if from_file else download(cfg)
    echo_summary({"cached": str(path)})


@app.command()
@one_line_errors
def vocab(
    params: ParamsOpt = DEFAULT_PARAMS,
    corpus: Annotated[Path, typer.Option(help="Parquet corpus from `rnn ingest`")] = paths.CORPUS,
    out: Annotated[Path, typer.Option(help="directory for vocab.json and ids.npy")] = (
        paths.VOCAB_DIR
    ),
) -> None:
    """Build the vocabulary and encode the corpus as integer ids."""
    from rnn.vocab import build_vocab

    echo_summary(build_vocab(corpus, load_params(params).vocab, out))


@app.command()
@one_line_errors
def partition(
    params: ParamsOpt = DEFAULT_PARAMS,
    ids: Annotated[Path, typer.Option(help="directory or ids.npy from `rnn vocab`")] = (
        paths.VOCAB_DIR
    ),
    out: Annotated[Path, typer.Option(help="directory for the split files")] = (
        paths.PARTITION_DIR
    ),
) -> None:
    """Split the encoded corpus into contiguous train/valid/test parts."""
    from rnn.partition import partition as run

    echo_summary(run(ids, load_params(params).partition, out))


Backend = Annotated[str, typer.Option("--backend", "-b", help="torch | tf")]
Variant = Annotated[str, typer.Option("--variant", "-v", help="scratch | concise")]


@app.command()
@one_line_errors
def train(
    backend: Backend,
    variant: Variant,
    params: ParamsOpt = DEFAULT_PARAMS,
    partition_dir: Annotated[Path, typer.Option(help="splits from `rnn partition`")] = (
        paths.PARTITION_DIR
    ),
    vocab_dir: Annotated[Path, typer.Option(help="vocabulary from `rnn vocab`")] = paths.VOCAB_DIR,
    out: Annotated[Path | None, typer.Option(help="model directory")] = None,
    metrics: Annotated[Path | None, typer.Option(help="dvclive metrics directory")] = None,
    epoch_budget: Annotated[
        int | None, typer.Option(help="stop after this many epochs; resume later")
    ] = None,
) -> None:
    """Train one backend x variant (resuming from its latest checkpoint if there is one)."""
    from rnn.train import train_model

    echo_summary(
        train_model(
            backend,
            variant,
            load_params(params),
            partition_dir,
            vocab_dir,
            out,
            metrics,
            epoch_budget=epoch_budget,
        )
    )


@app.command()
@one_line_errors
def evaluate(
    backend: Backend,
    variant: Variant,
    params: ParamsOpt = DEFAULT_PARAMS,
    model: Annotated[Path | None, typer.Option(help="model directory from `rnn train`")] = None,
    partition_dir: Annotated[Path, typer.Option()] = paths.PARTITION_DIR,
    vocab_dir: Annotated[Path, typer.Option()] = paths.VOCAB_DIR,
    out: Annotated[Path | None, typer.Option(help="directory for eval.json")] = None,
) -> None:
    """Perplexity on each split and generated samples for one trained run."""
    from rnn.evaluate import evaluate_model

    echo_summary(
        evaluate_model(backend, variant, load_params(params), model, partition_dir, vocab_dir, out)
    )


@app.command()
@one_line_errors
def report(
    params: ParamsOpt = DEFAULT_PARAMS,
    out: Annotated[Path, typer.Option(help="report directory")] = paths.REPORT_DIR,
) -> None:
    """Compare every trained backend x variant: markdown table, JSON and perplexity curves."""
    from rnn.report import build_report

    cfg = load_params(params).train
    build_report([(b, v) for b in cfg.backends for v in cfg.variants], out)
    typer.echo((out / "report.md").read_text())


@app.command()
@one_line_errors
def generate(
    backend: Backend,
    variant: Variant,
    prefix: Annotated[str, typer.Option(help="text to warm the state up on")] = "time traveller",
    num_preds: Annotated[int, typer.Option(min=1)] = 50,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy argmax")] = 0.0,
    top_k: Annotated[int, typer.Option(min=0, help="sample among the k likeliest; 0 = all")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    params: ParamsOpt = DEFAULT_PARAMS,
    model: Annotated[Path | None, typer.Option(help="model directory")] = None,
    vocab_dir: Annotated[Path, typer.Option()] = paths.VOCAB_DIR,
) -> None:
    """Generate text from a trained model, greedy or sampled."""
    from rnn.evaluate import generate_text, load_trained
    from rnn.vocab import Vocab

    loaded = load_params(params)
    vocab = Vocab.load(vocab_dir)
    engine = load_trained(
        backend, variant, loaded, model or paths.model_dir(backend, variant), vocab
    )
    typer.echo(generate_text(engine, vocab, prefix, num_preds, temperature, top_k, seed))


@app.command("params")
@one_line_errors
def show_params(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Validate the parameter file and print it with every default filled in."""
    typer.echo(json.dumps(load_params(params).model_dump(), indent=2))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

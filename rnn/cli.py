"""``rnn``: one subcommand per pipeline stage. ``dvc.yaml`` and the Prefect tasks call the same
stage functions, so the three entry points cannot drift."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rnn import stages
from rnn.config import Params, load_params
from rnn.errors import PipelineError
from rnn.lock import workspace_lock
from rnn.workspace import Workspace, run_name

app = typer.Typer(
    help="Train and compare RNN language models: each subcommand is one pipeline stage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
F = TypeVar("F", bound=Callable[..., Any])
ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", "-p", help="parameter file [default: WORKDIR/params.yaml]"),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option(
        "--workdir",
        "-w",
        help="the run's workspace: params.yaml, data/ and reports/ [default: current directory]",
        file_okay=False,
    ),
]


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


def open_workspace(workdir: Path | None, params: Path | None) -> tuple[Workspace, Params]:
    """The workspace (default: the current directory) and its validated parameters."""
    ws = Workspace.at(workdir if workdir is not None else Path.cwd())
    if workdir is not None and not ws.root.is_dir():
        raise PipelineError(f"workspace {workdir} is not a directory", "create it or fix --workdir")
    return ws, load_params(params if params is not None else ws.params_file)


@contextlib.contextmanager
def writing(ws: Workspace, what: str) -> Iterator[None]:
    """Hold the workspace for this command, so a concurrent run cannot mix outputs with it."""
    with workspace_lock(ws, f"`rnn {what}`"):
        yield


@app.command()
@one_line_errors
def ingest(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Fetch or read the source text, strip Gutenberg boilerplate, normalise: data/corpus.parquet."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, "ingest"):
        echo_summary(stages.ingest_stage(ws, cfg))


@app.command()
@one_line_errors
def fetch(
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    from_file: Annotated[
        Path | None, typer.Option(help="seed the download cache with this verified local copy")
    ] = None,
) -> None:
    """Download the URL source into the cache (or seed the cache from a local copy)."""
    from rnn.fetch import download, seed_cache

    ws, loaded = open_workspace(workdir, params)
    cfg = stages.rooted_ingest(loaded.ingest, ws)
    if not cfg.is_url:
        raise PipelineError(f"ingest.source {cfg.source} is not a URL", "nothing to fetch")
    path = seed_cache(cfg, from_file) if from_file else download(cfg)
    echo_summary({"cached": str(path)})


@app.command()
@one_line_errors
def vocab(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Build the vocabulary and encode the corpus as integer ids: data/vocab/."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, "vocab"):
        echo_summary(stages.vocab_stage(ws, cfg))


@app.command()
@one_line_errors
def partition(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Split the encoded corpus into contiguous train/valid/test parts: data/partition/."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, "partition"):
        echo_summary(stages.partition_stage(ws, cfg))


Backend = Annotated[str, typer.Option("--backend", "-b", help="torch | tf")]
Variant = Annotated[str, typer.Option("--variant", "-v", help="scratch | concise")]


@app.command()
@one_line_errors
def train(
    backend: Backend,
    variant: Variant,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    epoch_budget: Annotated[
        int | None, typer.Option(help="stop after this many epochs; resume later")
    ] = None,
) -> None:
    """Train one backend x variant (resuming from its latest checkpoint if there is one)."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, f"train {run_name(backend, variant)}"):
        echo_summary(stages.train_stage(ws, cfg, backend, variant, epoch_budget=epoch_budget))


@app.command()
@one_line_errors
def evaluate(
    backend: Backend, variant: Variant, params: ParamsOpt = None, workdir: WorkdirOpt = None
) -> None:
    """Perplexity on each split and generated samples for one trained run: data/eval/."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, f"evaluate {run_name(backend, variant)}"):
        echo_summary(stages.evaluate_stage(ws, cfg, backend, variant))


@app.command()
@one_line_errors
def report(
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="report directory [default: WORKDIR/reports]")
    ] = None,
) -> None:
    """Compare every trained backend x variant: markdown table, JSON and perplexity curves."""
    ws, cfg = open_workspace(workdir, params)
    runs = [(b, v) for b in cfg.train.backends for v in cfg.train.variants]
    target = out or ws.reports
    with writing(ws, "report"):
        stages.report_stage(ws, runs, target)
    typer.echo((target / "report.md").read_text())


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
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Generate text from a trained model, greedy or sampled."""
    from rnn.evaluate import generate_text, load_trained
    from rnn.vocab import Vocab

    ws, loaded = open_workspace(workdir, params)
    vocab = Vocab.load(ws.vocab)
    engine = load_trained(backend, variant, loaded, ws.model(backend, variant), vocab)
    typer.echo(generate_text(engine, vocab, prefix, num_preds, temperature, top_k, seed))


@app.command("params")
@one_line_errors
def show_params(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Validate the parameter file and print it with every default filled in."""
    typer.echo(json.dumps(open_workspace(workdir, params)[1].model_dump(), indent=2))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

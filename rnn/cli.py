"""``rnn``: one subcommand per pipeline stage. ``dvc.yaml`` and the Prefect tasks call the same
stage functions, so the three entry points cannot drift."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from rnn import exits, stages
from rnn.config import Params, load_params
from rnn.errors import PipelineError, TrialPruned
from rnn.exits import click_exceptions
from rnn.registry import RunKey, grid
from rnn.store.lock import workspace_lock
from rnn.workspace import Workspace

app = typer.Typer(
    help="Train and compare RNN language models: each subcommand is one pipeline stage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_options = {"verbose": False}


@app.callback()
def options(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="print the full traceback of an unexpected error")
    ] = False,
) -> None:
    """Train and compare RNN language models: each subcommand is one pipeline stage."""
    _options["verbose"] = verbose


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
def ingest(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Fetch or read the source text, strip Gutenberg boilerplate, normalise: data/corpus.parquet."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, "ingest"):
        echo_summary(stages.ingest_stage(ws, cfg))


@app.command()
def fetch(
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    from_file: Annotated[
        Path | None, typer.Option(help="seed the download cache with this verified local copy")
    ] = None,
) -> None:
    """Bring the corpus here: download a URL source into the cache, or restore a DVC-tracked
    one (data/raw/) from the remote, the URL it came from or a verified local copy."""
    from rnn.data.fetch import download, seed_cache
    from rnn.data.sources import restore_tracked

    ws, loaded = open_workspace(workdir, params)
    cfg = stages.rooted_ingest(loaded.ingest, ws)
    if not cfg.is_url:
        with writing(ws, "fetch"):
            echo_summary({"corpus": str(restore_tracked(ws, cfg, from_file))})
        return
    path = seed_cache(cfg, from_file) if from_file else download(cfg)
    echo_summary({"cached": str(path)})


corpus_app = typer.Typer(
    help="Your own text as a DVC-tracked input (data/raw/), versioned and pushed like every output.",
    no_args_is_help=True,
)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("add")
def corpus_add(
    source: Annotated[str, typer.Argument(help="a file, a directory, or an http(s) URL")],
    name: Annotated[str | None, typer.Option(help="its name under data/raw/")] = None,
    sha1: Annotated[str | None, typer.Option(help="a URL's pinned sha1")] = None,
    sha256: Annotated[str | None, typer.Option(help="a URL's pinned sha256")] = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Copy SOURCE to data/raw/NAME, track it with DVC (`dvc add`), set ingest.source to it and
    push it to the DVC remote: `dvc repro` and the flows then rerun ingest whenever it changes."""
    from rnn.data.sources import add_corpus

    ws, _ = open_workspace(workdir, params)
    params_file = params if params is not None else ws.params_file
    with writing(ws, "corpus add"):
        echo_summary(add_corpus(ws, params_file, source, name, sha1, sha256))


@app.command()
def vocab(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Build the vocabulary and encode the corpus as integer ids: data/vocab/."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, "vocab"):
        echo_summary(stages.vocab_stage(ws, cfg))


@app.command()
def partition(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Split the encoded corpus into contiguous train/valid/test parts: data/partition/."""
    ws, cfg = open_workspace(workdir, params)
    with writing(ws, "partition"):
        echo_summary(stages.partition_stage(ws, cfg))


Backend = Annotated[str, typer.Option("--backend", "-b", help="torch | tf")]
Variant = Annotated[str, typer.Option("--variant", "-v", help="scratch | concise")]
# a workspace's run, or with --from a registered model (generate, export)
RunBackend = Annotated[str | None, typer.Option("--backend", "-b", help="torch | tf")]
RunVariant = Annotated[str | None, typer.Option("--variant", "-v", help="scratch | concise")]
OriginOpt = Annotated[
    str | None,
    typer.Option("--from", help="a project's git origin: use its registry's model instead"),
]
ArtifactOpt = Annotated[
    str | None, typer.Option(help="with --from: the model's name (torch-scratch-rnn, ...)")
]
StageOpt = Annotated[str, typer.Option(help="with --from: the stage whose model to use")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="a name from params.yaml's models [default: first of train.models]"
    ),
]


def run_key(params: Params, backend: str, variant: str, model: str | None) -> RunKey:
    """The run these options name; unknown names fail with the valid choices."""
    from rnn.backends.engine import backend_module
    from rnn.registry import VARIANTS

    backend_module(backend)  # an unknown or missing backend fails here, in one line
    if variant not in VARIANTS:
        raise PipelineError(f"unknown variant {variant!r}", f"choose one of {', '.join(VARIANTS)}")
    name = model or params.train.models[0]
    params.model(name)  # an unknown model fails here, listing the defined ones
    return RunKey(backend, variant, name)


@app.command()
def train(
    backend: Backend,
    variant: Variant,
    model: ModelOpt = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    epoch_budget: Annotated[
        int | None, typer.Option(help="stop after this many epochs; resume later")
    ] = None,
    events: Annotated[Path | None, typer.Option(hidden=True)] = None,
) -> None:
    """Train one backend x variant x model (resuming from its latest checkpoint if there is one).
    With train.data_parallel N it starts N processes; started by torchrun (or with TF_CONFIG)
    it trains as one rank of that world."""
    from rnn.backends.world import inside_launch

    ws, cfg = open_workspace(workdir, params)
    run = run_key(cfg, backend, variant, model)
    if inside_launch():
        from rnn.dataparallel.rank import train_as_rank

        summary = train_as_rank(ws, cfg, run, epoch_budget, events)
        if summary is not None:
            echo_summary(summary)
        return
    from rnn.search.trial import reporter_from_env

    on_epoch = reporter_from_env()  # a sweep's trial reports each epoch to its study
    with writing(ws, f"train {run.name}"):
        echo_summary(stages.train_stage(ws, cfg, run, epoch_budget=epoch_budget, on_epoch=on_epoch))


@app.command()
def evaluate(
    backend: Backend,
    variant: Variant,
    model: ModelOpt = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Perplexity on each split and generated samples for one trained run: data/eval/."""
    ws, cfg = open_workspace(workdir, params)
    run = run_key(cfg, backend, variant, model)
    with writing(ws, f"evaluate {run.name}"):
        echo_summary(stages.evaluate_stage(ws, cfg, run))


@app.command()
def export(
    backend: RunBackend = None,
    variant: RunVariant = None,
    model: ModelOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="where to write it [default: WORKDIR/data/export/RUN]")
    ] = None,
    origin: OriginOpt = None,
    artifact: ArtifactOpt = None,
    stage: StageOpt = "prod",
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Write a trained model as ONNX with its vocabulary and record, to run on onnxruntime
    alone: a run of this workspace (training already keeps one in its model directory, under
    onnx/), or with --from a registered model fetched from a project's origin and DVC remote."""
    if origin is not None:
        if artifact is None:
            raise click_exceptions.UsageError("--from needs --artifact (the model's name)")
        from rnn.serving.fetch import export_registered

        echo_summary(export_registered(origin, artifact, stage, out or Path(artifact)))
        return
    if backend is None or variant is None:
        raise click_exceptions.UsageError(
            "Missing option '--backend' / '--variant' (or --from with --artifact)"
        )
    ws, cfg = open_workspace(workdir, params)
    run = run_key(cfg, backend, variant, model)
    with writing(ws, f"export {run.name}"):
        echo_summary(stages.export_stage(ws, run, out))


@app.command()
def artifacts(
    write: Annotated[bool, typer.Option(help="rewrite dvc.yaml's artifacts section")] = False,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """The model registry's artifacts for params.yaml's models (every backend x variant x
    model), printed as YAML, or written into dvc.yaml with --write."""
    import yaml

    ws, cfg = open_workspace(workdir, params)
    if write:
        with writing(ws, "artifacts"):
            typer.echo(f"wrote {stages.write_artifacts(ws, cfg)}")
        return
    typer.echo(yaml.safe_dump(stages.model_artifacts(ws, cfg), sort_keys=False), nl=False)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    max_length: Annotated[int, typer.Option(min=1, help="longest generation allowed")] = 2000,
    reload_every: Annotated[
        float, typer.Option(min=0.1, help="seconds between looks for changed models")
    ] = 2.0,
    require_token: Annotated[
        bool, typer.Option(help="want RNN_SERVE_TOKEN even on 127.0.0.1")
    ] = False,
    origin: Annotated[
        str | None,
        typer.Option("--from", help="a project's git origin: serve its registry's models"),
    ] = None,
    stage: Annotated[str, typer.Option(help="with --from: the stage to serve")] = "prod",
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Serve models over HTTP: GET /models, POST /generate (streamed), a page at /. The
    workspace's trained runs (the ONNX bundle training keeps with each), or with --from the
    models a stage holds in a project's registry; either followed as it changes."""
    import os
    import tempfile

    from rnn.serving.server import (
        TOKEN_ENV,
        check_token,
        registry_sources,
        serve_exports,
        workspace_sources,
    )

    token = os.environ.get(TOKEN_ENV) or None
    check_token(host, token, require_token)
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    if origin is not None:
        with tempfile.TemporaryDirectory(prefix="rnn-serve-") as cache:
            sources = registry_sources(origin, stage, Path(cache), say)
            serve_exports(sources, host, port, max_length, token, reload_every, say)
        return
    ws, _ = open_workspace(workdir, params)
    serve_exports(workspace_sources(ws.models, say), host, port, max_length, token, reload_every,
                  say)  # fmt: skip


@app.command()
def report(
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="report directory [default: WORKDIR/reports]")
    ] = None,
) -> None:
    """Compare every trained run of the grid: markdown table, JSON and perplexity curves."""
    ws, cfg = open_workspace(workdir, params)
    runs = grid(cfg.train.backends, cfg.train.variants, cfg.train.models)
    target = out or ws.reports
    with writing(ws, "report"):
        stages.report_stage(ws, runs, target)
    typer.echo((target / "report.md").read_text())


@app.command()
def generate(
    backend: RunBackend = None,
    variant: RunVariant = None,
    model: ModelOpt = None,
    prefix: Annotated[str, typer.Option(help="text to warm the state up on")] = "time traveller",
    num_preds: Annotated[int, typer.Option(min=1)] = 50,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy argmax")] = 0.0,
    top_k: Annotated[int, typer.Option(min=0, help="sample among the k likeliest; 0 = all")] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    origin: OriginOpt = None,
    artifact: ArtifactOpt = None,
    stage: StageOpt = "prod",
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Generate text from a trained model, greedy or sampled, written as it is produced: a run
    of this workspace, or with --from a registered model fetched from another project's origin
    and DVC remote (no checkout needed; run on onnxruntime)."""
    if origin is not None:
        pieces = _registered_text(origin, artifact, stage, prefix, num_preds, temperature,
                                  top_k, seed)  # fmt: skip
    else:
        pieces = _workspace_text(backend, variant, model, params, workdir,
                                 prefix, num_preds, temperature, top_k, seed)  # fmt: skip
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:  # Ctrl-C ends the text's line before the one-line message
        sys.stdout.write("\n")
        sys.stdout.flush()


def _workspace_text(backend, variant, model, params, workdir, *generation) -> Iterator[str]:
    from rnn.data.tokens import stream_text
    from rnn.evaluation.evaluate import load_trained

    if backend is None or variant is None:
        raise click_exceptions.UsageError(
            "Missing option '--backend' / '--variant' (or --from with --artifact)"
        )
    ws, loaded = open_workspace(workdir, params)
    run = run_key(loaded, backend, variant, model)
    engine, vocab = load_trained(run.backend, run.variant, loaded, ws.model(run), ws.vocab)
    return stream_text(engine, vocab, *generation)


def _registered_text(origin, artifact, stage, *generation) -> Iterator[str]:
    import tempfile

    from rnn.serving.fetch import fetch_registered
    from rnn.serving.runtime import OnnxModel

    if artifact is None:
        raise click_exceptions.UsageError("--from needs --artifact (the model's name)")
    with tempfile.TemporaryDirectory(prefix="rnn-generate-") as scratch:
        model = OnnxModel(fetch_registered(origin, artifact, stage, Path(scratch)))
    return model.stream_text(*generation)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def repro(ctx: typer.Context, workdir: WorkdirOpt = None) -> None:
    """`dvc repro` holding the workspace from start to end, so that a second run here fails at
    once naming this one; further arguments go to `dvc repro` (targets, --force, ...)."""
    from rnn.repro import repro as run_repro

    ws = Workspace.at(workdir if workdir is not None else Path.cwd())
    if not ws.root.is_dir():
        raise PipelineError(f"workspace {ws.root} is not a directory", "fix --workdir")
    raise typer.Exit(run_repro(ws, list(ctx.args)))


@app.command()
def sweep(
    sweep_file: Annotated[
        Path | None, typer.Option("--sweep", "-s", help="the search [default: WORKDIR/sweep.yaml]")
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="end after this many trials [default: sweep.yaml's]")
    ] = None,
    params: ParamsOpt = None,
    workdir: WorkdirOpt = None,
) -> None:
    """Search the space of sweep.yaml on this machine: every trial a DVC experiment, the study in
    sweeps/<study>/ (a rerun continues it), with its report."""
    from rnn.search.local import run_sweep, sweep_dir
    from rnn.search.report import write_report
    from rnn.search.space import SWEEP_FILE, load_sweep

    ws, cfg = open_workspace(workdir, params)
    search = load_sweep(sweep_file if sweep_file is not None else ws.root / SWEEP_FILE, cfg)
    result = run_sweep(ws.root, cfg, search, trials, log=lambda line: typer.echo(line, err=True))
    report = write_report(
        result.rows,
        result.study,
        result.samples,
        result.importances,
        sweep_dir(ws.root, search.study) / "report",
    )
    echo_summary({"study": result.study, "best": result.best, "trials": result.counts(),
                  "report": str(report)})  # fmt: skip


@app.command("params")
def show_params(params: ParamsOpt = None, workdir: WorkdirOpt = None) -> None:
    """Validate the parameter file and print it with every default filled in."""
    typer.echo(json.dumps(open_workspace(workdir, params)[1].model_dump(), indent=2))


def main() -> None:  # the `rnn` script and `python -m rnn.cli` alike (pyproject.toml)
    """Run the CLI, ending every failure in one line and a documented status (rnn/exits.py)."""
    try:
        code = app(prog_name=exits.PROG, standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as err:
        print(err.ctx.get_help() if err.ctx else err.format_message())
        exits.finish(exits.OK)
    except click_exceptions.ClickException as err:
        exits.fail(exits.usage_line(err), err.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        exits.fail(exits.interrupted_line(), exits.INTERRUPTED)
    except Exception as err:
        if isinstance(err, TrialPruned):
            exits.fail(f"pruned: {err}", exits.PRUNED)
        line = exits.user_error_line(err)
        if line is not None:
            exits.fail(line, exits.USER_ERROR)
        exits.fail(exits.bug_report(err, _options["verbose"]), exits.BUG)
    if code == exits.INTERRUPTED:  # typer turns Ctrl-C inside a command into Exit(130)
        exits.fail(exits.interrupted_line(), exits.INTERRUPTED)
    exits.finish(code)


if __name__ == "__main__":  # pragma: no cover
    main()

"""Recorded runs: every completed flow run is a DVC experiment pushed to git origin (its
parameters, dvc.lock, metrics and report in git; its models in the DVC remote). From any clone:

    python -m stores.recorded list                      # every recorded run on origin
    python -m stores.recorded compare EXP [EXP ...]     # one report over their models

``dvc exp show`` lists them with every parameter and metric; ``dvc exp apply EXP && dvc pull``
restores one into the workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rnn.errors import PipelineError
from rnn.evaluation.report import RunFiles, build_report
from rnn.workspace import Workspace
from stores.cli import run
from stores.dvc_sync import connect_remote, git_origin, run_dvc

app = typer.Typer(
    help="List and compare recorded runs (DVC experiments on git origin).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="a clone of the project")]


def recorded_on_origin(root: Path) -> list[str]:
    """Names of the experiments pushed to git origin, every baseline commit's."""
    if not git_origin(root):
        raise PipelineError(f"{root} has no git remote 'origin'", "run in a clone of the project")
    listing = run_dvc(root, "exp", "list", "--all-commits", "--name-only", "origin").stdout
    return sorted({line.strip() for line in listing.splitlines() if line.strip()})


def _experiment_sha(root: Path, name: str) -> str:
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import resolve_name

    with Repo(str(root)) as repo:
        ref = resolve_name(repo.scm, name).get(name)
        if ref is None:
            run_dvc(root, "exp", "pull", "origin", name, check=False)
            ref = resolve_name(repo.scm, name).get(name)
        if ref is None:
            raise PipelineError(
                f"no recorded run named {name}", "list them with `python -m stores.recorded list`"
            )
        return repo.scm.get_ref(str(ref))


def fetch_recorded(root: Path, name: str, dest: Path) -> list[RunFiles]:
    """Copy experiment ``name``'s records, evaluations and metrics into ``dest`` (a workspace
    layout), reading git and the DVC remote; its rows are labelled ``name/backend-variant``."""
    from dvc.fs import DVCFileSystem

    try:
        fs = DVCFileSystem(repo=str(root), rev=_experiment_sha(root, name))
        models = fs.ls("data/models", detail=False)
    except FileNotFoundError:
        raise PipelineError(
            f"recorded run {name} has no models", "check the name with `stores.recorded list`"
        ) from None
    ws = Workspace(dest)
    runs = []
    for model in sorted(models):
        run = Path(model).name
        if run.startswith(".") or not fs.exists(f"data/eval/{run}/eval.json"):
            continue  # a stage of dvc.yaml that this run did not train
        fs.get_file(f"data/models/{run}/run.json", str(_parent(ws.models / run) / "run.json"))
        fs.get_file(f"data/eval/{run}/eval.json", str(_parent(ws.evals / run) / "eval.json"))
        fs.get(f"data/metrics/{run}", str(ws.metrics / run), recursive=True)
        runs.append(RunFiles(f"{name}/{run}", ws.models / run, ws.evals / run, ws.metrics / run))
    return runs


def _parent(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def compare_recorded(root: Path, names: list[str], out: Path, scratch: Path):
    runs = [r for name in names for r in fetch_recorded(root, name, scratch / name)]
    return build_report(runs, out)


@app.command("list")
def list_command(workdir: WorkdirOpt = Path()) -> None:
    """Every recorded run on git origin."""
    for name in recorded_on_origin(workdir.resolve()):
        typer.echo(name)


@app.command()
def compare(
    experiments: Annotated[list[str], typer.Argument(help="recorded run names")],
    workdir: WorkdirOpt = Path(),
    out: Annotated[Path, typer.Option(help="report directory")] = Path("reports/compare"),
) -> None:
    """One report over the models of several recorded runs (markdown, JSON, curves)."""
    import tempfile

    root = workdir.resolve()
    connect_remote(root)  # RNN_DVC_REMOTE, as the runs that recorded them used
    with tempfile.TemporaryDirectory(prefix="rnn-compare-") as scratch:
        compare_recorded(root, experiments, root / out, Path(scratch))
    typer.echo((root / out / "report.md").read_text())


def main() -> None:
    run(app)


if __name__ == "__main__":
    main()

"""A copy of this project's checkout, as a machine of the pool (or a test, or a benchmark) gets it:
the working tree's files without pipeline outputs, made a fresh git repository."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# What the pipeline writes in a working tree; a copy must start without it.
PIPELINE_OUTPUTS = ("data/", "reports/", "dvc.lock", "dvc_plots/", ".rnn-workspace.lock")
KEPT = {"data/README.md"}


def project_files() -> list[str]:
    """The working tree's files, tracked or untracked but not ignored, minus pipeline outputs."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        f
        for f in files
        if (f in KEPT or not f.startswith(PIPELINE_OUTPUTS)) and (ROOT / f).is_file()
    ]


def copy_project(dest: Path, params: dict, git: bool = True) -> Path:
    """Copy the project to ``dest`` with ``params`` as params.yaml; with ``git``,
    make it a fresh repository with one commit (DVC needs one)."""
    for f in project_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        ident = ["-c", "user.email=t@t", "-c", "user.name=t"]
        for cmd in (["init", "-q"], [*ident, "add", "-A"], [*ident, "commit", "-qm", "init"]):
            subprocess.run(["git", *cmd], cwd=dest, check=True, capture_output=True)
    return dest


def tiny_params(corpus: Path, lr: float = 1.0) -> dict:
    """params.yaml shrunk so the whole pipeline (four runs) takes seconds: smoke runs of a checkout
    (the tests, the orchestration benchmark) on ``corpus``."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source=str(corpus), sha1=None)
    params["partition"].update(
        max_tokens=3000, train=0.8, valid=0.1, test=0.1, batch_size=4, num_steps=10
    )
    params["train"].update(
        epochs=2,
        lr=lr,
        checkpoint_every=0,
        threads=1,  # 16 units: a second thread only adds synchronisation
    )
    params["models"]["rnn"]["num_hiddens"] = 16
    params["evaluate"].update(num_preds=10)
    return params

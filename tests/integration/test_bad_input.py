"""Bad input everywhere, through the CLI a user types: every case is one line on stderr that
names the problem and the fix, a non-zero exit, and the workspace's earlier outputs untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.workspace import ROOT, tiny_params

pytestmark = pytest.mark.slow

RUN = ["--backend", "torch", "--variant", "scratch", "--model", "rnn"]


def rnn(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args, "--workdir", str(ws)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def snapshot(ws: Path) -> dict[str, str]:
    return {
        str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(ws.rglob("*"))
        if p.is_file() and p.name != ".rnn-workspace.lock"
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workspace with one tiny trained and evaluated run."""
    ws = tmp_path_factory.mktemp("trained")
    params = tiny_params()
    params["train"].update(backends=["torch"], variants=["scratch"])
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    for args in (["ingest"], ["vocab"], ["partition"], ["train", *RUN], ["evaluate", *RUN]):
        result = rnn(ws, *args)
        assert result.returncode == 0, result.stderr
    return ws


def edited(ws: Path, name: str, change) -> str:
    """A parameter file beside the workspace's, changed by ``change`` (the workspace's own
    params.yaml stays as it is)."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    change(params)
    path = ws.parent / f"{ws.name}-{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def setter(section: str, key: str, value):
    def change(params: dict) -> None:
        params.setdefault(section, {})[key] = value

    return change


def models_setter(key: str, value):
    def change(params: dict) -> None:
        params["models"]["rnn"][key] = value

    return change


# (case, command, parameter change, what the line must say)
PARAMETER_CASES = [
    ("unknown backend", "train", setter("train", "backends", ["jax"]), "train.backends"),
    ("unknown variant", "train", setter("train", "variants", ["fancy"]), "train.variants"),
    ("zero batch", "partition", setter("partition", "batch_size", 0), "partition.batch_size"),
    ("negative batch", "partition", setter("partition", "batch_size", -4), "partition.batch_size"),
    ("zero steps", "partition", setter("partition", "num_steps", 0), "partition.num_steps"),
    ("steps beyond the split", "partition", setter("partition", "num_steps", 5000), "num_steps"),
    ("zero lr", "train", setter("train", "lr", 0), "train.lr"),
    ("negative lr", "train", setter("train", "lr", -1.0), "train.lr"),
    ("zero epochs", "train", setter("train", "epochs", 0), "train.epochs"),
    ("negative theta", "train", setter("train", "theta", -1.0), "train.theta"),
    ("zero hiddens", "train", models_setter("num_hiddens", 0), "num_hiddens"),
    ("dropout above 1", "train", models_setter("dropout", 1.5), "dropout"),
    ("absent device", "train", setter("train", "device", "cuda"), "CUDA"),
    ("unknown device", "train", setter("train", "device", "tpu9"), "train.device"),
    ("unknown encoding", "ingest", setter("ingest", "encoding", "klingon-8"), "encoding"),
    ("unknown key", "vocab", setter("vocab", "colour", "blue"), "vocab.colour"),
    ("negative min_freq", "vocab", setter("vocab", "min_freq", -1), "vocab.min_freq"),
]


@pytest.mark.parametrize(
    "case, command, change, says", PARAMETER_CASES, ids=[c[0] for c in PARAMETER_CASES]
)
def test_bad_parameters(trained, case, command, change, says):
    before = snapshot(trained)
    args = [command, *(RUN if command in ("train", "evaluate") else [])]
    result = rnn(trained, *args, "--params", edited(trained, case.replace(" ", "-"), change))
    one_clear_line(result, says)
    assert snapshot(trained) == before


def one_clear_line(result: subprocess.CompletedProcess, says: str) -> None:
    """A non-zero exit and one error line, the last on stderr (training's progress lines may
    come before it), naming the problem and the fix; no traceback."""
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr and "; fix: " in errors[0], result.stderr
    assert says in errors[0], result.stderr


def broken_copy(trained: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(trained, ws)
    return ws


def truncate_weights(ws: Path) -> None:
    weights = ws / "data/models/torch-scratch-rnn/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def flip_a_bit(ws: Path) -> None:
    weights = ws / "data/models/torch-scratch-rnn/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x10  # inside the last tensor: the file still parses, with a wrong number
    weights.write_bytes(bytes(data))


def other_vocabulary(ws: Path) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["vocab"]["reserved_tokens"] = ["<pad>"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    assert rnn(ws, "vocab").returncode == 0


def empty_params(ws: Path) -> None:
    (ws / "params.yaml").write_text("")


def list_params(ws: Path) -> None:
    (ws / "params.yaml").write_text("- ingest\n- vocab\n")


def bad_yaml(ws: Path) -> None:
    (ws / "params.yaml").write_text("train: {lr: [1\n")


def missing_params(ws: Path) -> None:
    (ws / "params.yaml").unlink()


def unknown_corpus_bytes(ws: Path) -> None:
    """Corruption inside otherwise good text: zero bytes spliced into the middle."""
    text = (Path(tiny_params()["ingest"]["source"]).read_bytes())[:20_000]
    (ws / "damaged.txt").write_bytes(text[:12_345] + b"\0" * 64 + text[12_345:])
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["ingest"]["source"] = "damaged.txt"
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


# (case, how the workspace is damaged, the command, what the line must say)
WORKSPACE_CASES = [
    ("truncated weights", truncate_weights, ["evaluate", *RUN], "checksum"),
    ("bit-flipped weights", flip_a_bit, ["generate", *RUN], "checksum"),
    ("export of truncated weights", truncate_weights, ["export", *RUN], "checksum"),
    ("another vocabulary", other_vocabulary, ["evaluate", *RUN], "another vocabulary"),
    ("prefix outside the vocabulary", None, ["generate", *RUN, "--prefix", "Time!"], "'!T'"),
    ("unknown backend option", None, ["train", "-b", "jax", "-v", "scratch"], "jax"),
    ("unknown variant option", None, ["train", "-b", "torch", "-v", "fancy"], "fancy"),
    ("unknown model option", None, ["train", *RUN[:4], "-m", "nope"], "nope"),
    ("empty params.yaml", empty_params, ["vocab"], "params.yaml is empty"),
    ("params.yaml not a mapping", list_params, ["vocab"], "params.yaml"),
    ("malformed params.yaml", bad_yaml, ["vocab"], "not valid YAML"),
    ("missing params.yaml", missing_params, ["vocab"], "not found"),
    ("corruption inside the text", unknown_corpus_bytes, ["ingest"], "at character 12345"),
]


@pytest.mark.parametrize(
    "case, damage, command, says", WORKSPACE_CASES, ids=[c[0] for c in WORKSPACE_CASES]
)
def test_bad_workspace_input(trained, tmp_path, case, damage, command, says):
    ws = broken_copy(trained, tmp_path)
    if damage:
        damage(ws)
    before = snapshot(ws)
    one_clear_line(rnn(ws, *command), says)
    assert snapshot(ws) == before


def test_a_workdir_that_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    one_clear_line(rnn(tmp_path / "file", "vocab"), "is a file")


def test_export_writes_a_model_that_generates_what_the_framework_does(trained, tmp_path):
    """`rnn export` on a trained run: the ONNX model's greedy and sampled text are `rnn
    generate`'s for the same prefix and seed."""
    from rnn.serving.runtime import OnnxModel

    ws = broken_copy(trained, tmp_path)
    exported = rnn(ws, "export", *RUN)
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout)
    model = OnnxModel(summary["path"])
    assert model.name == "torch-scratch-rnn" and Path(summary["path"]).parent == ws / "data/export"
    for extra in ([], ["--temperature", "0.9", "--top-k", "4", "--seed", "5"]):
        generated = rnn(ws, "generate", *RUN, "--prefix", "the time", "--num-preds", "40", *extra)
        assert generated.returncode == 0, generated.stderr
        options = {"temperature": 0.9, "top_k": 4, "seed": 5} if extra else {}
        text = "".join(model.stream_text("the time", 40, **options))
        assert generated.stdout.rstrip("\n") == text

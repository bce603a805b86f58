import json
import subprocess
import sys
from pathlib import Path

import pytest

from rnn.config import load_params
from tests.support.workspace import TIME_MACHINE

STAGES = ["ingest", "fetch", "vocab", "partition", "params"]


def rnn(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "rnn.cli", *args], cwd=cwd, capture_output=True, text=True
    )


def write_params(tmp_path, **sections):
    import yaml

    base = {"ingest": {"source": str(TIME_MACHINE), "sha1": None}}
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage, tmp_path):
    result = rnn(stage, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--params" in result.stdout


def test_stages_chain_with_default_paths(tmp_path):
    write_params(tmp_path, partition={"max_tokens": 10_000})
    for stage in ("ingest", "vocab", "partition"):
        result = rnn(stage, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["minibatches_per_epoch"] == 8
    assert (tmp_path / "data/partition/train.npy").is_file()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"vocab": {"token": "byte"}}, "vocab.token: Input should be 'char' or 'word'"),
        ({"partition": {"train": 0.5}}, "train + valid + test must be 1"),
        ({"train": {"lr": 0}}, "train.lr: Input should be greater than 0"),
        ({"bogus": {}}, "bogus: unknown key"),
        ({"ingest": {"source": "https://example.org/x.txt", "sha1": None}}, "pinned checksum"),
    ],
)
def test_invalid_parameter_is_one_line_and_non_zero(tmp_path, params, message):
    write_params(tmp_path, **params)
    result = rnn("ingest", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert result.stderr.startswith("error: ") and "fix:" in result.stderr
    assert not (tmp_path / "data").exists()


def test_bad_input_through_the_cli(tmp_path):
    (tmp_path / "page.txt").write_text("<html><body>Access denied</body></html>")
    write_params(tmp_path, ingest={"source": "page.txt"})
    result = rnn("ingest", cwd=tmp_path)
    assert result.returncode == 2 and "HTML page" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_missing_params_file(tmp_path):
    result = rnn("vocab", "--params", "nope.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "parameter file nope.yaml not found" in result.stderr


def test_yaml_syntax_error(tmp_path):
    (tmp_path / "params.yaml").write_text("ingest: [unclosed\n")
    result = rnn("params", cwd=tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr


@pytest.mark.parametrize(
    "path", sorted(p.name for p in Path(__file__).parents[2].glob("params*.yaml"))
)
def test_every_documented_parameter_file_is_valid(path):
    """The configurations the README and benchmarks point users at (the main job, the full text,
    the book's comparison of cells, tinyshakespeare) load without an error."""
    params = load_params(Path(__file__).parents[2] / path)
    assert params.train.models and all(params.model(m) for m in params.train.models)

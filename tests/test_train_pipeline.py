"""Tiny end-to-end runs of every backend x variant through train -> evaluate -> report."""

import json

import pytest
from safetensors import safe_open

from rnn.config import (
    IngestConfig,
    ModelConfig,
    Params,
    PartitionConfig,
    TrainConfig,
    VocabConfig,
)
from rnn.corpus import ingest
from rnn.errors import PipelineError
from rnn.evaluate import evaluate_model
from rnn.partition import partition
from rnn.record import file_sha256
from rnn.report import RunFiles, build_report
from rnn.train import DATA_INGEST_KEYS, train_model
from rnn.vocab import build_vocab

from .conftest import TIME_MACHINE

RUNS = [(b, v) for b in ("torch", "tf") for v in ("scratch", "concise")]


def tiny_params(**train) -> Params:
    tiny = {"scratch": ModelConfig(num_hiddens=24), "concise": ModelConfig(num_hiddens=24)}
    return Params(
        ingest=IngestConfig(source=str(TIME_MACHINE)),
        partition=PartitionConfig(
            max_tokens=4000, train=0.8, valid=0.1, test=0.1, batch_size=4, num_steps=10
        ),
        train=TrainConfig(models=tiny, **{"epochs": 4, "checkpoint_every": 2, **train}),
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    p = tiny_params()
    ingest(p.ingest, d / "corpus.parquet")
    build_vocab(d / "corpus.parquet", VocabConfig(), d / "vocab")
    partition(d / "vocab", p.partition, d / "partition")
    return d


def run(data, tmp, backend, variant, params, **kw):
    name = f"{backend}-{variant}"
    return train_model(
        backend,
        variant,
        params,
        data / "partition",
        data / "vocab",
        tmp / "models" / name,
        tmp / "metrics" / name,
        tmp / "ckpt" / name,
        progress=False,
        **kw,
    )


@pytest.mark.parametrize("backend, variant", RUNS)
def test_train_evaluate_and_outputs(data, tmp_path, backend, variant):
    params = tiny_params()
    s = run(data, tmp_path, backend, variant, params)
    assert s.epochs == 4 and s.valid_perplexity is not None and s.tokens_per_s > 0
    model_dir = tmp_path / "models" / f"{backend}-{variant}"
    record = json.loads((model_dir / "run.json").read_text())
    assert record["model_args"] == {"vocab_size": 28, "num_hiddens": 24}
    assert record["params"]["train"]["lr"] == 1.0 and record["versions"][backend]
    assert set(record["params"]) == {"ingest", "vocab", "partition", "train"}
    assert set(record["params"]["ingest"]) == set(DATA_INGEST_KEYS)
    assert len(record["vocab_sha256"]) == 64 and len(record["train_sha256"]) == 64
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:  # safe format, no pickle
        names = list(f.keys())
        assert sum(f.get_tensor(k).size for k in names) == s.num_params
    metrics = json.loads(
        (tmp_path / "metrics" / f"{backend}-{variant}" / "metrics.json").read_text()
    )
    assert metrics["train"]["perplexity"] == pytest.approx(s.train_perplexity)
    assert "valid" in metrics
    ev = evaluate_model(
        backend, variant, params, model_dir, data / "partition", data / "vocab", tmp_path / "eval"
    )
    assert set(ev.perplexity) == {"train", "valid", "test"}
    assert all(1 < v < 28 for v in ev.perplexity.values())
    assert ev.samples["time traveller"].startswith("time traveller")
    assert len(ev.samples["time traveller"]) == len("time traveller") + 50


def with_sampling(params: Params, sampling: str) -> Params:
    return params.model_copy(
        update={"partition": params.partition.model_copy(update={"sampling": sampling})}
    )


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize("variant, sampling", [("scratch", "sequential"), ("concise", "random")])
def test_repeat_is_bit_identical_and_resume_matches(data, tmp_path, backend, variant, sampling):
    params = with_sampling(tiny_params(), sampling)
    run(data, tmp_path / "a", backend, variant, params)
    run(data, tmp_path / "b", backend, variant, params)
    weights = f"models/{backend}-{variant}/model.safetensors"
    record = f"models/{backend}-{variant}/run.json"
    for f in (weights, record):
        assert file_sha256(tmp_path / "a" / f) == file_sha256(tmp_path / "b" / f)
    # Interrupted after 3 of 4 epochs (checkpoint at 2 + the budget's own), then resumed.
    first = run(data, tmp_path / "c", backend, variant, params, epoch_budget=3)
    assert first.epochs == 3 and not (tmp_path / "c" / weights).exists()
    second = run(data, tmp_path / "c", backend, variant, params)
    assert second.resumed_from_epoch == 3 and second.epochs == 4
    assert file_sha256(tmp_path / "c" / weights) == file_sha256(tmp_path / "a" / weights)
    # A changed parameter never resumes another configuration's checkpoint.
    changed_params = with_sampling(tiny_params(lr=0.5), sampling)
    changed = run(data, tmp_path / "c", backend, variant, changed_params, epoch_budget=1)
    assert changed.resumed_from_epoch == 0


def test_report_compares_every_run(data, tmp_path):
    params = tiny_params(epochs=2)
    for backend, variant in RUNS:
        run(data, tmp_path, backend, variant, params)
        evaluate_model(
            backend,
            variant,
            params,
            tmp_path / "models" / f"{backend}-{variant}",
            data / "partition",
            data / "vocab",
            tmp_path / "eval" / f"{backend}-{variant}",
        )
    files = [
        RunFiles(n, tmp_path / "models" / n, tmp_path / "eval" / n, tmp_path / "metrics" / n)
        for n in (f"{b}-{v}" for b, v in RUNS)
    ]
    rows = build_report(files, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    for backend, variant in RUNS:
        assert f"| {backend}-{variant} |" in md
    assert all(r.valid_perplexity and r.test_perplexity and r.wall_time_s > 0 for r in rows)
    assert (tmp_path / "report" / "perplexity.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluating_an_untrained_run_is_a_clear_error(data, tmp_path):
    with pytest.raises(PipelineError, match="run `rnn train`"):
        evaluate_model(
            "torch",
            "scratch",
            tiny_params(),
            tmp_path / "nope",
            data / "partition",
            data / "vocab",
            tmp_path / "eval",
        )


def test_dvc_retrains_on_every_data_parameter_the_record_holds():
    """run.json records the data's content keys; dvc.yaml must list them as the train stage's
    params, or a changed key would leave a stale record behind."""
    import yaml

    from .workspace import ROOT

    train_params = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"]
    assert {f"ingest.{k}" for k in DATA_INGEST_KEYS} | {"vocab"} <= set(train_params)

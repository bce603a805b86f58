"""Tiny end-to-end runs of every backend x variant (and every cell) through train -> evaluate ->
report; bit-identical repeats and resumes, also with Adam, a schedule and dropout; the best
epoch kept and early stopping."""

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
from rnn.data.corpus import ingest
from rnn.data.partition import partition
from rnn.data.vocab import build_vocab
from rnn.errors import PipelineError
from rnn.evaluation.evaluate import evaluate_model
from rnn.evaluation.report import RunFiles, build_report
from rnn.registry import RunKey
from rnn.store.record import file_sha256, read_weights
from rnn.training.identity import DATA_INGEST_KEYS
from rnn.training.loop import train_model
from tests.support.workspace import TIME_MACHINE

RUNS = [(b, v) for b in ("torch", "tf") for v in ("scratch", "concise")]
MODELS = {
    "rnn": ModelConfig(cell="rnn", num_hiddens=24),
    "gru": ModelConfig(cell="gru", num_hiddens=16),
    "lstm": ModelConfig(cell="lstm", num_hiddens=16, num_layers=2, dropout=0.3),
}


def tiny_params(**train) -> Params:
    return Params(
        ingest=IngestConfig(source=str(TIME_MACHINE)),
        partition=PartitionConfig(
            max_tokens=4000, train=0.8, valid=0.1, test=0.1, batch_size=4, num_steps=10
        ),
        train=TrainConfig(**{"epochs": 4, "checkpoint_every": 2, **train}),
        models=MODELS,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    p = tiny_params()
    ingest(p.ingest, d / "corpus.parquet")
    build_vocab(d / "corpus.parquet", VocabConfig(), d / "vocab")
    partition(d / "vocab", p.partition, d / "partition")
    return d


def run(data, tmp, backend, variant, params, model="rnn", **kw):
    name = RunKey(backend, variant, model).name
    return train_model(
        RunKey(backend, variant, model),
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
    model_dir = tmp_path / "models" / f"{backend}-{variant}-rnn"
    record = json.loads((model_dir / "run.json").read_text())
    assert record["model_args"] == {
        "vocab_size": 28,
        "num_hiddens": 24,
        "cell": "rnn",
        "num_layers": 1,
        "dropout": 0.0,
    }
    assert record["params"]["train"]["lr"] == 1.0 and record["versions"][backend]
    assert set(record["params"]) == {"ingest", "vocab", "partition", "train", "model"}
    assert set(record["params"]["ingest"]) == set(DATA_INGEST_KEYS)
    assert len(record["vocab_sha256"]) == 64 and len(record["train_sha256"]) == 64
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:  # safe format, no pickle
        names = list(f.keys())
        stored = sum(f.get_tensor(k).size for k in names)
    assert set(names) == {"W_xh_l0", "W_hh_l0", "b_h_l0", "W_hq", "b_q"}
    # canonical weights; nn.RNN trains an input and a recurrent bias where the file has their sum
    assert stored == s.num_params - (24 if (backend, variant) == ("torch", "concise") else 0)
    metrics = json.loads(
        (tmp_path / "metrics" / f"{backend}-{variant}-rnn" / "metrics.json").read_text()
    )
    assert metrics["train"]["perplexity"] == pytest.approx(s.train_perplexity)
    assert "valid" in metrics
    ev = evaluate_model(
        RunKey(backend, variant, "rnn"),
        params,
        model_dir,
        data / "partition",
        data / "vocab",
        tmp_path / "eval",
    )
    assert set(ev.perplexity) == {"train", "valid", "test"}
    assert all(1 < v < 28 for v in ev.perplexity.values())
    for texts in (ev.samples, ev.sampled):
        assert texts["time traveller"].startswith("time traveller")
        assert len(texts["time traveller"]) == len("time traveller") + 50
    the_model_directory_holds_its_onnx_export(model_dir, data / "vocab/vocab.json", ev, tmp_path)


def the_model_directory_holds_its_onnx_export(model_dir, vocab_file, ev, tmp_path) -> None:
    """Training wrote the ONNX bundle `rnn export` writes, chained to run.json by checksum; its
    greedy text is the framework's; a damaged bundle is refused."""
    from rnn.export.bundle import MANIFEST, export_run, verified_bundle
    from rnn.serving.runtime import OnnxModel

    bundle = verified_bundle(model_dir)
    export_run(model_dir.name, model_dir, vocab_file, tmp_path / "export")
    for name in ("model.onnx", "vocab.json"):
        assert (bundle.path / name).read_bytes() == (tmp_path / "export" / name).read_bytes()
    greedy = "".join(OnnxModel(bundle.path).stream_text("time traveller", 50))
    assert greedy == ev.samples["time traveller"]
    manifest = bundle.path / MANIFEST
    manifest.write_text(manifest.read_text().replace('"perplexity"', '"perplexity" '))
    with pytest.raises(PipelineError, match="does not match"):
        verified_bundle(model_dir)


@pytest.mark.parametrize("backend, variant", RUNS)
@pytest.mark.parametrize("model", ["gru", "lstm"])
def test_gated_cells_train_evaluate_and_name_their_weights(data, tmp_path, backend, variant, model):
    from rnn.backends.canonical import expected_names

    params = tiny_params(epochs=2, optimizer={"name": "adam"}, lr=0.01)
    s = run(data, tmp_path, backend, variant, params, model=model)
    assert s.epochs == 2 and s.valid_perplexity < 28
    key = RunKey(backend, variant, model)
    weights = read_weights(tmp_path / "models" / key.name / "model.safetensors")
    arch = MODELS[model]
    assert set(weights) == expected_names(
        arch.cell, arch.num_layers, recurrent_bias=arch.cell == "gru" and variant == "concise"
    )
    ev = evaluate_model(
        key,
        params,
        tmp_path / "models" / key.name,
        data / "partition",
        data / "vocab",
        tmp_path / "eval",
    )
    assert all(1 < v < 28 for v in ev.perplexity.values())


def with_sampling(params: Params, sampling: str) -> Params:
    return params.model_copy(
        update={"partition": params.partition.model_copy(update={"sampling": sampling})}
    )


ADAM_COSINE = {
    "optimizer": {"name": "adamw", "weight_decay": 0.1},
    "lr": 0.01,
    "schedule": {"name": "cosine", "warmup_steps": 5, "min_lr": 0.001},
}


@pytest.mark.parametrize("backend", ["torch", "tf"])
@pytest.mark.parametrize(
    "variant, sampling, model, train",
    [
        ("scratch", "sequential", "rnn", {}),
        ("concise", "random", "rnn", {}),
        ("scratch", "sequential", "lstm", ADAM_COSINE),  # optimiser state and dropout masks
        ("concise", "sequential", "lstm", ADAM_COSINE),
    ],
)
def test_repeat_is_bit_identical_and_resume_matches(
    data, tmp_path, backend, variant, sampling, model, train
):
    params = with_sampling(tiny_params(**train), sampling)
    run(data, tmp_path / "a", backend, variant, params, model)
    run(data, tmp_path / "b", backend, variant, params, model)
    name = RunKey(backend, variant, model).name
    weights, record = f"models/{name}/model.safetensors", f"models/{name}/run.json"
    for f in (weights, record):
        assert file_sha256(tmp_path / "a" / f) == file_sha256(tmp_path / "b" / f)
    # Interrupted after 3 of 4 epochs (checkpoint at 2 + the budget's own), then resumed.
    first = run(data, tmp_path / "c", backend, variant, params, model, epoch_budget=3)
    assert first.epochs == 3 and not (tmp_path / "c" / weights).exists()
    second = run(data, tmp_path / "c", backend, variant, params, model)
    assert second.resumed_from_epoch == 3 and second.epochs == 4
    assert file_sha256(tmp_path / "c" / weights) == file_sha256(tmp_path / "a" / weights)
    # A changed parameter never resumes another configuration's checkpoint.
    changed_params = with_sampling(tiny_params(**{**train, "seed": 5}), sampling)
    changed = run(data, tmp_path / "c", backend, variant, changed_params, model, epoch_budget=1)
    assert changed.resumed_from_epoch == 0


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_keep_best_keeps_the_best_epoch_and_early_stopping_stops(data, tmp_path, backend):
    """A learning rate high enough to overshoot makes validation perplexity go up and down; the
    model kept is the best epoch's, byte for byte what a run stopped at that epoch writes."""
    noisy = {"lr": 8.0, "epochs": 8, "checkpoint_every": 3}
    long = run(data, tmp_path / "long", backend, "scratch", tiny_params(keep_best=True, **noisy))
    history = json.loads(
        (tmp_path / f"long/metrics/{backend}-scratch-rnn/metrics.json").read_text()
    )
    record = json.loads((tmp_path / f"long/models/{backend}-scratch-rnn/run.json").read_text())
    best = record["best_epoch"]
    assert long.best_epoch == best and record["weights_epoch"] == best
    assert best < 8, "the test needs a run whose last epoch is not its best"
    assert history  # dvclive's summary exists; the per-epoch curve decides below
    curve = tmp_path / f"long/metrics/{backend}-scratch-rnn/plots/metrics/valid/perplexity.tsv"
    values = [float(line.split("\t")[1]) for line in curve.read_text().splitlines()[1:]]
    assert best == 1 + values.index(min(values))
    short = tiny_params(**{**noisy, "epochs": best})
    run(data, tmp_path / "short", backend, "scratch", short)
    kept = read_weights(tmp_path / f"long/models/{backend}-scratch-rnn/model.safetensors")
    at_best = read_weights(tmp_path / f"short/models/{backend}-scratch-rnn/model.safetensors")
    assert all((kept[k] == at_best[k]).all() for k in kept)
    # Early stopping: patience 1 ends the run one epoch after a best that is not beaten.
    stopped = run(
        data, tmp_path / "stop", backend, "scratch", tiny_params(early_stop_patience=1, **noisy)
    )
    first_miss = next(i for i in range(1, len(values)) if values[i] >= min(values[:i]))
    assert stopped.stopped_early and stopped.epochs == first_miss + 1


def test_report_compares_every_run(data, tmp_path):
    params = tiny_params(epochs=2)
    keys = [RunKey(b, v, "rnn") for b, v in RUNS]
    for key in keys:
        run(data, tmp_path, key.backend, key.variant, params)
        evaluate_model(
            key,
            params,
            tmp_path / "models" / key.name,
            data / "partition",
            data / "vocab",
            tmp_path / "eval" / key.name,
        )
    files = [
        RunFiles(
            k.name,
            tmp_path / "models" / k.name,
            tmp_path / "eval" / k.name,
            tmp_path / "metrics" / k.name,
        )
        for k in keys
    ]
    rows = build_report(files, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    for key in keys:
        assert f"| {key.name} | rnn, 1 x 24 |" in md
    assert all(r.valid_perplexity and r.test_perplexity and r.wall_time_s > 0 for r in rows)
    assert (tmp_path / "report" / "perplexity.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluating_an_untrained_run_is_a_clear_error(data, tmp_path):
    with pytest.raises(PipelineError, match="run `rnn train`"):
        evaluate_model(
            RunKey("torch", "scratch", "rnn"),
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

    from tests.support.workspace import ROOT

    train_params = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"]
    assert {f"ingest.{k}" for k in DATA_INGEST_KEYS} | {"vocab"} <= set(train_params)

"""sweep.yaml: a space validated against params.yaml, every bad one refused in one line, and
the study behind it (sampler, pruner, storage) as declared."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from rnn.config import Params, load_params
from rnn.errors import PipelineError
from rnn.search.space import SweepConfig, apply_point, load_sweep
from rnn.search.study import (
    make_pruner,
    make_sampler,
    objective,
    open_study,
    storage_for,
    suggest,
)

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "study": "s1",
    "fixed": {"partition.train": 0.9, "partition.valid": 0.1},
    "space": {
        "train.lr": {"float": [0.1, 10.0], "log": True},
        "models.rnn.num_hiddens": {"int": [8, 64]},
        "models.rnn.num_layers": {"choice": [1, 2]},
    },
}


def write(tmp_path: Path, sweep: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_the_repositorys_sweep_is_valid_against_its_params():
    sweep = load_sweep(ROOT / "sweep.yaml", load_params(ROOT / "params.yaml"))
    assert sweep.space and sweep.sampler.name == "tpe"


def test_a_good_space_loads_and_its_points_are_valid_params(tmp_path):
    sweep = load_sweep(write(tmp_path, GOOD), Params())
    trial = apply_point(Params(), {**sweep.fixed, "train.lr": 3.0, "models.rnn.num_hiddens": 16})
    assert trial.train.lr == 3.0 and trial.models["rnn"].num_hiddens == 16


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"space": {"train.lrr": {"float": [0.1, 1.0]}}}, "'train.lrr' is not a key"),
        ({"space": {"train.lr": {"float": [0.0, 1.0]}}}, "train.lr = 0.0 gives"),
        ({"space": {"train.lr": {"float": [1.0, 0.1]}}}, "low < high"),
        ({"space": {"train.lr": {"float": [0.0, 1.0], "log": True}}}, "log range needs low > 0"),
        ({"space": {"train.lr": {"floaty": [0.1, 1.0]}}}, "space.train.lr"),
        ({"space": {"models.rnn.num_layers": {"choice": [1, 0]}}}, "num_layers = 0 gives"),
        ({"space": {"models.rnn.dropout": {"float": [0.0, 1.5]}}}, "dropout = 1.5 gives"),
        ({"space": {}}, "space"),
        ({"study": "no spaces allowed"}, "study"),
        ({"sampler": {"name": "grid"}}, "grid sampler needs a finite space"),
        ({"pruner": {"name": "asha"}}, "pruner.name"),
        ({"fixed": {"partition.valid": 0.0}}, "partition.valid"),
        ({"fixed": {"train.lr": 1.0}}, "both fixed and searched"),
        ({"run": {"model": "gru"}}, "run.model 'gru' is not a model"),
        ({"fixed": {"partition.valid": 0.1, "partition.train": 0.9, "train.data_parallel": 2}},
         "train.data_parallel"),
        ({"first": [{"train.epochs": 3}]}, "first[0] sets train.epochs"),
        ({"first": [{"train.lr": 1.0}, {"models.rnn.num_layers": 0}]},
         "first[1] gives"),
    ],
)  # fmt: skip
def test_a_bad_space_is_one_line_naming_the_problem(tmp_path, change, named):
    with pytest.raises(PipelineError) as err:
        load_sweep(write(tmp_path, {**GOOD, **change}), Params())
    line = err.value.one_line()
    assert named in line and "\n" not in line and "fix:" in line


def test_a_missing_or_broken_sweep_file_is_one_line(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_sweep(tmp_path / "nope.yaml", Params())
    (tmp_path / "bad.yaml").write_text("space: [unclosed")
    with pytest.raises(PipelineError, match="not valid"):
        load_sweep(tmp_path / "bad.yaml", Params())


def test_sampler_pruner_and_the_study_continue_where_they_were(tmp_path):
    import optuna

    sweep = SweepConfig.model_validate({**GOOD, "pruner": {"name": "median"}})
    assert isinstance(make_sampler(sweep), optuna.samplers.TPESampler)
    assert isinstance(make_pruner(sweep, 10), optuna.pruners.MedianPruner)
    hyper = SweepConfig.model_validate(GOOD)
    assert isinstance(make_pruner(hyper, 10), optuna.pruners.HyperbandPruner)
    journal = str(tmp_path / "j" / "journal.log")
    study = open_study(sweep, storage_for(journal), 10)
    trial = study.ask()
    study.tell(trial, 1.0)
    again = open_study(sweep, storage_for(journal), 10)  # a rerun sees the same trials
    assert [t.value for t in again.trials] == [1.0]
    other = SweepConfig.model_validate({**GOOD, "space": {"train.lr": {"float": [0.2, 2.0]}}})
    with pytest.raises(PipelineError, match="another run or space"):
        open_study(other, storage_for(journal), 10)


def test_the_objective_is_the_log_perplexity():
    assert objective(math.e) == pytest.approx(1.0)
    assert objective(None) == math.inf and objective(float("nan")) == math.inf


def test_the_first_points_run_first_then_the_sampler_draws(tmp_path):
    first = [{"train.lr": 1.0, "models.rnn.num_layers": 2}, {"train.lr": 0.5}]
    sweep = load_sweep(write(tmp_path, {**GOOD, "first": first}), Params())
    study = open_study(sweep, storage_for(str(tmp_path / "j.log")), 10)
    points = []
    for _ in range(3):
        trial = study.ask()
        points.append(suggest(trial, sweep))
        study.tell(trial, 1.0)
    assert points[0] == {
        "train.lr": 1.0,
        "models.rnn.num_hiddens": points[0]["models.rnn.num_hiddens"],
        "models.rnn.num_layers": 2,
    }
    assert points[1]["train.lr"] == 0.5 and points[2]["train.lr"] not in (1.0, 0.5)
    again = open_study(sweep, storage_for(str(tmp_path / "j.log")), 10)  # not queued twice
    assert len(again.trials) == 3 and not [t for t in again.trials if t.state.name == "WAITING"]

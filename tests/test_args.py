"""The argument dataclasses, the parser generated from them, ``--config`` files and ``--dry_run``."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from diffusers_memctl.args import (
    DataArguments,
    EvaluationArguments,
    HubArguments,
    ModelArguments,
    SamplingArguments,
    SweepArguments,
    TrainingArguments,
    TrainingOptions,
    flatten_arguments,
    parse_arguments,
)
from diffusers_memctl.cli.train import GROUPS, main, parse_training_options
from diffusers_memctl.data import TrainingData
from diffusers_memctl.training import build_scheduler, build_training_config, write_json_atomic

ALL_GROUPS = [
    DataArguments,
    ModelArguments,
    SamplingArguments,
    TrainingArguments,
    EvaluationArguments,
    HubArguments,
    SweepArguments,
]


def test_flags_parse_into_typed_dataclasses():
    options = parse_training_options(
        [
            "--dataset_name",
            "pokemon",
            "--resolution",
            "32",
            "--timestep_sampling",
            "ci_normal",
            "--ci_lower",
            "600",
            "--ci_upper",
            "1000",
            "--prediction_type",
            "v_prediction",
            "--learning_rate",
            "3e-4",
            "--train_batch_size",
            "8",
            "--num_inference_steps",
            "25",
        ]
    )
    assert isinstance(options.data, DataArguments) and isinstance(options.sampling, SamplingArguments)
    assert isinstance(options.training, TrainingArguments) and isinstance(options.evaluation, EvaluationArguments)
    assert options.data.dataset_name == "pokemon"
    assert options.data.resolution == 32 and type(options.data.resolution) is int
    assert options.sampling.timestep_sampling == "ci_normal"
    assert options.sampling.ci_lower == 600.0 and type(options.sampling.ci_lower) is float
    assert options.sampling.ci_upper == 1000.0
    assert options.model.prediction_type == "v_prediction"
    assert options.training.learning_rate == pytest.approx(3e-4)
    assert options.training.train_batch_size == 8
    assert options.evaluation.num_inference_steps == 25
    # Flags not given keep the dataclass defaults.
    assert options.training.seed == TrainingArguments().seed
    assert options.sampling.ci_coverage == SamplingArguments().ci_coverage
    assert options.data.train_data_dir is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], True),
        (["--use_ema"], True),
        (["--use_ema", "false"], False),
        (["--use_ema", "False"], False),
        (["--use_ema", "0"], False),
        (["--use_ema", "no"], False),
        (["--use_ema", "true"], True),
        (["--use_ema", "yes"], True),
    ],
)
def test_bool_flags(argv, expected):
    assert parse_training_options(argv).training.use_ema is expected


def test_bool_flag_without_value_before_another_flag():
    options = parse_training_options(["--overwrite_output_dir", "--random_flip", "--seed", "3"])
    assert options.training.overwrite_output_dir is True
    assert options.data.random_flip is True
    assert options.training.seed == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["--use_ema", "maybe"],
        ["--prediction_type", "noise"],
        ["--ci_tail", "clip"],
        ["--train_batch_size", "eight"],
        ["--no_such_flag", "1"],
    ],
)
def test_invalid_flag_values_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as excinfo:
        parse_training_options(argv)
    assert excinfo.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_help_lists_every_field_with_its_help_text(capsys):
    with pytest.raises(SystemExit) as excinfo:
        parse_training_options(["--help"])
    assert excinfo.value.code == 0
    text = capsys.readouterr().out
    for group in GROUPS:
        for f in dataclasses.fields(group):
            assert f"--{f.name}" in text
            assert f.metadata.get("help"), f"{group.__name__}.{f.name} has no help text"


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        parse_training_options(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for group in GROUPS:
        for f in dataclasses.fields(group):
            help_text = " ".join(f.metadata["help"].split())
            assert f"{help_text} (default: {f.default})" in text, f.name
    assert "(default: ddim)" in text and "(default: 1000)" in text


def test_config_file_supplies_defaults_and_flags_override(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(
        json.dumps(
            {
                "timestep_sampling": "ci_normal",
                "ci_lower": 200,
                "ci_upper": 500,
                "train_batch_size": 8,
                "use_ema": False,
                "dataset_name": "flowers",
            }
        )
    )
    options = parse_training_options(["--config", str(config), "--train_batch_size", "4", "--ci_upper", "700"])
    assert options.sampling.timestep_sampling == "ci_normal"
    assert options.sampling.ci_lower == 200
    assert options.sampling.ci_upper == 700.0  # the flag wins over the file
    assert options.training.train_batch_size == 4  # the flag wins over the file
    assert options.training.use_ema is False
    assert options.data.dataset_name == "flowers"
    # A bool flag on the command line overrides a bool from the file.
    assert parse_training_options(["--config", str(config), "--use_ema"]).training.use_ema is True


def test_yaml_config_file(tmp_path):
    yaml = pytest.importorskip("yaml")
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"model_preset": "tiny", "ci_coverage": 0.9, "logger": "none"}))
    options = parse_training_options(["--config", str(config)])
    assert options.model.model_preset == "tiny"
    assert options.sampling.ci_coverage == 0.9
    assert options.training.logger == "none"


def test_yaml_exponent_floats_and_string_bools_are_converted_like_flags(tmp_path):
    yaml = pytest.importorskip("yaml")
    config = tmp_path / "settings.yaml"
    # PyYAML (YAML 1.1) reads `1e-4` as the string '1e-4'; "false" in quotes is a string that must not mean true.
    config.write_text("learning_rate: 1e-4\nuse_ema: 'false'\ntrain_batch_size: '16'\n")
    assert yaml.safe_load(config.read_text())["learning_rate"] == "1e-4"
    options = parse_training_options(["--config", str(config)])
    assert options.training.learning_rate == pytest.approx(1e-4) and type(options.training.learning_rate) is float
    assert options.training.use_ema is False
    assert options.training.train_batch_size == 16


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prediction_type": "noise"}, "prediction_type"),
        ({"use_ema": "perhaps"}, "use_ema"),
        ({"train_batch_size": "many"}, "train_batch_size"),
    ],
)
def test_invalid_config_values_exit_with_usage_error(values, message, tmp_path, capsys):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps(values))
    with pytest.raises(SystemExit) as excinfo:
        parse_training_options(["--config", str(config)])
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_config_keys_error(tmp_path, capsys):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"train_batch_size": 8, "batch_sise": 8}))
    with pytest.raises(SystemExit) as excinfo:
        parse_training_options(["--config", str(config)])
    assert excinfo.value.code == 2
    assert "batch_sise" in capsys.readouterr().err


def test_missing_or_malformed_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        parse_training_options(["--config", str(tmp_path / "nope.json")])
    not_a_mapping = tmp_path / "list.json"
    not_a_mapping.write_text("[1, 2]")
    with pytest.raises(ValueError, match="mapping"):
        parse_training_options(["--config", str(not_a_mapping)])


def _non_default_options(tmp_path) -> TrainingOptions:
    return parse_training_options(
        [
            "--output_dir",
            str(tmp_path / "run"),
            "--model_preset",
            "tiny",
            "--timestep_sampling",
            "ci_normal",
            "--ci_lower",
            "300",
            "--ci_upper",
            "700",
            "--ci_coverage",
            "0.9",
            "--ci_tail",
            "renormalize",
            "--loss_weighting",
            "min_snr",
            "--snr_gamma",
            "3",
            "--use_ema",
            "false",
            "--seed",
            "7",
            "--max_train_steps",
            "12",
            "--classes",
            "1,2",
            "--memorization_threshold",
            "0.25",
            "--logger",
            "none",
        ]
    )


def test_training_config_passed_back_as_config_reproduces_the_settings(tmp_path):
    options = _non_default_options(tmp_path)
    data = TrainingData(torch.zeros(4, 1, 16, 16), "image")
    config = build_training_config(options, data, build_scheduler(options, "image", data.samples))
    # Where a run writes it: local paths inside are relative to the run folder that holds the file.
    path = write_json_atomic(Path(options.training.output_dir) / "training_config.json", config)

    reparsed = parse_training_options(["--config", str(path)])
    assert reparsed.to_dict() == options.to_dict()
    assert reparsed == options
    # Flags still override a training_config.json.
    override = parse_training_options(["--config", str(path), "--seed", "8"])
    assert override.training.seed == 8
    assert override.sampling.ci_lower == 300.0


@pytest.mark.parametrize("kind", ["defaults", "non_default"])
def test_training_options_dict_round_trip(kind, tmp_path):
    options = TrainingOptions() if kind == "defaults" else _non_default_options(tmp_path)
    flat = options.to_dict()
    assert TrainingOptions.from_dict(flat) == options
    # The flat dict survives JSON (what training_config.json stores).
    assert TrainingOptions.from_dict(json.loads(json.dumps(flat))) == options
    # Every field of every group appears exactly once in the flat dict.
    names = [f.name for group in GROUPS for f in dataclasses.fields(group)]
    assert sorted(flat) == sorted(names)


def test_from_dict_rejects_unknown_and_fills_missing():
    with pytest.raises(ValueError, match="learnig_rate"):
        TrainingOptions.from_dict({"learnig_rate": 1e-3})
    partial = TrainingOptions.from_dict({"seed": 5, "ci_lower": 10.0})
    assert partial.training.seed == 5 and partial.sampling.ci_lower == 10.0
    assert partial.training.train_batch_size == TrainingArguments().train_batch_size


@dataclasses.dataclass
class _First:
    shared: int = 1
    only_first: int = 2


@dataclasses.dataclass
class _Second:
    shared: int = 3


def test_duplicate_setting_names_are_rejected():
    with pytest.raises(ValueError, match="shared"):
        parse_arguments([_First, _Second], [])
    with pytest.raises(ValueError, match="shared"):
        flatten_arguments(_First(), _Second())
    # The real groups, sweep settings included, share no name: one name per setting everywhere.
    instances, _ = parse_arguments(ALL_GROUPS, ["--grid_step", "250", "--seed", "2"])
    assert [type(i) for i in instances] == ALL_GROUPS
    assert instances[-1].grid_step == 250 and instances[3].seed == 2
    flatten_arguments(*instances)


def test_dry_run_prints_the_settings_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    output_dir = tmp_path / "run"
    returned = main(["--dry_run", "--output_dir", str(output_dir), "--model_preset", "tiny", "--seed", "11"])
    assert isinstance(returned, TrainingOptions)
    printed = json.loads(capsys.readouterr().out)
    assert printed == returned.to_dict()
    assert printed["seed"] == 11 and printed["dry_run"] is True and printed["output_dir"] == str(output_dir)
    assert list(tmp_path.iterdir()) == []  # no run folder, no logs, nothing in the working directory

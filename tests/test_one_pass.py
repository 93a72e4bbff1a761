"""One training job is one pass: its options are validated once, its run folder planned once, its data loaded once
(training and the evaluation after it measure the same data)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from diffusers_memctl import evaluation, runner, training
from diffusers_memctl.cli import train as train_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _count_calls(monkeypatch, counts: Counter, module, name: str) -> None:
    real = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_one_run_validates_plans_and_loads_its_data_once(tmp_path, monkeypatch):
    counts: Counter = Counter()
    for module in (train_cli, runner, training, evaluation):
        for name in ("validate_options", "plan_run", "load_training_data"):
            if hasattr(module, name):
                _count_calls(monkeypatch, counts, module, name)
    run = tmp_path / "run"
    argv = [
        "--output_dir", str(run),
        "--model_preset", "tiny",
        "--max_train_samples", "16",
        "--train_batch_size", "16",
        "--max_train_steps", "1",
        "--checkpointing_steps", "0",
        "--save_images_epochs", "0",
        "--eval_num_samples", "2",
        "--num_inference_steps", "2",
        "--logger", "none",
    ]  # fmt: skip
    train_cli.main(argv)
    assert json.loads((run / "metrics.json").read_text())["num_samples"] == 2  # the evaluation ran
    assert counts == {"validate_options": 1, "plan_run": 1, "load_training_data": 1}


def test_train_on_its_own_still_validates_and_plans(tmp_path, monkeypatch):
    counts: Counter = Counter()
    for name in ("validate_options", "plan_run"):
        _count_calls(monkeypatch, counts, training, name)
    options = train_cli.parse_training_options(
        ["--output_dir", str(tmp_path / "run"), "--model_preset", "tiny", "--learning_rate", "-1"]
    )
    with pytest.raises(ValueError, match="--learning_rate"):
        training.train(options)
    assert counts == {"validate_options": 1}

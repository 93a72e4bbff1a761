"""Sweep cards (license, Hub dataset ids, a 1D loading line that needs only diffusers) and the `--license` check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from diffusers_memctl.cli.train import main as train_main
from diffusers_memctl.reports.cards import write_sweep_card

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_fixtures  # noqa: E402

hub = hub_fixtures.hub


def _cell(folder: Path, modality: str, **args) -> Path:
    folder.mkdir(parents=True)
    config = {
        "schema_version": 1,
        "modality": modality,
        "args": {"timestep_sampling": "ci_normal", "ci_lower": 600, "ci_upper": 1000, "seed": 0, **args},
        "sampler": {"name": "ci_normal", "num_train_timesteps": 1000, "mu": 800.0, "sigma": 102.0, "p_tail": 0.0},
        "data": {"num_samples": 16, "sample_shape": [3, 64, 64] if modality == "image" else [1, 140]},
    }
    (folder / "training_config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps({"schema_version": 1, "metrics": {"nn_l2_mean": 3.5}}))
    return folder


@pytest.mark.parametrize(
    ("licenses", "expected"),
    [(("cc-by-4.0", "cc-by-4.0"), "cc-by-4.0"), ((None, None), "apache-2.0"), (("mit", "cc-by-4.0"), "other")],
)
def test_sweep_card_carries_the_license_and_the_hub_ids(tmp_path, hub, licenses, expected):
    for cell, license_id in zip(("a", "b"), licenses):
        extra = {"license": license_id} if license_id else {}
        _cell(tmp_path / "sweep" / "cells" / cell, "image", dataset_name="flowers", **extra)
    card = ModelCard.load(write_sweep_card(tmp_path / "sweep"))
    card.validate()  # huggingface_hub's metadata validation, answered by the local Hub stand-in
    assert card.data.license == expected and card.data.datasets == ["huggan/flowers-102-categories"]


def test_signal_sweep_card_loads_a_cell_with_diffusers_alone(tmp_path):
    _cell(tmp_path / "sweep" / "cells" / "a", "signal", dataset_name="ecg5000", data_dir="../data/ecg5000")
    text = write_sweep_card(tmp_path / "sweep", repo_id="me/sweep").read_text()
    assert "diffusers_memctl" not in text.split("## How to load one cell")[1].split("```")[1]
    assert "from diffusers import DiffusionPipeline" in text
    assert 'custom_pipeline="pipeline_ddpm_1d", trust_remote_code=True)' in text


@pytest.mark.parametrize("value", ["Apache 2.0", "", "MIT"])
def test_bad_license_is_refused_naming_the_flag(tmp_path, value):
    with pytest.raises(ValueError, match=r"^--license must be a Hub license id .*got " + repr(value)):
        train_main(["--output_dir", str(tmp_path / "r"), "--license", value, "--dry_run"])

"""What a run or a sweep publishes: no absolute local path anywhere, Hub dataset ids and a license on the cards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from diffusers_memctl.cli.sweep import main as sweep_main
from diffusers_memctl.cli.train import main as train_main
from diffusers_memctl.hub import plan_hub_commit, write_model_card, write_sweep_card

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_fixtures  # noqa: E402

hub = hub_fixtures.hub

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = [
    "--model_preset", "tiny",
    "--max_train_samples", "64",
    "--train_batch_size", "32",
    "--max_train_steps", "2",
    "--num_inference_steps", "3",
    "--logger", "none",
    "--checkpointing_steps", "0",
    "--save_images_epochs", "0",
    "--save_model_epochs", "0",
]  # fmt: skip


def _published_bytes(folder: Path) -> dict[str, bytes]:
    """Every file `plan_hub_commit` would upload from `folder` (checkpoints included), by path in the repo."""
    files = {}
    for op in plan_hub_commit(folder, include_checkpoints=True):
        source = op.path_or_fileobj
        files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
    return files


def _assert_no_root(files: dict[str, bytes], roots: set[str]) -> None:
    leaks = {name: root for name, data in files.items() for root in roots if root.encode() in data}
    assert not leaks, f"absolute local paths published: {leaks}"


def test_fine_tune_and_sweep_from_absolute_paths_publish_no_absolute_path(tmp_path):
    root = tmp_path.resolve()
    roots = {str(root), str(tmp_path)}
    base, run, features = root / "base", root / "ft", root / "features"
    train_main(["--output_dir", str(base), "--eval_num_samples", "0", *FAST])
    train_main(
        [
            "--output_dir", str(run),
            "--pretrained_model_name_or_path", str(base),
            "--feature_cache_dir", str(features),
            "--timestep_sampling", "ci_normal", "--ci_lower", "600", "--ci_upper", "1000",
            "--eval_num_samples", "6",
            "--checkpointing_steps", "1",
            *FAST[:-6],
        ]
    )  # fmt: skip
    assert json.loads((run / "unet" / "config.json").read_text())["_name_or_path"] == "../base/unet"
    args = json.loads((run / "training_config.json").read_text())["args"]
    assert args["feature_cache_dir"] == "../features" and args["pretrained_model_name_or_path"] == "../base"
    published = _published_bytes(run)
    assert {"README.md", "unet/config.json", "training_config.json", "metrics.json"} <= set(published)
    assert any(name.startswith("checkpoints/") for name in published)
    _assert_no_root(published, roots)

    sweep_dir = root / "sweep"
    sweep_main(
        [
            "--sweep_dir", str(sweep_dir),
            "--pretrained_run", str(base),
            "--feature_cache_dir", str(features),
            "--cells", "0:300,300:700,600:1000,0:1000",
            "--seeds", "0",
            "--eval_num_samples", "6",
            *FAST,
        ]
    )  # fmt: skip
    write_sweep_card(sweep_dir)
    config = json.loads((sweep_dir / "sweep_config.json").read_text())
    assert config["sweep"]["pretrained_run"] == "../base"
    assert config["training"]["feature_cache_dir"] == "../features"
    csv_text = (sweep_dir / "sweep_results.csv").read_text()
    assert "cells/ci-0000-0300-seed0" in csv_text
    published = _published_bytes(sweep_dir)
    assert {"sweep_config.json", "sweep_results.csv", "analysis.json", "REPORT.md", "README.md"} <= set(published)
    _assert_no_root(published, roots)


def _run_config(folder: Path, modality: str, **args) -> Path:
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
    ("modality", "args", "hub_id", "sentence"),
    [
        ("image", {"dataset_name": "pokemon"}, "huggan/pokemon", "huggingface.co/datasets/huggan/pokemon"),
        (
            "image",
            {"dataset_name": "flowers", "license": "mit"},
            "huggan/flowers-102-categories",
            "huggingface.co/datasets/huggan/flowers-102-categories",
        ),
        ("image", {"dataset_name": "digits"}, None, "embedded in diffusers-memctl"),
        ("image", {"dataset_name": "pokemon", "train_data_dir": "../data/pokemon"}, None, "a local folder"),
        ("signal", {"dataset_name": "ecg5000", "data_dir": "../data/ecg5000"}, None, "ECG5000 heartbeats"),
    ],
)
def test_cards_name_hub_dataset_ids_and_a_license(tmp_path, hub, modality, args, hub_id, sentence):
    run = _run_config(tmp_path / "run", modality, **args)
    card = ModelCard.load(write_model_card(run, repo_id="me/run"))
    card.validate()  # huggingface_hub's metadata validation, answered by the local Hub stand-in
    assert card.data.license == args.get("license", "apache-2.0")
    assert card.data.datasets == ([hub_id] if hub_id else None)
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {r.dataset_type for r in results} == {hub_id or "local"}
    assert sentence in card.text
    if hub_id is None:
        assert "datasets" not in card.data.to_dict()


def test_sweep_card_carries_the_license_and_the_hub_ids(tmp_path, hub):
    for cell in ("a", "b"):
        _run_config(tmp_path / "sweep" / "cells" / cell, "image", dataset_name="flowers", license="cc-by-4.0")
    card = ModelCard.load(write_sweep_card(tmp_path / "sweep"))
    card.validate()
    assert card.data.license == "cc-by-4.0" and card.data.datasets == ["huggan/flowers-102-categories"]


@pytest.mark.parametrize("value", ["Apache 2.0", "", "MIT"])
def test_bad_license_is_refused_naming_the_flag(tmp_path, value):
    with pytest.raises(ValueError, match=r"^--license must be a Hub license id .*got " + repr(value)):
        train_main(["--output_dir", str(tmp_path / "r"), "--license", value, "--dry_run"])

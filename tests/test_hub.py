"""Tests of diffusers_memctl.hub: model cards, commit planning and pushes against the local Hub stand-in."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from huggingface_hub import ModelCard, hf_hub_download, metadata_load, snapshot_download
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image

from diffusers_memctl.hub import HubPushError, plan_hub_commit, push_sweep_to_hub, push_to_hub
from diffusers_memctl.reports.cards import (
    find_sweep_cells,
    metrics_to_eval_results,
    model_card_template_path,
    render_model_card,
    write_model_card,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_fixtures  # noqa: E402
from hub_fixtures import TOKEN  # noqa: E402
from hub_stand_in import RecordedRequest  # noqa: E402

hub = hub_fixtures.hub  # the stand-in fixture, shared with tests/test_evaluation.py

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = {
    "nn_l2_mean": 3.25,
    "nn_l2_median": 3.0,
    "nn_l2_mean_per_dim": 0.40625,
    "mean_l2": 7.5,
    "memorized_fraction": 0.125,
    "pca_pc1_wasserstein_1": 0.0123456789,
    "pca_pc1_js_distance": 0.2,
    "pca_frechet_distance": 1.5,
}


def make_run_folder(path: Path, *, modality: str = "image", with_model: bool = True, ci=(100.0, 300.0)) -> Path:
    """A real tiny run folder: DDPMPipeline (safetensors), configs, metrics, a plot, and files that must stay local."""
    path.mkdir(parents=True, exist_ok=True)
    if with_model:
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=8,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(8, 8),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )
        DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(
            path, safe_serialization=True
        )
    config = {
        "schema_version": 1,
        "modality": modality,
        "versions": {"diffusers_memctl": "0.1.0", "diffusers": "0.42.1", "torch": torch.__version__},
        "args": {
            "dataset_name": "huggan/pokemon" if modality == "image" else None,
            "train_data_dir": None if modality == "image" else "/data/ecg5000",
            "pretrained_model_name_or_path": "google/ddpm-cifar10-32" if modality == "image" else None,
            "resolution": 8,
            "learning_rate": 1e-4,
            "seed": 0,
            "timestep_sampling": "ci_normal",
            "ci_lower": ci[0],
            "ci_upper": ci[1],
            "ci_coverage": 0.95,
            "ci_tail": "uniform",
            "hub_token": TOKEN,
        },
        "sampler": {"name": "ci_normal", "num_train_timesteps": 1000, "mu": 200.0, "sigma": 51.02, "p_tail": 0.0},
        "data": {"num_samples": 16, "sample_shape": [1, 8, 8] if modality == "image" else [1, 140]},
    }
    (path / "training_config.json").write_text(json.dumps(config))
    metrics = {**METRICS, "signal_js_mean": float("nan")}
    (path / "metrics.json").write_text(
        json.dumps({"schema_version": 1, "metrics": metrics, "num_samples": 16, "seed": 3, "settings": {}})
    )
    (path / "loss_history.jsonl").write_text(json.dumps({"step": 1, "epoch": 0, "loss": 0.5, "lr": 1e-4}) + "\n")
    (path / "plots").mkdir(exist_ok=True)
    Image.new("L", (4, 4), color=128).save(path / "plots" / "nearest_neighbours.png")
    (path / "model.pkl").write_bytes(pickle.dumps({"not": "allowed"}))
    (path / "checkpoints" / "checkpoint-1").mkdir(parents=True, exist_ok=True)
    (path / "checkpoints" / "checkpoint-1" / "optimizer.bin").write_bytes(b"pickle-ish")
    (path / "checkpoints" / "checkpoint-1" / "model.safetensors").write_bytes(b"{}")
    (path / "logs").mkdir(exist_ok=True)
    (path / "logs" / "events.out.tfevents.1.host").write_bytes(b"tb")
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _assert_no_token_on_disk(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file() and path.name != "training_config.json":  # the fixture's own input holds it
                assert TOKEN.encode() not in path.read_bytes(), f"token leaked into {path}"


MODEL_FILES = {
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}
RUN_FILES = MODEL_FILES | {
    "training_config.json",
    "metrics.json",
    "loss_history.jsonl",
    "plots/nearest_neighbours.png",
}


# ---- commit planning -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("include_checkpoints", [False, True])
@pytest.mark.parametrize("path_in_repo", ["", "cells/a/"])
def test_plan_hub_commit_keeps_safe_files_and_refuses_pickles(tmp_path, include_checkpoints, path_in_repo):
    run = make_run_folder(tmp_path / "run")
    with pytest.warns(UserWarning, match="model.pkl") as caught:
        ops = plan_hub_commit(run, path_in_repo=path_in_repo, include_checkpoints=include_checkpoints)
    expected = set(RUN_FILES)
    if include_checkpoints:
        expected.add("checkpoints/checkpoint-1/model.safetensors")
        assert "optimizer.bin" in str(caught[0].message)
    prefix = path_in_repo.strip("/") + "/" if path_in_repo else ""
    assert {op.path_in_repo for op in ops} == {prefix + p for p in expected}
    assert [op.path_in_repo for op in ops] == sorted(op.path_in_repo for op in ops)


def test_plan_hub_commit_rejects_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plan_hub_commit(tmp_path / "nowhere")
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "weights.pt").write_bytes(b"x")
    with pytest.warns(UserWarning, match="weights.pt"), pytest.raises(ValueError, match="nothing to upload"):
        plan_hub_commit(tmp_path / "only")


# ---- model cards ------------------------------------------------------------------------------------------------
def test_metrics_to_eval_results_skips_non_finite_and_validates():
    results = metrics_to_eval_results(
        {"metrics": {"a": 1, "b": float("nan"), "c": 0.5, "d": "text", "e": True}},
        dataset_name="digits",
        dataset_type="custom",
        model_name="m",
    )
    assert [(r.metric_type, r.metric_value) for r in results] == [("a", 1.0), ("c", 0.5)]
    with pytest.raises(ValueError, match="list"):
        metrics_to_eval_results([1, 2], dataset_name="d", dataset_type="t", model_name="m")
    with pytest.raises(ValueError, match="model_name"):
        metrics_to_eval_results({"a": 1.0}, dataset_name="d", dataset_type="t", model_name="")


@pytest.mark.parametrize("modality", ["image", "signal"])
def test_model_card_metadata_round_trips_to_metrics(tmp_path, modality):
    run = make_run_folder(tmp_path / "run", modality=modality, with_model=False)
    readme = write_model_card(run, repo_id="me/memctl-run")
    assert readme == run / "README.md"
    assert not list(run.glob(".README.md.*")), "temporary file left behind"

    meta = metadata_load(readme)
    assert meta["library_name"] == "diffusers"
    assert {"memorization-control", "ddpm", "diffusers-memctl"} <= set(meta["tags"])
    assert ("time-series" if modality == "signal" else "unconditional-image-generation") in meta["tags"]
    assert meta["memctl"] == {
        "timestep_sampling": "ci_normal",
        "ci_lower": 100.0,
        "ci_upper": 300.0,
        "ci_coverage": 0.95,
        "ci_tail": "uniform",
        "num_train_timesteps": 1000,
        "mu": 200.0,
        "sigma": 51.02,
        "p_tail": 0.0,
    }
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "memctl-run"
    assert {r.metric_type: r.metric_value for r in results} == METRICS  # NaN metric left out of the YAML
    body = readme.read_text()
    assert "2601.21348" in body and "](plots/nearest_neighbours.png)" in body
    assert "| `nn_l2_mean` | 3.25 |" in body and "| `signal_js_mean` | nan |" in body
    assert TOKEN not in body and "hub_token" not in body
    if modality == "image":
        assert meta["base_model"] == "google/ddpm-cifar10-32" and meta["datasets"] == ["huggan/pokemon"]
        assert 'DDPMPipeline.from_pretrained("me/memctl-run")' in body.replace("'", '"')
    else:
        assert "base_model" not in meta and "datasets" not in meta  # local data is not a Hub dataset
        assert 'custom_pipeline="pipeline_ddpm_1d", trust_remote_code=True' in body.replace("'", '"')


def test_model_card_without_metrics_and_with_custom_template(tmp_path):
    run = make_run_folder(tmp_path / "run", with_model=False)
    (run / "metrics.json").unlink()
    card = render_model_card(run)
    assert "model-index" not in card.data.to_dict() and "memctl-evaluate" in card.text
    template = tmp_path / "t.md"
    template.write_text("---\n{{ card_data }}\n---\nCustom {{ timestep_sampling }}\n")
    assert render_model_card(run, template_path=template).text.strip() == "Custom ci_normal"
    with pytest.raises(FileNotFoundError, match="training_config.json"):
        render_model_card(tmp_path)


def test_card_templates_ship_in_the_wheel(tmp_path):
    source = tmp_path / "src"
    for name in ("diffusers_memctl", "model_cards"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        if (REPO_ROOT / name).exists():
            shutil.copy(REPO_ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in sorted((REPO_ROOT / "model_cards").glob("*.md")):
        assert f"diffusers_memctl/model_cards/{template.name}" in names
    assert model_card_template_path().name == "memctl_model_card.md"


def test_every_subpackage_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "diffusers_memctl").rglob("__init__.py")
    }
    assert on_disk - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"


# ---- pushes against the stand-in --------------------------------------------------------------------------------
def _writes(records: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in records if r.method == "POST"]


def test_push_to_hub_round_trip(hub, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    run = make_run_folder(tmp_path / "run")
    with pytest.warns(UserWarning, match="model.pkl"):
        url = push_to_hub(run, "me/memctl-run", token=TOKEN, private=True)
    assert url.startswith(f"{hub.url}/me/memctl-run/commit/")
    assert (run / "README.md").is_file(), "the model card is written before the push"

    writes = _writes(hub.records)
    assert [r.path for r in writes] == [
        "/api/repos/create",
        "/api/validate-yaml",
        "/api/models/me/memctl-run/preupload/main",
        "/api/models/me/memctl-run/commit/main",
    ]
    assert writes[0].body == {"name": "memctl-run", "organization": "me", "visibility": "private"}
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.records)
    header, *files = writes[-1].body
    assert header["key"] == "header" and header["value"]["summary"] == "Upload diffusers-memctl run run"
    assert {f["value"]["path"] for f in files} == RUN_FILES | {"README.md"}
    assert all(f["key"] == "file" and f["value"]["encoding"] == "base64" for f in files)
    stored = hub.server.files("me/memctl-run")
    assert (
        stored["unet/diffusion_pytorch_model.safetensors"]
        == (run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    assert not any("xet" in r.path for r in hub.records)
    assert not any(TOKEN.encode() in content for content in stored.values()), "token sent in a file"
    assert json.loads(stored["training_config.json"])["args"]["hub_token"] is None

    # The repo is private: anonymous reads fail; with HF_TOKEN set, consumers get everything back.
    with pytest.raises(Exception, match="401|Repository Not Found"):
        hf_hub_download("me/memctl-run", "metrics.json", token=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    metrics_path = hf_hub_download("me/memctl-run", "metrics.json")
    assert json.loads(Path(metrics_path).read_text())["metrics"]["nn_l2_mean"] == METRICS["nn_l2_mean"]
    card = ModelCard.load("me/memctl-run")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == METRICS
    pipeline = DDPMPipeline.from_pretrained("me/memctl-run")
    image = pipeline(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (8, 8)
    assert Path(hub.home / "hub").is_dir(), "downloads go to the isolated cache"
    _assert_no_token_on_disk(tmp_path)
    assert TOKEN not in caplog.text


def test_push_uses_hf_token_env_and_can_open_a_pr(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fromEnvironment")
    run = make_run_folder(tmp_path / "run")
    with pytest.warns(UserWarning):
        push_to_hub(run, "me/env-run")
    with pytest.warns(UserWarning):
        url = push_to_hub(run, "me/env-run", create_pr=True, commit_message="second", path_in_repo="v2")
    assert {r.authorization for r in hub.records if r.method == "POST"} == {"Bearer hf_fromEnvironment"}
    assert [r.status for r in hub.records if r.path == "/api/repos/create"] == [200, 409]  # exist_ok path
    assert hub.records[-1].query == {"create_pr": ["1"]} and url.startswith(hub.url)
    assert "v2/model_index.json" not in hub.server.files("me/env-run", "main")
    assert "v2/model_index.json" in hub.server.files("me/env-run", "refs/pr/1")


def test_failed_push_raises_hub_push_error_and_leaves_files(hub, tmp_path):
    run = make_run_folder(tmp_path / "run")
    write_model_card(run, repo_id="me/broken")
    before = _snapshot(run)
    hub.server.failures["commit"] = 500
    with pytest.warns(UserWarning), pytest.raises(HubPushError) as info:
        push_to_hub(run, "me/broken", token=TOKEN, private=True)
    message = str(info.value)
    assert "'me/broken'" in message and "500" in message and "committing" in message
    assert f"push_to_hub('{run.resolve()}', 'me/broken', private=True)" in message
    assert info.value.retry_code in message and TOKEN not in message
    assert _snapshot(run) == before
    _assert_no_token_on_disk(tmp_path)


def test_push_rejects_bad_repo_ids_before_any_request(hub, tmp_path):
    with pytest.raises(ValueError, match="not a/valid/id"):
        push_to_hub(tmp_path, "not a/valid/id", token=TOKEN)
    with pytest.raises(FileNotFoundError, match="missing"):
        push_to_hub(tmp_path / "missing", "me/x", token=TOKEN)
    assert hub.records == []


def test_unreachable_endpoint_gives_hub_push_error(tmp_path):
    run = make_run_folder(tmp_path / "run", with_model=False)
    with pytest.warns(UserWarning), pytest.raises(HubPushError, match="creating the repo 'me/x'") as info:
        push_to_hub(run, "me/x", token=TOKEN, endpoint="http://127.0.0.1:9")
    assert "endpoint='http://127.0.0.1:9'" in info.value.retry_code and TOKEN not in str(info.value)
    assert (run / "README.md").is_file() and (run / "model.pkl").is_file()


def test_push_sweep_to_one_repo_and_load_a_cell(hub, tmp_path):
    sweep = tmp_path / "sweep"
    make_run_folder(sweep / "cells" / "ci_100_300", ci=(100.0, 300.0))
    make_run_folder(sweep / "cells" / "ci_500_900", ci=(500.0, 900.0))
    (sweep / "sweep_results.json").write_text(json.dumps({"rows": []}))
    (sweep / "plots").mkdir()
    Image.new("L", (4, 4)).save(sweep / "plots" / "correlations.png")
    assert [c.name for c in find_sweep_cells(sweep)] == ["ci_100_300", "ci_500_900"]

    with pytest.warns(UserWarning, match="model.pkl"):
        push_sweep_to_hub(sweep, "me/sweep", token=TOKEN)
    stored = hub.server.files("me/sweep")
    expected = {f"cells/{c}/{p}" for c in ("ci_100_300", "ci_500_900") for p in RUN_FILES | {"README.md"}}
    expected |= {"README.md", "sweep_results.json", "plots/correlations.png", ".gitattributes"}
    assert set(stored) == expected
    assert len([r for r in hub.records if r.path.endswith("/commit/main")]) == 1
    root_card = stored["README.md"].decode()
    assert "[`cells/ci_500_900`](cells/ci_500_900/README.md)" in root_card and "snapshot_download" in root_card
    cell_meta = ModelCard(stored["cells/ci_500_900/README.md"].decode()).data.to_dict()
    assert cell_meta["memctl"]["ci_lower"] == 500.0

    # Pipelines cannot load a repo subfolder: download the cell, then load it from disk (as the cards say).
    local = snapshot_download("me/sweep", allow_patterns=["cells/ci_500_900/*"])
    assert not (Path(local) / "cells" / "ci_100_300").exists()
    pipeline = DDPMPipeline.from_pretrained(f"{local}/cells/ci_500_900")
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 8, 1)
    unet = UNet2DModel.from_pretrained("me/sweep", subfolder="cells/ci_100_300/unet")
    assert unet.config.sample_size == 8
    _assert_no_token_on_disk(tmp_path)


@pytest.mark.parametrize(
    ("dataset_name", "hub_id"),
    [("pokemon", "huggan/pokemon"), ("flowers", "huggan/flowers-102-categories"), ("digits", None), ("ecg5000", None)],
)
def test_card_maps_presets_to_hub_ids_and_sets_the_license(tmp_path, dataset_name, hub_id):
    run = make_run_folder(tmp_path / "run", modality="image", with_model=False)
    config = json.loads((run / "training_config.json").read_text())
    config["args"].update(dataset_name=dataset_name, license="mit")
    (run / "training_config.json").write_text(json.dumps(config))
    readme = write_model_card(run, repo_id="me/memctl-run")
    card = ModelCard.load(readme)
    meta = card.data.to_dict()
    assert meta["license"] == "mit"
    if hub_id is None:
        assert "datasets" not in meta  # embedded or local data is not a Hub dataset
        assert dataset_name in readme.read_text()  # named in a sentence instead
    else:
        assert meta["datasets"] == [hub_id]
        _, results = model_index_to_eval_results(meta["model-index"])
        assert {r.dataset_type for r in results} == {hub_id} and {r.dataset_name for r in results} == {hub_id}


def test_license_defaults_to_apache(tmp_path):
    run = make_run_folder(tmp_path / "run", modality="signal", with_model=False)
    assert metadata_load(write_model_card(run))["license"] == "apache-2.0"

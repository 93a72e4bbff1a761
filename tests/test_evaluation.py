"""Tests of the evaluation of run folders (`training_scripts/evaluate_memctl.py`, `diffusers_memctl.evaluation`)
and of the training script's push to the Hub stand-in, on tiny runs trained once per module."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline
from huggingface_hub import hf_hub_download, metadata_load
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers_memctl.args import DataArguments, EvaluationArguments
from diffusers_memctl.cli import train as train_cli
from diffusers_memctl.data import TrainingData, load_training_data
from diffusers_memctl.evaluation import (
    METRICS_SCHEMA_VERSION,
    evaluate_run,
    evaluation_settings,
    generate_samples,
    load_run_pipeline,
)
from diffusers_memctl.metrics import compute_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_fixtures  # noqa: E402
from hub_fixtures import TOKEN  # noqa: E402

# Tiny models run fastest on one thread; two spinning threads on a busy 2-core machine cost seconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

hub = hub_fixtures.hub  # the Hub stand-in fixture, shared with tests/test_hub.py

REPO_ROOT = Path(__file__).resolve().parents[1]
# The script itself, not only the library function behind it.
evaluate_script = runpy.run_path(str(REPO_ROOT / "training_scripts" / "evaluate_memctl.py"))["main"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NUM_TRAIN_SAMPLES = 64
T = 50  # a short schedule keeps full DDPM sampling (T model calls) cheap
COMMON_TRAIN_FLAGS = [
    "--model_preset", "tiny",
    "--max_train_samples", str(NUM_TRAIN_SAMPLES),
    "--max_train_steps", "2",
    "--train_batch_size", "32",
    "--num_train_timesteps", str(T),
    "--eval_num_samples", "0",
    "--logger", "none",
    "--checkpointing_steps", "0",
    "--save_images_epochs", "0",
    "--save_model_epochs", "0",
]  # fmt: skip


def _data_arguments(modality: str, shared_data: Path) -> DataArguments:
    if modality == "signal":
        return DataArguments(
            dataset_name="ecg5000", data_dir=str(shared_data / "ecg5000"), max_train_samples=NUM_TRAIN_SAMPLES
        )
    return DataArguments(dataset_name="digits", max_train_samples=NUM_TRAIN_SAMPLES)


def _train(output_dir: Path, modality: str, shared_data: Path, *extra: str) -> Path:
    data_flags = ["--dataset_name", "digits"]
    if modality == "signal":
        data_flags = ["--dataset_name", "ecg5000", "--data_dir", str(shared_data / "ecg5000")]
    train_cli.main([*data_flags, *COMMON_TRAIN_FLAGS, "--output_dir", str(output_dir), *extra])
    return output_dir


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory, shared_data) -> dict[str, Path]:
    """One tiny, unevaluated run folder per modality (tests copy them before writing into them)."""
    root = tmp_path_factory.mktemp("runs")
    return {modality: _train(root / modality, modality, shared_data) for modality in ("image", "signal")}


@pytest.fixture
def image_run(trained_runs, tmp_path) -> Path:
    return Path(shutil.copytree(trained_runs["image"], tmp_path / "image-run"))


@pytest.fixture
def signal_run(trained_runs, tmp_path) -> Path:
    return Path(shutil.copytree(trained_runs["signal"], tmp_path / "signal-run"))


# ---- the report --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality", ["image", "signal"])
def test_evaluate_script_writes_a_report_that_samples_reproduce(trained_runs, tmp_path, shared_data, modality):
    run = Path(shutil.copytree(trained_runs[modality], tmp_path / "run"))
    assert not (run / "metrics.json").exists()
    report = evaluate_script([str(run), "--eval_num_samples", "6", "--num_inference_steps", "4", "--eval_seed", "3"])

    written = json.loads((run / "metrics.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["schema_version"] == METRICS_SCHEMA_VERSION
    assert written["num_samples"] == 6 and written["seed"] == 3
    assert written["settings"]["sampler"] == "ddim" and written["settings"]["num_inference_steps"] == 4
    assert written["settings"]["num_training_samples"] == NUM_TRAIN_SAMPLES
    assert {"load_training_data_s", "generate_s", "metrics_s", "plots_s"} <= set(written["timings"])
    assert all(value >= 0 for value in written["timings"].values())

    training = load_training_data(_data_arguments(modality, shared_data)).samples
    with np.load(run / "samples.npz") as archive:
        samples = archive["samples"]
    expected_shape = (6, 1, 16, 16) if modality == "image" else (6, 1, 140)
    assert samples.shape == expected_shape == (6, *training.shape[1:])
    assert np.isfinite(samples).all()
    if modality == "image":
        assert samples.min() >= -1.0 and samples.max() <= 1.0

    # Anyone holding samples.npz and the training data gets the same numbers back (on the CPU; the report may have
    # been computed on a GPU where one exists, hence the float32-level tolerance).
    recomputed = compute_metrics(torch.from_numpy(samples), training, modality=modality)
    assert set(written["metrics"]) == set(recomputed)
    assert ("signal_js_mean" in recomputed) == (modality == "signal")
    for name, value in recomputed.items():
        assert written["metrics"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name

    plots = {p.name: p for p in (run / "plots").glob("*.png")}
    shown = "nearest_neighbors.png" if modality == "image" else "signal_overlay.png"
    assert {"pca_scatter.png", "nn_distances.png", "loss_history.png", shown} <= set(plots)
    for path in plots.values():
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC, path
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


def test_seeded_generation_is_reproducible_and_the_seed_matters(image_run):
    def samples(seed: int) -> np.ndarray:
        evaluate_script(
            [str(image_run), "--eval_num_samples", "4", "--eval_batch_size", "3", "--num_inference_steps", "3"]
            + ["--eval_seed", str(seed), "--no_plots"]
        )
        with np.load(image_run / "samples.npz") as archive:
            return archive["samples"]

    first, again, other = samples(7), samples(7), samples(8)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 5)])
def test_ddpm_uses_the_training_schedule_and_ddim_the_requested_steps(trained_runs, sampler, steps):
    unet, scheduler_config = load_run_pipeline(trained_runs["image"], "image")
    calls = []
    unet.register_forward_hook(lambda module, args, output: calls.append(args[1]))
    samples = generate_samples(
        unet,
        scheduler_config,
        "image",
        num_samples=3,
        batch_size=2,
        sampler=sampler,
        num_inference_steps=steps,
        progress=False,
    )
    assert samples.shape == (3, 1, 16, 16) and torch.isfinite(samples).all()
    per_batch = T if steps is None else steps
    assert len(calls) == 2 * per_batch  # two batches (2 + 1 samples)
    timesteps = [int(t.flatten()[0]) for t in calls[:per_batch]]
    assert timesteps[0] >= T - T // per_batch and timesteps == sorted(timesteps, reverse=True)
    assert len(set(timesteps)) == per_batch


def test_evaluation_announces_its_cost_in_one_line_before_it_starts(image_run, caplog):
    with caplog.at_level("INFO", logger="diffusers_memctl.evaluation"):
        report = evaluate_run(image_run, num_samples=5, batch_size=2, make_plots=False, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "diffusers_memctl.evaluation"]
    # One line before (the cost), one after (are the samples near the data at all?).
    assert len(lines) == 2
    assert "5 samples, DDIM 50 steps, batch 2, cpu, float32" in lines[0] and "about" in lines[0]
    assert "samples vs data:" in lines[1] and lines[1].endswith(report["sample_check"]["line"])
    assert report["settings"]["sampler"] == "ddim" and report["settings"]["num_inference_steps"] == 50
    estimate, actual = report["timings"]["generate_estimate_s"], report["timings"]["generate_s"]
    assert 0 < estimate and actual / 20 < estimate < actual * 20  # order of magnitude on a shared machine


def test_evaluate_run_with_ddpm_sampling_records_it(signal_run):
    report = evaluate_run(signal_run, num_samples=2, sampler="ddpm", make_plots=False, progress=False)
    assert report["settings"]["sampler"] == "ddpm" and report["settings"]["num_inference_steps"] == T
    assert "plots_s" not in report["timings"] and not (signal_run / "plots").exists()
    with np.load(signal_run / "samples.npz") as archive:
        assert archive["samples"].shape == (2, 1, 140)


def test_evaluate_run_takes_one_settings_object_and_overrides_by_field_or_former_name(signal_run):
    settings = EvaluationArguments(eval_num_samples=3, num_inference_steps=2, eval_seed=4, js_bins=7)
    report = evaluate_run(signal_run, settings, eval_num_samples=2, batch_size=1, make_plots=False, progress=False)
    assert (report["num_samples"], report["seed"]) == (2, 4)
    assert report["settings"]["batch_size"] == 1 and report["settings"]["js_bins"] == 7
    assert report["settings"]["num_inference_steps"] == 2
    assert settings.eval_num_samples == 3  # the caller's object is not changed


def test_evaluation_settings_defaults_match_the_flags_and_unknown_names_fail_in_one_line():
    assert evaluation_settings() == EvaluationArguments()
    assert evaluation_settings(num_samples=7, seed=2, sampler="ddpm", mixed_precision="bf16", batch_size=3) == (
        EvaluationArguments(
            eval_num_samples=7, eval_seed=2, eval_sampler="ddpm", eval_mixed_precision="bf16", eval_batch_size=3
        )
    )
    with pytest.raises(TypeError, match="unknown evaluation setting 'num_sample'; valid names: .*eval_num_samples"):
        evaluate_run("no/such/run", num_sample=2)


# ---- bad input -----------------------------------------------------------------------------------------------------
def test_run_folder_without_a_model_is_refused(image_run):
    shutil.rmtree(image_run / "unet")
    (image_run / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no saved model"):
        evaluate_script([str(image_run), "--eval_num_samples", "2", "--num_inference_steps", "2"])
    assert not (image_run / "metrics.json").exists()


def test_folders_that_are_not_runs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a diffusers-memctl run"):
        evaluate_script([str(tmp_path), "--eval_num_samples", "2"])
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        evaluate_script([str(tmp_path / "nowhere" / "run"), "--eval_num_samples", "2"])


def test_missing_relative_folder_that_looks_like_a_hub_id_names_both_readings(tmp_path, monkeypatch):
    # "runs/typo" is tried as a Hub repository; no Hub is reachable in tests (conftest refuses non-loopback
    # connections), so that download fails, and the error must say that neither a folder nor a repository was found.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs/typo is no local folder, and as a Hub repository"):
        evaluate_script(["runs/typo", "--eval_num_samples", "2"])
    (tmp_path / "training_config.json").write_text(json.dumps({"lr": 1e-4}))
    with pytest.raises(ValueError, match="not a training config"):
        evaluate_script([str(tmp_path), "--eval_num_samples", "2"])


@pytest.mark.parametrize("num_samples", [1, 0])
def test_fewer_than_two_samples_are_refused(image_run, num_samples):
    with pytest.raises(ValueError, match="num_samples >= 2"):
        evaluate_script([str(image_run), "--eval_num_samples", str(num_samples)])
    assert not (image_run / "metrics.json").exists() and not (image_run / "samples.npz").exists()


def _report_files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in ("metrics.json", "samples.npz")}


def test_nan_weights_fail_clearly_and_keep_the_previous_report(image_run):
    flags = ["--eval_num_samples", "3", "--num_inference_steps", "2", "--no_plots"]
    evaluate_script([str(image_run), *flags])
    good = _report_files(image_run)

    weights = image_run / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()  # the run id: these diverged weights are still this run's
    save_file({name: torch.full_like(tensor, float("nan")) for name, tensor in state.items()}, weights, metadata)
    with pytest.raises(ValueError, match="NaN") as info:
        evaluate_script([str(image_run), *flags])
    assert "3 of 3" in str(info.value) and str(image_run) in str(info.value)
    assert _report_files(image_run) == good
    # No temporary file or staging folder is left behind (the run folder's lock file stays, unlocked).
    assert sorted(p.name for p in image_run.iterdir() if p.name.startswith(".")) in ([], [".memctl.lock"])


def test_failed_plotting_keeps_metrics_and_samples_consistent(image_run, monkeypatch):
    import diffusers_memctl.evaluation as evaluation

    flags = ["--eval_num_samples", "3", "--num_inference_steps", "2"]
    evaluate_script([str(image_run), *flags, "--no_plots"])
    good = _report_files(image_run)

    def broken_plots(*args, **kwargs):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(evaluation, "write_evaluation_plots", broken_plots)
    with pytest.raises(RuntimeError, match="exploded"):
        evaluate_script([str(image_run), *flags, "--eval_seed", "1"])
    # samples.npz must keep matching metrics.json: both from the last successful evaluation.
    assert _report_files(image_run) == good


@pytest.mark.parametrize("modality", ["image", "signal"])
def test_training_data_of_another_shape_is_refused(image_run, signal_run, modality):
    run = image_run if modality == "image" else signal_run
    wrong = torch.zeros(8, 1, 8, 8) if modality == "image" else torch.zeros(8, 2, 140)
    with pytest.raises(ValueError, match=r"shape .* but the training data"):
        evaluate_run(
            run,
            num_samples=2,
            num_inference_steps=2,
            training_data=TrainingData(wrong, modality),
            make_plots=False,
            progress=False,
        )
    assert not (run / "metrics.json").exists() and not (run / "samples.npz").exists()


# ---- the training script pushes to the Hub (stand-in) -------------------------------------------------------------
def test_train_script_pushes_the_run_and_plain_diffusers_loads_it(hub, tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    run = _train(
        tmp_path / "run",
        "image",
        shared_data,
        "--eval_num_samples", "2",
        "--num_inference_steps", "2",
        "--checkpointing_steps", "1",
        "--push_to_hub",
        "--hub_model_id", "user/tiny",
        "--hub_private_repo",
    )  # fmt: skip
    assert any((run / "checkpoints").glob("checkpoint-*/*.bin")), "the run holds pickles that must stay local"

    create = next(r for r in hub.records if r.path == "/api/repos/create")
    assert create.body["visibility"] == "private" and create.authorization == f"Bearer {TOKEN}"
    stored = hub.server.files("user/tiny")
    assert {
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "training_config.json",
        "metrics.json",
        "loss_history.jsonl",
        "samples.npz",
        "README.md",
    } <= set(stored)
    assert not [name for name in stored if name.endswith((".bin", ".pkl", ".pt")) or name.startswith("checkpoints/")]
    for name in ("unet/diffusion_pytorch_model.safetensors", "metrics.json", "training_config.json"):
        assert stored[name] == (run / name).read_bytes(), name
    assert not any(TOKEN.encode() in content for content in stored.values())

    card = metadata_load(hf_hub_download("user/tiny", "README.md"))
    assert card["library_name"] == "diffusers"
    with pytest.raises(Exception, match="401|Repository Not Found"):
        hf_hub_download("user/tiny", "metrics.json", token=False)  # private

    pipeline = DDPMPipeline.from_pretrained("user/tiny")
    assert type(pipeline.scheduler).__name__ == "DDPMScheduler"  # plain diffusers, no plugin class needed
    image = pipeline(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (16, 16)
    assert np.asarray(image).std() > 0


def test_sample_check_flags_samples_far_from_the_data():
    from diffusers_memctl.evaluation import FAR_FROM_DATA_RATIO, sample_distance_check

    near = sample_distance_check({"nn_l2_median": 2.0}, {"nn_l2_median": 2.5})
    assert near["far_from_data"] is False and near["ratio"] == pytest.approx(0.8)
    assert "near the data" in near["line"] and "\n" not in near["line"]
    far = sample_distance_check({"nn_l2_median": 9.0}, {"nn_l2_median": 2.85})
    assert far["far_from_data"] is True and far["ratio"] > FAR_FROM_DATA_RATIO
    assert "FAR from the data" in far["line"] and "2.85" in far["line"]
    between = sample_distance_check({"nn_l2_median": 1.5}, {"nn_l2_median": 1.0})
    assert between["far_from_data"] is False and "within 2x" in between["line"] and "or closer" not in between["line"]
    unknown = sample_distance_check({"nn_l2_median": 1.0}, {})
    assert unknown["far_from_data"] is None and "no leave-one-out reference" in unknown["line"]


def test_untrained_model_is_reported_far_from_the_data_in_metrics_log_and_card(tmp_path, caplog):
    # Two optimizer steps: the model generates noise; metrics.json, the log and the card must all say so.
    from diffusers_memctl.cli import train as train_cli

    run = tmp_path / "noise"
    with caplog.at_level("INFO", logger="diffusers_memctl.evaluation"):
        train_cli.main(
            ["--model_preset", "tiny", "--max_train_samples", "64", "--train_batch_size", "32",
             "--max_train_steps", "2", "--eval_num_samples", "32", "--num_inference_steps", "5",
             "--save_images_epochs", "0", "--logger", "none", "--output_dir", str(run)]
        )  # fmt: skip
    check = json.loads((run / "metrics.json").read_text())["sample_check"]
    assert check["far_from_data"] is True, check
    assert any("FAR from the data" in record.getMessage() for record in caplog.records)
    assert "FAR from the data" in (run / "README.md").read_text()

"""Commands and habits of diffusers' ``train_unconditional.py`` work here: its flag names, ``--logger wandb``, the
sample grid in the tracker, checkpoints with ``unet/`` and ``unet_ema/``, and extending a finished run."""

import io
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffusers_memctl.args import flag_aliases
from diffusers_memctl.cli import run_cli
from diffusers_memctl.cli.train import GROUPS, main, parse_training_options
from diffusers_memctl.data import load_training_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _argv(output_dir: Path, *extra: str, steps: int = 2) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--model_preset", "tiny", "--max_train_steps", str(steps),
        "--train_batch_size", "16", "--max_train_samples", "64", "--checkpointing_steps", "0",
        "--save_images_epochs", "0", "--eval_num_samples", "0", "--num_inference_steps", "2", "--logger", "none",
        *extra,
    ]  # fmt: skip


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "loss_history.jsonl").read_text().splitlines() if line.strip()]


def _config(run: Path) -> dict:
    return json.loads((run / "training_config.json").read_text())


# --------------------------------------------------------------------------------------------------------------
# Flag names of train_unconditional.py
# --------------------------------------------------------------------------------------------------------------


def test_anchor_flag_names_set_our_settings():
    options = parse_training_options(
        [
            "--ddpm_num_steps", "500", "--ddpm_beta_schedule", "squaredcos_cap_v2", "--ddpm_num_inference_steps", "20",
            "--dataset_config_name", "small", "--model_config_name_or_path", "cfg", "--logging_dir", "tb",
            "--dataloader_num_workers", "2", "--logger", "wandb",
        ]
    )  # fmt: skip
    assert options.model.num_train_timesteps == 500
    assert options.model.beta_schedule == "squaredcos_cap_v2"
    assert options.evaluation.num_inference_steps == 20
    assert options.data.dataset_config_name == "small" and options.data.dataloader_num_workers == 2
    assert options.model.model_config_name_or_path == "cfg"
    assert options.training.logging_dir == "tb" and options.training.logger == "wandb"
    # One field per setting: the alias is not a second setting.
    assert "ddpm_num_steps" not in options.to_dict()
    assert flag_aliases(GROUPS) == {
        "ddpm_num_steps": "num_train_timesteps",
        "ddpm_beta_schedule": "beta_schedule",
        "ddpm_num_inference_steps": "num_inference_steps",
    }


def test_help_names_the_aliases(capsys):
    with pytest.raises(SystemExit):
        parse_training_options(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for alias in ("--ddpm_num_steps", "--ddpm_beta_schedule", "--ddpm_num_inference_steps"):
        assert f"Also {alias} (diffusers' train_unconditional.py name)" in text


def test_config_file_accepts_the_aliases_and_refuses_both_names(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"ddpm_num_steps": 300}))
    assert parse_training_options(["--config", str(config)]).model.num_train_timesteps == 300
    config.write_text(json.dumps({"ddpm_num_steps": 300, "num_train_timesteps": 400}))
    with pytest.raises(SystemExit):
        parse_training_options(["--config", str(config)])
    assert "ddpm_num_steps and num_train_timesteps set the same setting" in capsys.readouterr().err


def test_anchor_flags_reach_the_saved_scheduler(tmp_path):
    run = tmp_path / "run"
    main(_argv(run, "--ddpm_num_steps", "500", "--ddpm_beta_schedule", "squaredcos_cap_v2"))
    scheduler = json.loads((run / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["num_train_timesteps"] == 500 and scheduler["beta_schedule"] == "squaredcos_cap_v2"
    args = _config(run)["args"]
    assert args["num_train_timesteps"] == 500 and args["beta_schedule"] == "squaredcos_cap_v2"


def _image_parquet(path: Path, count: int, value: int) -> None:
    def png(i: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((8, 8), (value + i) % 256, dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    features = datasets.Features({"image": datasets.Image()})
    rows = {"image": [{"bytes": png(i), "path": None} for i in range(count)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


def test_dataset_config_name_picks_a_configuration_of_a_hub_format_folder(tmp_path):
    folder = tmp_path / "two-configs"
    _image_parquet(folder / "small" / "train-00000-of-00001.parquet", 4, 10)
    _image_parquet(folder / "large" / "train-00000-of-00001.parquet", 6, 200)
    (folder / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: small\n  data_files:\n  - split: train\n    path: small/*.parquet\n"
        "- config_name: large\n  data_files:\n  - split: train\n    path: large/*.parquet\n---\n"
    )
    for name, count in (("small", 4), ("large", 6)):
        options = parse_training_options(
            ["--dataset_name", str(folder), "--dataset_config_name", name, "--resolution", "8"]
            + ["--cache_dir", str(tmp_path / "cache")]
        )
        data = load_training_data(options.data)
        assert data.samples.shape == (count, 1, 8, 8), name
    # The embedded digits have no configurations: one clear line naming the flag.
    digits = parse_training_options(["--dataset_config_name", "small"])
    with pytest.raises(ValueError, match="--dataset_config_name 'small'"):
        load_training_data(digits.data)


def test_dataloader_num_workers_decode_the_same_samples():
    one = load_training_data(parse_training_options(["--max_train_samples", "100"]).data)
    workers = parse_training_options(["--max_train_samples", "100", "--dataloader_num_workers", "2"])
    assert torch.equal(load_training_data(workers.data).samples, one.samples)


def test_model_config_name_or_path_builds_a_fresh_model_of_that_config(tmp_path):
    from diffusers import UNet2DModel

    config = dict(UNet2DModel.load_config(_tiny_unet_folder(tmp_path)))
    config["block_out_channels"] = [24, 48]
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    run = tmp_path / "run"
    main(_argv(run, "--model_config_name_or_path", str(folder / "config.json"), "--resolution", "16"))
    assert UNet2DModel.load_config(run / "unet")["block_out_channels"] == [24, 48]
    published = _config(run)["args"]["model_config_name_or_path"]
    assert published == "../config/config.json"  # relative to the run folder: no absolute path is published
    # The config's sample size must fit the data.
    with pytest.raises(ValueError, match="--model_config_name_or_path .* --resolution"):
        main(_argv(tmp_path / "r8", "--model_config_name_or_path", str(folder), "--resolution", "8"))
    with pytest.raises(ValueError, match="pass one"):
        main(
            _argv(
                tmp_path / "both", "--model_config_name_or_path", str(folder), "--pretrained_model_name_or_path", "x"
            )
        )


def _tiny_unet_folder(tmp_path: Path) -> Path:
    from diffusers_memctl.models.unet_2d_presets import create_unet_2d

    folder = tmp_path / "tiny"
    create_unet_2d("tiny", resolution=16, in_channels=1).save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------------------
# Trackers: TensorBoard images, wandb offline, the extra named when wandb is missing
# --------------------------------------------------------------------------------------------------------------


def test_tensorboard_receives_the_sample_grid_every_save_images_epochs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    run = tmp_path / "run"
    # 64 samples in batches of 16: 4 steps per epoch; 12 steps = 3 epochs; a grid every 2 epochs and at the end.
    main(_argv(run, "--logger", "tensorboard", "--logging_dir", "tb", "--save_images_epochs", "2", steps=12))
    events = list((run / "tb").rglob("events.out.tfevents.*"))
    assert events and not (run / "logs").exists()
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={IMAGES: 0}).Reload()
    images = accumulator.Images("samples")
    assert [event.step for event in images] == [8, 12]
    grid = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))
    assert grid.shape == (64, 64, 3)  # 16 samples of 16 x 16 in a 4 x 4 grid
    assert grid.std() > 0  # samples, not a blank image


def test_wandb_offline_run_holds_the_sample_grids(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    main(_argv(run, "--logger", "wandb", "--save_images_epochs", "1", steps=8))
    offline = list((run / "logs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run / "logs").rglob("*"))
    media = sorted((offline[0] / "files" / "media" / "images").glob("samples_*.png"))
    assert len(media) == 2  # epochs 1 and 2
    assert np.asarray(Image.open(media[0])).shape[:2] == (64, 64)
    assert list(offline[0].glob("*.wandb"))  # the run's history, for `wandb sync`
    assert not (tmp_path / "wandb").exists()  # nothing in the working directory


def test_logger_wandb_without_the_package_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib.util.find_spec("wandb") is then None
    assert run_cli(main, _argv(tmp_path / "run", "--logger", "wandb")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "pip install 'diffusers-memctl[wandb]'" in error[0] and "--logger wandb" in error[0]
    assert not (tmp_path / "run").exists()


def test_logging_dir_outside_the_run_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--logging_dir"):
        main(_argv(tmp_path / "run", "--logging_dir", str(tmp_path / "elsewhere")))


# --------------------------------------------------------------------------------------------------------------
# Extending a finished run
# --------------------------------------------------------------------------------------------------------------


def test_a_finished_run_extends_exactly_to_a_larger_max_train_steps(tmp_path):
    # A constant learning rate: then 5 steps + 3 more are the same computation as 8 steps in one go.
    common = ["--checkpointing_steps", "2", "--lr_scheduler", "constant", "--eval_num_samples", "4"]
    run, straight = tmp_path / "run", tmp_path / "straight"
    main(_argv(run, *common, steps=5))
    # The final state is checkpointed even off the checkpointing grid, so the extension starts from step 5.
    assert (run / "checkpoints" / "checkpoint-5").is_dir()
    first_metrics = (run / "metrics.json").read_text()

    result, report = main(_argv(run, *common, "--resume_from_checkpoint", "latest", steps=8))
    assert result.global_step == 8 and not result.already_finished and report is not None
    main(_argv(straight, *common, steps=8))
    assert [r["loss"] for r in _history(run)] == [r["loss"] for r in _history(straight)]
    weights = "unet/diffusion_pytorch_model.safetensors"
    # Tensors, not bytes: each run's weights carry its own run id in the safetensors metadata.
    extended, once = load_file(run / weights), load_file(straight / weights)
    assert extended.keys() == once.keys() and all(torch.equal(extended[k], once[k]) for k in once)
    assert json.loads((run / "train_complete.json").read_text())["global_step"] == 8
    assert (run / "metrics.json").read_text() != first_metrics  # evaluated again, on the extended model

    extensions = _config(run)["extensions"]
    assert extensions == [
        {
            "from_step": 5,
            "to_step": 8,
            "resumed_from": "checkpoints/checkpoint-5",
            "previous_args": {"max_train_steps": 5, "num_epochs": 50, "lr_scheduler": "constant"},
        }
    ]
    assert _config(run)["args"]["max_train_steps"] == 8
    assert "from step 5 to 8" in (run / "README.md").read_text()

    # The same length again: nothing to do, and nothing changes.
    before = (run / "loss_history.jsonl").read_bytes()
    result, _ = main(_argv(run, *common, "--resume_from_checkpoint", "latest", steps=8))
    assert result.already_finished and (run / "loss_history.jsonl").read_bytes() == before


def test_extending_a_run_without_checkpoints_says_why_not(tmp_path):
    run = tmp_path / "run"
    main(_argv(run, steps=2))
    with pytest.raises(ValueError, match="no checkpoint .*--checkpointing_steps 0"):
        main(_argv(run, "--resume_from_checkpoint", "latest", steps=4))

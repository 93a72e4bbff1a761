"""End-to-end runs of the one training loop through ``main([...])`` on tiny models, in-process and in subprocesses.

Every run is a few optimizer steps of the "tiny" preset; the slow ones (resume after SIGKILL, two processes) are
marked ``slow`` and still run by default.
"""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file
from scipy.stats import norm

from diffusers_memctl.cli.train import main, parse_training_options
from diffusers_memctl.data import TrainingData
from diffusers_memctl.scheduling_memctl import MemCtlDDPMScheduler
from diffusers_memctl.training import NonFiniteLossError, build_model, epoch_batches, step_generator, train

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training_scripts" / "train_memctl.py"
NUM_BINS = 10


def _argv(output_dir: Path, *extra: str, steps: int | None = 3, batch_size: int = 16) -> list[str]:
    """Flags of a fast run: tiny model, a few steps, no previews, no tracker, no evaluation unless asked.

    Flags in `extra` come last, so they override these (argparse keeps the last value).
    """
    return [
        "--output_dir",
        str(output_dir),
        "--model_preset",
        "tiny",
        *(["--max_train_steps", str(steps)] if steps is not None else []),
        "--train_batch_size",
        str(batch_size),
        "--checkpointing_steps",
        "0",
        "--save_images_epochs",
        "0",
        "--eval_num_samples",
        "0",
        "--num_inference_steps",
        "5",
        "--logger",
        "none",
        *extra,
    ]


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "loss_history.jsonl").read_text().splitlines() if line.strip()]


def _logged_steps_while_running(run: Path) -> list[int]:
    """Steps in the loss history of a run that is still writing it (a line being appended is skipped)."""
    path = run / "loss_history.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return steps


def _config(run: Path) -> dict:
    return json.loads((run / "training_config.json").read_text())


def _assert_history(run: Path, steps: int, draws_per_step: int) -> list[dict]:
    records = _history(run)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for record in records:
        assert math.isfinite(record["loss"])
        assert len(record["bin_losses"]) == NUM_BINS and len(record["bin_counts"]) == NUM_BINS
        assert sum(record["bin_counts"]) == draws_per_step
        for count, bin_loss in zip(record["bin_counts"], record["bin_losses"]):
            assert (bin_loss is None) == (count == 0)
            assert bin_loss is None or math.isfinite(bin_loss)
        # The step loss is the count-weighted mean of the bin losses.
        weighted = sum(c * b for c, b in zip(record["bin_counts"], record["bin_losses"]) if c)
        assert weighted / draws_per_step == pytest.approx(record["loss"], rel=1e-5)
    return records


def _upper_fraction(records: list[dict], first_bin: int = 6) -> float:
    counts = np.sum([r["bin_counts"] for r in records], axis=0)
    return float(counts[first_bin:].sum() / counts.sum())


def _max_abs_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _subprocess_env(**extra: str) -> dict:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a few shared cores the tiny models run several times faster without OpenMP barriers
    (and the subprocesses use one too, so in-process and subprocess steps compute alike)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------------------
# A digits run shared by several tests (uniform pretraining with EMA, evaluation on 8 samples)
# --------------------------------------------------------------------------------------------------------------

DIGITS_STEPS, DIGITS_BATCH = 4, 16


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    argv = _argv(
        run,
        "--checkpointing_steps",
        str(DIGITS_STEPS),
        "--eval_num_samples",
        "8",
        "--eval_batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--lr_warmup_steps",
        "1",
        steps=DIGITS_STEPS,
        batch_size=DIGITS_BATCH,
    )
    result, report = main(argv)
    return run, result, report, parse_training_options(argv)


def test_digits_run_writes_a_complete_run_folder(digits_run):
    run, result, report, options = digits_run
    assert result.global_step == DIGITS_STEPS and math.isfinite(result.final_loss)
    index = json.loads((run / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert (run / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    # The memctl keys stay in the scheduler config (ignored by plain diffusers).
    assert json.loads((run / "scheduler" / "scheduler_config.json").read_text())["timestep_sampling"] == "uniform"

    config = _config(run)
    assert config["modality"] == "image"
    # No absolute local path is published: output_dir is the folder itself, as seen from itself.
    assert config["args"] == {**options.to_dict(), "output_dir": "."}
    assert config["data"]["num_samples"] == 1797 and config["data"]["sample_shape"] == [1, 16, 16]
    assert config["sampler"]["name"] == "uniform" and config["sampler"]["num_train_timesteps"] == 1000
    assert {"diffusers", "torch", "accelerate", "diffusers_memctl"} <= set(config["versions"])
    # A run's training_config.json passed back as --config reproduces its settings (paths resolved back).
    assert parse_training_options(["--config", str(run / "training_config.json")]).to_dict() == options.to_dict()

    records = _assert_history(run, DIGITS_STEPS, DIGITS_BATCH)
    assert records[-1]["loss"] == pytest.approx(result.final_loss)
    assert records[0]["lr"] == pytest.approx(1e-3)  # warm-up of one step, then cosine decay
    assert records[-1]["lr"] < records[0]["lr"]

    assert (run / "checkpoints" / f"checkpoint-{DIGITS_STEPS}").is_dir()
    assert report["num_samples"] == 8 and report["settings"]["num_inference_steps"] == 5
    assert all(math.isfinite(v) for v in report["metrics"].values())
    assert json.loads((run / "metrics.json").read_text())["metrics"] == report["metrics"]
    assert (run / "README.md").is_file()


def test_plain_diffusers_loads_the_image_run_without_the_plugin(digits_run):
    """A fresh interpreter that never imports diffusers_memctl loads and samples the run with `DDPMPipeline`."""
    run = digits_run[0]
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import torch
        from diffusers import DDPMPipeline

        pipeline = DDPMPipeline.from_pretrained(sys.argv[1])
        pipeline.set_progress_bar_config(disable=True)
        images = pipeline(
            batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images
        print(json.dumps({
            "shape": list(images.shape),
            "finite": bool(np.isfinite(images).all()),
            "scheduler": type(pipeline.scheduler).__name__,
            "plugin_imported": sorted(m for m in sys.modules if m.startswith("diffusers_memctl")),
        }))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(run)],
        cwd=run.parent,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"shape": [2, 16, 16, 1], "finite": True, "scheduler": "DDPMScheduler", "plugin_imported": []}


@pytest.mark.parametrize("use_ema", [True, False])
def test_saved_unet_holds_the_ema_weights_only_with_use_ema(use_ema, digits_run, tmp_path):
    from diffusers import UNet2DModel

    if use_ema:
        run, steps = digits_run[0], DIGITS_STEPS
    else:
        run, steps = tmp_path / "run", 2
        main(_argv(run, "--use_ema", "false", "--checkpointing_steps", "2", "--learning_rate", "1e-3", steps=steps))
    checkpoint = run / "checkpoints" / f"checkpoint-{steps}"
    saved = load_file(run / "unet" / "diffusion_pytorch_model.safetensors")
    # The checkpoint holds the trained (non-averaged) weights at the last step as a diffusers folder, as diffusers'
    # train_unconditional.py writes it, and no accelerate model.safetensors beside it.
    raw_model = UNet2DModel.from_pretrained(checkpoint, subfolder="unet")
    raw = {name: value.detach() for name, value in raw_model.state_dict().items()}
    assert not (checkpoint / "model.safetensors").exists()
    if not use_ema:
        assert _max_abs_diff(saved, raw) == 0.0
        assert not (checkpoint / "unet_ema").exists()
        return
    assert _max_abs_diff(saved, raw) > 1e-6, "with EMA the saved model must not be the raw trained weights"
    # EMA in unet_ema/: the averaged weights, and the EMA state in its config; no pickle in a checkpoint.
    assert not list(checkpoint.glob("custom_checkpoint_*")) and not (checkpoint / "ema.safetensors").exists()
    averaged = UNet2DModel.from_pretrained(checkpoint, subfolder="unet_ema")
    assert _max_abs_diff(saved, averaged.state_dict()) == 0.0
    ema = EMAModel.from_pretrained(checkpoint / "unet_ema", model_cls=UNet2DModel)
    assert ema.optimization_step == steps
    for name, shadow in zip([n for n, _ in averaged.named_parameters()], ema.shadow_params):
        torch.testing.assert_close(saved[name], shadow, rtol=0, atol=0)


def test_finetune_from_a_run_folder_with_ci_normal(digits_run, tmp_path):
    pretrained = digits_run[0]
    run = tmp_path / "ci-600-1000"
    steps = 3
    # A negligible learning rate: the fine-tuned weights must stay at the pretrained ones (not a fresh init).
    result, _ = main(
        _argv(
            run,
            "--pretrained_model_name_or_path",
            str(pretrained),
            "--timestep_sampling",
            "ci_normal",
            "--ci_lower",
            "600",
            "--ci_upper",
            "1000",
            "--learning_rate",
            "1e-12",
            steps=steps,
        )
    )
    assert result.global_step == steps

    # The sampler summary, against the definition computed here with scipy.
    sampler = _config(run)["sampler"]
    z = norm.ppf((1 + 0.95) / 2)
    mu, sigma = 800.0, (1000 - 600) / (2 * z)
    p_tail = norm.cdf(-mu / sigma) + 1 - norm.cdf((1000 - mu) / sigma)
    assert sampler["name"] == "ci_normal"
    assert sampler["mu"] == pytest.approx(mu) and sampler["sigma"] == pytest.approx(sigma, rel=1e-6)
    assert sampler["p_tail"] == pytest.approx(p_tail, rel=1e-6)
    # Published relative to the run folder, and it resolves back to the pretrained run.
    published = _config(run)["args"]["pretrained_model_name_or_path"]
    assert not Path(published).is_absolute() and (run / published).resolve() == pretrained.resolve()
    scheduler_config = json.loads((run / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["timestep_sampling"] == "ci_normal"
    assert (scheduler_config["ci_lower"], scheduler_config["ci_upper"]) == (600, 1000)

    # Timesteps followed the sampler: ~96% of the mass is in [600, 1000) (bins 6..9), against 40% under uniform.
    expected = (norm.cdf((1000 - mu) / sigma) - norm.cdf((600 - mu) / sigma)) + p_tail * 0.4
    assert expected > 0.95
    assert _upper_fraction(_assert_history(run, steps, 16)) >= 0.85
    assert _upper_fraction(_history(pretrained)) <= 0.7

    before = load_file(pretrained / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(run / "unet" / "diffusion_pytorch_model.safetensors")
    assert _max_abs_diff(before, after) < 1e-6


# --------------------------------------------------------------------------------------------------------------
# Other data sources
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def pokemon_files(shared_data, tmp_path) -> list[Path]:
    folder = tmp_path / "pokemon"
    folder.mkdir()
    sources = sorted((shared_data / "pokemon-artwork").glob("*.jpg"))[:24]
    assert len(sources) == 24
    return [Path(shutil.copy(source, folder / source.name)) for source in sources]


@pytest.mark.parametrize("source", ["imagefolder", "parquet"])
def test_local_image_datasets(source, pokemon_files, tmp_path):
    if source == "imagefolder":
        data_flags = ["--train_data_dir", str(pokemon_files[0].parent)]
    else:
        # As on the Hub: the image bytes embedded in the file (a column of paths would still point at the folder).
        parquet = tmp_path / "train.parquet"
        images = [{"bytes": p.read_bytes(), "path": p.name} for p in pokemon_files]
        table = datasets.Dataset.from_dict({"image": images, "label": list(range(24))})
        table.cast_column("image", datasets.Image()).to_parquet(str(parquet))
        shutil.rmtree(pokemon_files[0].parent)
        data_flags = ["--dataset_name", str(parquet)]
    run = tmp_path / "run"
    argv = [*data_flags, "--resolution", "16", "--cache_dir", str(tmp_path / "cache"), "--random_flip"]
    result, _ = main(_argv(run, *argv, steps=2, batch_size=8))
    assert result.global_step == 2
    data = _config(run)["data"]
    assert data["num_samples"] == 24 and data["sample_shape"] == [3, 16, 16]
    assert data["image_column"] == "image" and data["color_mode"] == "RGB" and data["num_skipped"] == 0
    _assert_history(run, 2, 8)
    assert json.loads((run / "unet" / "config.json").read_text())["sample_size"] == 16


def test_ecg5000_signals_train_reload_and_generate(shared_data, tmp_path):
    from diffusers_memctl.pipelines import DDPM1DPipeline

    run = tmp_path / "ecg"
    result, _ = main(
        _argv(run, "--dataset_name", "ecg5000", "--data_dir", str(shared_data / "ecg5000"), steps=3, batch_size=16)
    )
    assert result.global_step == 3 and math.isfinite(result.final_loss)
    config = _config(run)
    assert config["modality"] == "signal" and config["data"]["sample_shape"] == [1, 140]
    _assert_history(run, 3, 16)

    # A run folder carries its UNet as remote code (it loads with diffusers alone): loading it is an explicit opt-in.
    pipeline = DDPM1DPipeline.from_pretrained(run, trust_remote_code=True)
    pipeline.set_progress_bar_config(disable=True)
    signals = pipeline(batch_size=3, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).signals
    assert signals.shape == (3, 1, 140)
    assert np.isfinite(signals).all()


def test_tensorboard_logger_writes_event_files(tmp_path):
    run = tmp_path / "run"
    main(_argv(run, "--logger", "tensorboard", "--logging_steps", "1", "--max_train_samples", "64", steps=2))
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file under {run / 'logs'}"
    assert sum(f.stat().st_size for f in events) > 0
    # The loss scalars are in the events.
    assert any(b"loss" in f.read_bytes() for f in events)


@pytest.mark.parametrize("modality", ["image", "signal"])
def test_fresh_weights_come_from_the_seed_and_leave_the_global_generator_alone(modality):
    shape = (4, 1, 16, 16) if modality == "image" else (4, 1, 140)
    data = TrainingData(torch.zeros(shape), modality)

    def initial_weights(seed: int) -> dict:
        return build_model(parse_training_options(["--model_preset", "tiny", "--seed", str(seed)]), data).state_dict()

    global_state = torch.random.get_rng_state()
    first, again, other = initial_weights(0), initial_weights(0), initial_weights(1)
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert _max_abs_diff(first, again) == 0.0
    assert _max_abs_diff(first, other) > 1e-3


# --------------------------------------------------------------------------------------------------------------
# Resume after SIGKILL
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    steps, every = 20, 3
    # 64 samples in batches of 16: 4 steps per epoch, so the kill and the resume fall inside and across epochs.
    common = [
        "--max_train_samples",
        "64",
        "--checkpointing_steps",
        str(every),
        "--learning_rate",
        "1e-3",
        "--lr_warmup_steps",
        "5",
        "--random_flip",
        "--seed",
        "3",
    ]
    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *_argv(killed, *common, steps=steps)],
            cwd=tmp_path,
            env=_subprocess_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        # Kill once checkpoint-6 exists and the step after it is logged, i.e. the checkpoint is complete.
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint after 240 s:\n{log.read_text()[-3000:]}"
            checkpoint_done = (killed / "checkpoints" / f"checkpoint-{2 * every}").is_dir()
            if checkpoint_done and max(_logged_steps_while_running(killed), default=0) > 2 * every:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "model_index.json").exists() and not (killed / "train_complete.json").exists()
    logged_before_kill = len(_history(killed))
    assert 2 * every < logged_before_kill < steps

    resumed_result, _ = main(_argv(killed, *common, "--resume_from_checkpoint", "latest", steps=steps))
    reference = tmp_path / "reference"
    reference_result, _ = main(_argv(reference, *common, steps=steps))
    assert resumed_result.global_step == reference_result.global_step == steps

    # Records after the checkpoint were dropped and rewritten: one per step, the same losses as without the kill.
    resumed_history = _assert_history(killed, steps, 16)
    reference_history = _assert_history(reference, steps, 16)
    for got, want in zip(resumed_history, reference_history):
        assert got["bin_counts"] == want["bin_counts"]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7)
    resumed = load_file(killed / "unet" / "diffusion_pytorch_model.safetensors")
    uninterrupted = load_file(reference / "unet" / "diffusion_pytorch_model.safetensors")
    assert _max_abs_diff(resumed, uninterrupted) <= 1e-6
    # ... and the run actually trained: the weights moved between the first and the last checkpoint.
    weights = "unet/diffusion_pytorch_model.safetensors"
    first = load_file(reference / "checkpoints" / f"checkpoint-{every}" / weights)
    last = load_file(reference / "checkpoints" / f"checkpoint-{steps - steps % every}" / weights)
    assert _max_abs_diff(first, last) > 1e-4


class _CrashDuringCheckpoint(Exception):
    pass


@pytest.mark.slow
def test_a_crash_while_saving_a_checkpoint_leaves_the_previous_one_resumable(tmp_path):
    """A process killed half-way through writing checkpoint-4 must not leave a folder that 'latest' would pick."""
    from accelerate import Accelerator

    class CrashingAccelerator(Accelerator):
        def save_state(self, output_dir=None, **kwargs):
            if "checkpoint-4" in Path(output_dir).name:
                Path(output_dir).mkdir(parents=True, exist_ok=True)
                (Path(output_dir) / "model.safetensors").write_bytes(b"half-written")
                raise _CrashDuringCheckpoint
            return super().save_state(output_dir, **kwargs)

    run = tmp_path / "run"
    argv = _argv(run, "--checkpointing_steps", "2", "--max_train_samples", "64", steps=6)
    with pytest.raises(_CrashDuringCheckpoint):
        train(parse_training_options(argv), accelerator=CrashingAccelerator())
    result, _ = main([*argv, "--resume_from_checkpoint", "latest"])
    assert result.global_step == 6
    _assert_history(run, 6, 16)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


# --------------------------------------------------------------------------------------------------------------
# Two processes on CPU (gloo)
# --------------------------------------------------------------------------------------------------------------

_DISTRIBUTED_HARNESS = """
import sys
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import save_file

from diffusers_memctl.cli.train import parse_training_options
from diffusers_memctl.training import train

options = parse_training_options(sys.argv[1:])
accelerator = Accelerator()
assert accelerator.num_processes == 2, accelerator.state
train(options, accelerator=accelerator)
# Each process saves the weights it ended with (only rank 0 writes the pipeline).
model = accelerator.unwrap_model(accelerator._models[0])
state = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
save_file(state, str(Path(options.training.output_dir) / f"rank{accelerator.process_index}.safetensors"))
"""


@pytest.mark.slow
def test_two_processes_on_cpu_end_with_identical_weights_and_draw_different_timesteps(tmp_path):
    steps, batch_size, seed = 3, 8, 5
    harness = tmp_path / "harness.py"
    harness.write_text(_DISTRIBUTED_HARNESS)
    run = tmp_path / "run"
    flags = _argv(
        run, "--max_train_samples", "64", "--use_ema", "false", "--seed", str(seed), steps=steps, batch_size=batch_size
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(harness),
        *flags,
    ]
    # Without ACCELERATE_USE_CPU accelerate ignores torchrun's WORLD_SIZE on a machine without GPUs.
    env = _subprocess_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]

    rank0, rank1 = load_file(run / "rank0.safetensors"), load_file(run / "rank1.safetensors")
    assert _max_abs_diff(rank0, rank1) == 0.0
    saved = load_file(run / "unet" / "diffusion_pytorch_model.safetensors")
    assert _max_abs_diff(saved, rank0) == 0.0

    # What each rank drew, re-derived from the per-(seed, rank, micro-step) generator: noise first, then timesteps.
    scheduler = MemCtlDDPMScheduler()
    draws = {}
    for rank in (0, 1):
        for micro_step in range(steps):
            generator = step_generator(seed, rank, micro_step)
            torch.randn((batch_size, 1, 16, 16), generator=generator)
            draws[rank, micro_step] = scheduler.sample_timesteps(batch_size, generator=generator)
    assert not torch.equal(draws[0, 0], draws[1, 0])
    # The logged bins hold both processes' draws (gathered), and exactly these.
    records = _assert_history(run, steps, 2 * batch_size)
    for micro_step, record in enumerate(records):
        both = torch.cat([draws[0, micro_step], draws[1, micro_step]])
        assert record["bin_counts"] == torch.bincount(both * NUM_BINS // 1000, minlength=NUM_BINS).tolist()
    # The two processes trained on disjoint halves of the data.
    halves = [epoch_batches(64, batch_size, seed=seed, epoch=0, process_index=r, num_processes=2) for r in (0, 1)]
    assert not set(torch.cat(halves[0]).tolist()) & set(torch.cat(halves[1]).tolist())


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="no_such_dataset_xyz") as excinfo:
        main(_argv(run, "--dataset_name", "no_such_dataset_xyz"))
    assert "digits" in str(excinfo.value)  # names the valid presets
    assert not run.exists()


def test_missing_image_column_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="nope") as excinfo:
        main(_argv(tmp_path / "run", "--image_column", "nope"))
    assert "'image'" in str(excinfo.value)  # lists the columns that exist


def test_empty_imagefolder_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        main(_argv(tmp_path / "run", "--train_data_dir", str(empty), "--cache_dir", str(tmp_path / "cache")))
    assert not (tmp_path / "run").exists()


def test_output_dir_holding_another_run_is_refused_unless_overwriting(tmp_path):
    run = tmp_path / "run"
    main(_argv(run, "--checkpointing_steps", "3", "--max_train_samples", "64", "--eval_num_samples", "4", steps=3))
    assert (run / "plots" / "pca_scatter.png").is_file() and (run / "samples.npz").is_file()
    before = (run / "loss_history.jsonl").read_text()
    with pytest.raises(ValueError, match="overwrite_output_dir"):
        main(_argv(run, "--max_train_samples", "64", steps=2))
    assert (run / "loss_history.jsonl").read_text() == before  # nothing touched

    result, _ = main(_argv(run, "--max_train_samples", "64", "--overwrite_output_dir", steps=2))
    assert result.global_step == 2
    _assert_history(run, 2, 16)  # the old run's records are gone, not appended to
    assert not (run / "checkpoints").exists()
    # The old run's evaluation is gone too: its plots and samples would pass for the new run's.
    assert not (run / "plots").exists() and not (run / "samples.npz").exists() and not (run / "metrics.json").exists()
    assert _config(run)["args"]["max_train_steps"] == 2


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """Two good steps, then a batch holding an infinite sample: NonFiniteLossError, checkpoints 1 and 2 kept."""
    run = tmp_path / "run"
    options = parse_training_options(_argv(run, "--checkpointing_steps", "1", "--seed", "1", steps=5))
    samples = torch.rand(64, 1, 16, 16) * 2 - 1
    third_batch = epoch_batches(64, 16, seed=1, epoch=0)[2]
    samples[third_batch[0]] = float("inf")
    with pytest.raises(NonFiniteLossError, match="step 2"):
        train(options, data=TrainingData(samples, "image"))
    assert [r["step"] for r in _history(run)] == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-1", "checkpoint-2"]
    weights = load_file(run / "checkpoints" / "checkpoint-2" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (run / "model_index.json").exists()  # no diverged model is published as the result


def test_huge_learning_rate_stops_with_nonfinite_loss(tmp_path):
    run = tmp_path / "run"
    argv = _argv(run, "--learning_rate", "1e30", "--lr_warmup_steps", "0", "--checkpointing_steps", "1", steps=10)
    with pytest.raises(NonFiniteLossError, match="learning_rate"):
        main(argv)
    records = _history(run)
    assert 1 <= len(records) < 10 and all(math.isfinite(r["loss"]) for r in records)
    assert (run / "checkpoints" / f"checkpoint-{len(records)}").is_dir()
    assert not (run / "model_index.json").exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--train_batch_size", "0"),
        ("--max_train_steps", "0"),
        ("--gradient_accumulation_steps", "0"),
        ("--learning_rate", "0"),
        ("--learning_rate", "-1e-4"),
    ],
)
def test_bad_batch_size_steps_or_learning_rate(flag, value, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=flag.lstrip("-")):
        main(_argv(run, "--max_train_samples", "32", f"{flag}={value}"))
    assert not run.exists()


def test_num_epochs_zero_is_refused_without_max_train_steps(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="num_epochs"):
        main(_argv(run, "--num_epochs", "0", "--max_train_samples", "32", steps=None))
    assert not run.exists()


def test_accelerates_simple_cpu_launch_of_two_processes_is_refused_with_the_launch_that_works(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process: it must not pass for a two-process run."""
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
        "--main_process_port", str(_free_port()), str(TRAIN_SCRIPT), *_argv(run, "--max_train_samples", "32"),
    ]  # fmt: skip
    completed = subprocess.run(
        command, cwd=tmp_path, env=_subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert completed.returncode != 0
    error = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, completed.stderr[-3000:]
    assert "starts ONE process" in error[0] and "torchrun --nproc_per_node N" in error[0]
    assert "accelerate launch --multi_gpu --num_processes N" in error[0]
    assert not run.exists()


# --------------------------------------------------------------------------------------------------------------
# bf16 mixed precision on CPU
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change; reset it around the bf16 runs."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


BF16_STEPS = 8


@pytest.mark.parametrize("modality", ["image", "signal"])
def test_bf16_training_tracks_float32_and_keeps_float32_weights(
    modality, shared_data, tmp_path, fresh_accelerator_state
):
    # Stated tolerances: over 8 steps from the same seed, each step's bf16 loss is within 1% of the float32 loss, and
    # the evaluation metrics of the two runs (16 DDIM samples, the run's precision) within 3% (measured on images:
    # 0.1% and 0.05%). Autocast only changes
    # the precision of the model's matmuls and convolutions; weights, gradients, AdamW and the EMA stay float32.
    from accelerate.state import AcceleratorState

    data_flags = (
        ["--dataset_name", "ecg5000", "--data_dir", str(shared_data / "ecg5000"), "--max_train_samples", "64"]
        if modality == "signal"
        else ["--max_train_samples", "64"]
    )
    runs, reports = {}, {}
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(reset_partial_state=True)
        runs[precision] = tmp_path / precision
        argv = _argv(
            runs[precision],
            *data_flags,
            "--mixed_precision", precision,
            "--learning_rate", "1e-3",
            "--lr_warmup_steps", "1",
            "--checkpointing_steps", str(BF16_STEPS),
            "--eval_num_samples", "16",
            "--eval_batch_size", "16",
            "--num_inference_steps", "10",
            steps=BF16_STEPS,
        )  # fmt: skip
        _, reports[precision] = main(argv)
    full = [r["loss"] for r in _history(runs["no"])]
    half = [r["loss"] for r in _history(runs["bf16"])]
    assert len(full) == len(half) == BF16_STEPS
    assert max(abs(h - f) / f for h, f in zip(half, full)) < 0.01
    assert full != half  # bf16 did change the arithmetic
    assert reports["bf16"]["settings"]["mixed_precision"] == "bf16"
    for name in ("nn_l2_mean", "mean_l2", "nn_ratio_mean"):
        assert reports["bf16"]["metrics"][name] == pytest.approx(reports["no"]["metrics"][name], rel=0.03)
    weights = load_file(runs["bf16"] / "unet" / "diffusion_pytorch_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    checkpoint = runs["bf16"] / "checkpoints" / f"checkpoint-{BF16_STEPS}"
    tensors = [load_file(p) for p in checkpoint.glob("*.safetensors")]
    tensors += [torch.load(p, weights_only=False) for p in checkpoint.glob("*.bin")]
    floats = {t.dtype for group in tensors for t in _tensors(group) if t.is_floating_point()}
    assert floats == {torch.float32}


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)

"""Two real training processes on CPU (gloo) through the documented launch, and the layout every run records."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training_scripts" / "train_memctl.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _flags(run: Path, steps: int, batch_size: int) -> list[str]:
    return [
        "--output_dir", str(run), "--model_preset", "tiny", "--max_train_steps", str(steps),
        "--train_batch_size", str(batch_size), "--max_train_samples", "64", "--checkpointing_steps", "0",
        "--save_images_epochs", "0", "--eval_num_samples", "0", "--logger", "none", "--seed", "5",
    ]  # fmt: skip


@pytest.mark.slow
def test_accelerate_multi_gpu_launch_trains_two_cpu_processes_together(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs: two gloo processes, one run."""
    steps, batch_size = 3, 8
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--main_process_port", str(_free_port()), str(TRAIN_SCRIPT), *_flags(run, steps, batch_size),
    ]  # fmt: skip
    # No ACCELERATE_USE_CPU: the launch alone must be enough.
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]

    layout = json.loads((run / "training_config.json").read_text())["process_layout"]
    assert layout["num_processes"] == 2 and layout["device"] == "cpu" and layout["backend"] == "gloo"
    assert layout["distributed_type"] == "MULTI_CPU" and layout["mixed_precision"] == "no"
    assert layout["train_batch_size_per_process"] == batch_size and layout["global_batch_size"] == 2 * batch_size
    # 64 samples split over 2 processes in batches of 8: 4 steps per epoch.
    assert layout["steps_per_epoch"] == 4 and layout["max_train_steps"] == steps

    records = [json.loads(line) for line in (run / "loss_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    # Every step's record gathers both processes' timesteps: the global batch ...
    assert all(sum(r["bin_counts"]) == 2 * batch_size for r in records)
    # ... of two different draws: two processes drawing the same timesteps would give even counts in every bin.
    assert any(count % 2 for r in records for count in r["bin_counts"])
    card = (run / "README.md").read_text()
    assert "2 processes on cpu (MULTI_CPU, gloo), 8 samples per process = global batch 16" in card

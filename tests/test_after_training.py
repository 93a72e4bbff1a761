"""A trained model is never lost to a later step: evaluation, plots, card and push run after the pipeline is saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from diffusers_memctl.cli.evaluate import main as evaluate_main

REPO_ROOT = Path(__file__).resolve().parents[1]

# memctl-train's default path (train, preview, evaluate with plots, card) in a process where matplotlib cannot be
# imported, as in an environment that lacks it.
BLOCKED_RUN = """
import sys
sys.modules["matplotlib"] = None  # `import matplotlib` now raises ModuleNotFoundError
from diffusers_memctl.cli import run_cli
from diffusers_memctl.cli.train import main
sys.exit(run_cli(main, sys.argv[1:]))
"""


def _train_without_matplotlib(run: Path) -> subprocess.CompletedProcess:
    flags = ["--output_dir", str(run), "--model_preset", "tiny", "--resolution", "8", "--max_train_samples", "32"]
    flags += ["--max_train_steps", "4", "--train_batch_size", "16", "--checkpointing_steps", "0"]
    flags += [
        "--save_images_epochs",
        "1",
        "--eval_num_samples",
        "16",
        "--num_inference_steps",
        "4",
        "--logger",
        "none",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, *flags], capture_output=True, text=True, env=env, timeout=600
    )


def test_a_failing_evaluation_leaves_the_saved_pipeline_and_names_the_rerun(tmp_path):
    run = tmp_path / "run"
    done = _train_without_matplotlib(run)
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "evaluation failed after training" in errors[0] and "matplotlib" in errors[0]
    assert f"rerun just this step: memctl-evaluate {run}" in errors[0]
    # The previews were skipped with a warning, the training went on, and the pipeline is complete.
    assert "sample preview skipped" in done.stderr
    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"):
        assert (run / name).is_file(), name
    assert (run / "scheduler" / "scheduler_config.json").is_file()
    assert json.loads((run / "training_config.json").read_text())
    assert (run / "train_complete.json").is_file()
    assert not (run / "metrics.json").exists()

    # The rerun the line names does the evaluation and writes the card.
    report = evaluate_main([str(run), "--eval_num_samples", "16", "--num_inference_steps", "4"])
    assert json.loads((run / "metrics.json").read_text())["metrics"] == report["metrics"]
    assert (run / "plots" / "nearest_neighbors.png").is_file()
    assert "nn_l2_mean" in (run / "README.md").read_text()

"""A trained model is never lost to a step after training (evaluation, plots, card, push).

The failure is made real: matplotlib is made unimportable in a fresh interpreter (a package of that name that fails on
import comes first on the path), exactly what a user meets with an optional package missing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from diffusers import UNet2DModel

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training_scripts" / "train_memctl.py"

# A package of that name, first on the path, whose import fails the way a missing one does (a meta-path finder
# would also break `importlib.util.find_spec`, which diffusers calls at import to probe optional packages).
BLOCKER = 'raise ModuleNotFoundError("No module named \'matplotlib\' (hidden by the test)", name="matplotlib")\n'


def _run_without_matplotlib(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    blocker = tmp_path / "blocker"
    blocker.mkdir(exist_ok=True)
    (blocker / "matplotlib").mkdir(exist_ok=True)
    (blocker / "matplotlib" / "__init__.py").write_text(BLOCKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO)])
    env.pop("MEMCTL_DEBUG", None)
    command = [sys.executable, str(TRAIN_SCRIPT), *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def _flags(run: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(run),
        "--model_preset", "tiny",
        "--max_train_samples", "32",
        "--train_batch_size", "16",
        "--max_train_steps", "4",
        "--num_inference_steps", "3",
        "--logger", "none",
        *extra,
    ]  # fmt: skip


def test_failed_evaluation_keeps_the_model_and_names_the_rerun(tmp_path):
    run = tmp_path / "run"
    result = _run_without_matplotlib(tmp_path, *_flags(run, "--eval_num_samples", "16", "--save_images_epochs", "1"))
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "pipeline is saved" in errors[0] and "evaluation failed" in errors[0]
    assert f"memctl-evaluate {run}" in errors[0]
    assert "matplotlib" in errors[0]
    # The trained pipeline is complete and loads with plain diffusers.
    for name in ("model_index.json", "scheduler/scheduler_config.json", "training_config.json"):
        assert (run / name).is_file(), name
    model = UNet2DModel.from_pretrained(run / "unet")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert json.loads((run / "training_config.json").read_text())
    assert not (run / "metrics.json").exists()


def test_rerunning_the_evaluation_completes_the_run(tmp_path):
    run = tmp_path / "run"
    failed = _run_without_matplotlib(tmp_path, *_flags(run, "--eval_num_samples", "16", "--save_images_epochs", "0"))
    assert failed.returncode == 1
    # The same command again, with matplotlib importable, redoes only what is missing.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    weights = (run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    again = subprocess.run(
        [
            sys.executable,
            str(TRAIN_SCRIPT),
            *_flags(run, "--eval_num_samples", "16", "--resume_from_checkpoint", "latest"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "metrics.json").is_file() and (run / "README.md").is_file()
    assert (run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights

"""A 1D run folder loads with plain diffusers (`trust_remote_code=True`) where diffusers_memctl cannot be imported."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from diffusers_memctl import remote_code
from diffusers_memctl.models import create_unet_1d, unet_1d_memctl
from diffusers_memctl.pipelines import DDPM1DPipeline, pipeline_ddpm_1d
from diffusers_memctl.scheduling_memctl import MemCtlDDPMScheduler
from diffusers_memctl.training import save_pipeline

#: Put first on sys.path of the child: any import of diffusers_memctl fails there, as on a machine without it.
BLOCKER = """
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "diffusers_memctl" or name.startswith("diffusers_memctl."):
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, _Block())
"""

LOAD = """
import sys, numpy as np, torch
from diffusers import DiffusionPipeline
try:
    import diffusers_memctl
except ImportError:
    pass
else:
    raise SystemExit("diffusers_memctl is importable: the test proves nothing")
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
out = pipe(batch_size=3, num_inference_steps=2, generator=torch.Generator().manual_seed(4)).signals
np.save(sys.argv[2], out)
print(type(pipe).__name__, type(pipe.unet).__name__, out.shape)
assert not any(m == "diffusers_memctl" or m.startswith("diffusers_memctl.") for m in sys.modules)
"""


def _saved_run(folder: Path) -> DDPM1DPipeline:
    torch.manual_seed(0)
    unet = create_unet_1d("tiny", sample_size=140)
    scheduler = MemCtlDDPMScheduler(num_train_timesteps=20, timestep_sampling="ci_normal", ci_lower=10, ci_upper=19)
    save_pipeline(unet, scheduler, folder, "signal")
    return DDPM1DPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(folder / "scheduler"))


def _blocked_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "blocker"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONSTARTUP"}}
    env["PYTHONPATH"] = str(site)
    env["HF_HOME"] = str(tmp_path / "hf_home")  # diffusers copies remote code under HF_MODULES_CACHE
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_remote_code_files_are_the_package_source_and_import_nothing_of_it():
    files = remote_code.remote_code_files()
    assert files["pipeline.py"] == Path(pipeline_ddpm_1d.__file__).read_text()
    assert files["unet/unet_1d_memctl.py"] == Path(unet_1d_memctl.__file__).read_text()
    for name, source in files.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import from {node.module}"
                assert not (node.module or "").startswith("diffusers_memctl"), name
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("diffusers_memctl") for alias in node.names), name


def test_saved_1d_run_carries_its_code_and_points_model_index_at_it(tmp_path):
    _saved_run(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "DDPM1DPipeline"]
    assert index["unet"] == ["unet_1d_memctl", "UNet1DMemCtlModel"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    for relative, source in remote_code.remote_code_files().items():
        assert (tmp_path / relative).read_text() == source


def test_1d_run_loads_with_diffusers_alone_and_generates_b_1_140(tmp_path):
    run = tmp_path / "run"
    package_pipe = _saved_run(run)
    package_pipe.set_progress_bar_config(disable=True)
    expected = package_pipe(batch_size=3, num_inference_steps=2, generator=torch.Generator().manual_seed(4)).signals
    out = tmp_path / "signals.npy"
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(run), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,  # not the repository root: nothing of diffusers_memctl on sys.path but the blocker
        env=_blocked_env(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[:2] == ["DDPM1DPipeline", "UNet1DMemCtlModel"]
    signals = np.load(out)
    assert signals.shape == (3, 1, 140)
    np.testing.assert_allclose(signals, expected, atol=1e-5, rtol=1e-5)


def test_blocker_really_blocks(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "import diffusers_memctl"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[1],  # even from the repository root
        env=_blocked_env(tmp_path),
    )
    assert result.returncode != 0 and "blocked for this test: diffusers_memctl" in result.stderr

"""Tests of `DDPM1DPipeline`: generation with DDPM and DDIM, reproducibility, save/load, argument errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusers_memctl.models import create_unet_1d
from diffusers_memctl.pipelines import DDPM1DPipeline, SignalPipelineOutput

NUM_TRAIN_TIMESTEPS = 20
BETA_START, BETA_END = 1e-4, 0.02


def _scheduler(kind: str):
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind]
    return cls(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END, clip_sample=False)


def _pipeline(kind: str = "ddpm", sample_size: int = 40, zero_output: bool = False) -> DDPM1DPipeline:
    torch.manual_seed(0)
    unet = create_unet_1d("tiny", sample_size=sample_size)
    if zero_output:
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
    pipe = DDPM1DPipeline(unet=unet, scheduler=_scheduler(kind))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_shapes_and_output_types(kind):
    pipe = _pipeline(kind)
    out = pipe(batch_size=3, generator=_generator(0), num_inference_steps=4)
    assert isinstance(out, SignalPipelineOutput)
    assert isinstance(out.signals, np.ndarray) and out.signals.dtype == np.float32
    assert out.signals.shape == (3, 1, 40) and np.isfinite(out.signals).all()
    (pt,) = pipe(batch_size=2, generator=_generator(0), num_inference_steps=4, length=140, output_type="pt",
                 return_dict=False)  # fmt: skip
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 1, 140) and pt.dtype == torch.float32
    # The same seed gives the same numbers whatever the output type.
    np_again = pipe(batch_size=2, generator=_generator(0), num_inference_steps=4, length=140).signals
    np.testing.assert_array_equal(np_again, pt.numpy())


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_seeded_reproducibility_ignores_global_rng(kind):
    pipe = _pipeline(kind)
    torch.manual_seed(123)
    first = pipe(batch_size=2, generator=_generator(7), num_inference_steps=3).signals
    torch.manual_seed(456)  # the global RNG must not matter
    second = pipe(batch_size=2, generator=_generator(7), num_inference_steps=3).signals
    other = pipe(batch_size=2, generator=_generator(8), num_inference_steps=3).signals
    np.testing.assert_array_equal(first, second)
    assert np.abs(first - other).max() > 1e-3


def test_ddim_eta0_with_zero_noise_prediction_matches_closed_form():
    """With eps = 0, each DDIM step (Song et al. 2021, Eq. 12) scales x_t by sqrt(abar_prev / abar_t), so the result
    is x_T / sqrt(abar_{t_first}) (the final alpha is 1); abar computed here from the linear beta schedule."""
    pipe = _pipeline("ddim", zero_output=True)
    steps = 5
    signals = pipe(batch_size=2, generator=_generator(3), num_inference_steps=steps, output_type="pt").signals
    betas = np.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    t_first = (steps - 1) * (NUM_TRAIN_TIMESTEPS // steps)  # "leading" spacing: 16, 12, 8, 4, 0
    noise = torch.randn((2, 1, 40), generator=_generator(3))
    torch.testing.assert_close(signals, noise / math.sqrt(alphas_cumprod[t_first]), atol=1e-5, rtol=1e-5)


def test_ddim_eta_and_ddpm_use_the_generator_in_steps():
    """DDPM adds fresh noise at every step; so does DDIM with eta = 1; DDIM with eta = 0 does not."""
    zero_ddim, zero_ddpm = _pipeline("ddim", zero_output=True), _pipeline("ddpm", zero_output=True)
    deterministic = zero_ddim(batch_size=1, generator=_generator(3), num_inference_steps=5).signals
    stochastic = zero_ddim(batch_size=1, generator=_generator(3), num_inference_steps=5, eta=1.0).signals
    ancestral = zero_ddpm(batch_size=1, generator=_generator(3), num_inference_steps=5).signals
    assert np.abs(deterministic - stochastic).max() > 1e-3
    assert np.abs(deterministic - ancestral).max() > 1e-3


def test_list_of_generators_draws_per_signal():
    pipe = _pipeline("ddpm")
    batch = pipe(batch_size=2, generator=[_generator(0), _generator(1)], num_inference_steps=3).signals
    single = pipe(batch_size=1, generator=[_generator(1)], num_inference_steps=3).signals
    np.testing.assert_allclose(batch[1], single[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_save_and_load_round_trip(tmp_path, kind):
    pipe = _pipeline(kind)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPM1DPipeline"
    assert index["unet"] == ["diffusers_memctl.models.unet_1d_memctl", "UNet1DMemCtlModel"]
    assert index["scheduler"] == ["diffusers", type(pipe.scheduler).__name__]
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    loaded = DDPM1DPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(pipe.scheduler) and loaded.scheduler.config.clip_sample is False
    expected = pipe(batch_size=2, generator=_generator(5), num_inference_steps=3).signals
    actual = loaded(batch_size=2, generator=_generator(5), num_inference_steps=3).signals
    np.testing.assert_array_equal(actual, expected)


def test_from_pretrained_in_a_fresh_process_needs_no_extra_arguments(tmp_path):
    pipe = _pipeline("ddpm")
    pipe.save_pretrained(tmp_path)
    expected = pipe(batch_size=1, generator=_generator(9), num_inference_steps=2).signals
    np.save(tmp_path / "expected.npy", expected)
    script = (
        "import sys, numpy as np, torch\n"
        "from diffusers_memctl.pipelines.pipeline_ddpm_1d import DDPM1DPipeline\n"
        "pipe = DDPM1DPipeline.from_pretrained(sys.argv[1])\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "out = pipe(batch_size=1, generator=torch.Generator().manual_seed(9), num_inference_steps=2).signals\n"
        "np.testing.assert_allclose(out, np.load(sys.argv[1] + '/expected.npy'), atol=1e-5, rtol=1e-5)\n"
        "print(type(pipe.unet).__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("diffusers_memctl.models.unet_1d_memctl")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"output_type": "pil"}, r"output_type must be 'np' or 'pt'; got 'pil'"),
        ({"batch_size": 0}, r"batch_size must be a positive integer; got 0"),
        ({"length": 0}, r"length must be a positive integer; got 0"),
        ({"num_inference_steps": 0}, r"num_inference_steps must be a positive integer; got 0"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, r"one per signal \(batch_size=2\); got 1"),
    ],
)
def test_bad_arguments_raise(kwargs, pattern):
    pipe = _pipeline("ddpm")
    with pytest.raises(ValueError, match=pattern):
        pipe(**{"num_inference_steps": 2, **kwargs})


# ---- a signal run folder loads with diffusers alone (remote code) ---------------------------------------------------
HIDE_PACKAGE = (
    'raise ModuleNotFoundError("No module named \'diffusers_memctl\' (hidden by the test)", name="diffusers_memctl")\n'
)


def _signal_run(folder):
    from diffusers_memctl.scheduling_memctl import MemCtlDDPMScheduler
    from diffusers_memctl.training import save_pipeline

    torch.manual_seed(0)
    scheduler = MemCtlDDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, clip_sample=False)
    save_pipeline(create_unet_1d("tiny", sample_size=140), scheduler, folder, "signal")
    return folder


def test_signal_run_folder_loads_with_diffusers_alone(tmp_path):
    run = _signal_run(tmp_path / "run")
    hidden = tmp_path / "hidden"
    (hidden / "diffusers_memctl").mkdir(parents=True)
    (hidden / "diffusers_memctl" / "__init__.py").write_text(HIDE_PACKAGE)
    script = (
        "import sys, torch\n"
        "try:\n"
        "    import diffusers_memctl\n"
        "    raise SystemExit('diffusers_memctl is importable: the test proves nothing')\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "from diffusers import DiffusionPipeline\n"
        "pipe = DiffusionPipeline.from_pretrained(sys.argv[1], custom_pipeline='pipeline_ddpm_1d', trust_remote_code=True)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "out = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=2).signals\n"
        "print(type(pipe).__name__, tuple(out.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(hidden), HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script, str(run)], capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "DDPM1DPipeline (2, 1, 140)"


def test_remote_code_is_the_package_source_verbatim_and_is_published(tmp_path):
    import diffusers_memctl.models.unet_1d_memctl as unet_module
    import diffusers_memctl.pipelines.pipeline_ddpm_1d as pipeline_module
    from diffusers_memctl.hub import plan_hub_commit

    run = _signal_run(tmp_path / "run")
    assert (run / "pipeline_ddpm_1d.py").read_bytes() == Path(pipeline_module.__file__).read_bytes()
    assert (run / "unet" / "unet_1d_memctl.py").read_bytes() == Path(unet_module.__file__).read_bytes()
    for source in (pipeline_module.__file__, unet_module.__file__):
        imports = [line for line in Path(source).read_text().splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in imports if "diffusers_memctl" in line or line.startswith("from .")], imports
    index = json.loads((run / "model_index.json").read_text())
    assert index["_class_name"] == "DDPM1DPipeline"
    assert index["unet"] == ["unet_1d_memctl", "UNet1DMemCtlModel"]
    uploaded = {op.path_in_repo for op in plan_hub_commit(run)}
    assert {"pipeline_ddpm_1d.py", "unet/unet_1d_memctl.py", "model_index.json"} <= uploaded

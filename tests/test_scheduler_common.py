"""Our schedulers against their diffusers parents, in the manner of diffusers' ``SchedulerCommonTest``.

Every check runs on both classes, with the default config and a CI-normal config, and compares against the parent
class on the same inputs (never against numbers produced by the code under test): the sampler settings must not
change inference in any way. Issue 12, finding 7: ``num_train_timesteps=1`` is accepted where the parent accepts it.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusers_memctl.scheduling_memctl import MEMCTL_CONFIG_DEFAULTS, MemCtlDDIMScheduler, MemCtlDDPMScheduler

PAIRS = [(MemCtlDDPMScheduler, DDPMScheduler), (MemCtlDDIMScheduler, DDIMScheduler)]
TIMESTEPS = [1, 5, 100, 1000]


def _memctl_config(name: str, T: int) -> dict:
    if name == "default":
        return {}
    return {"timestep_sampling": "ci_normal", "ci_lower": 0.3 * T, "ci_upper": float(T), "ci_coverage": 0.9}


CONFIGS = ["default", "ci_normal"]


def _cases():
    for ours, parent in PAIRS:
        for T in TIMESTEPS:
            for config in CONFIGS:
                if T == 1 and config == "ci_normal":
                    continue  # an interval needs T >= 2: tested below
                yield pytest.param(ours, parent, T, config, id=f"{ours.__name__}-T{T}-{config}")


def _sample(seed: int = 0) -> torch.Tensor:
    """A deterministic sample in [-1, 1) (the role of diffusers' ``dummy_sample_deter``)."""
    return torch.linspace(-1.0, 1.0, 2 * 3 * 4 * 4 + 1)[:-1].reshape(2, 3, 4, 4).roll(seed, dims=-1)


def _model(sample: torch.Tensor, t) -> torch.Tensor:
    """A deterministic stand-in for a denoiser that depends on the timestep."""
    t = torch.as_tensor(t, dtype=sample.dtype)
    return sample * (t + 1) / (t + 2) - 0.05 * torch.sin(sample * (t + 1))


def _pair(ours: type, parent: type, T: int, config: str, **extra):
    return ours(num_train_timesteps=T, **_memctl_config(config, T), **extra), parent(num_train_timesteps=T, **extra)


def _loop(scheduler, steps: int, seed: int = 0) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    sample = _sample() * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        residual = _model(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(residual, t, sample, generator=generator).prev_sample
    return sample


@pytest.mark.parametrize(("ours", "parent", "T", "config"), list(_cases()))
def test_every_T_the_parent_accepts_and_step_matches_it(ours, parent, T, config):
    mine, theirs = _pair(ours, parent, T, config)
    steps = min(T, 10)
    for scheduler in (mine, theirs):
        scheduler.set_timesteps(steps)
    assert torch.equal(mine.timesteps, theirs.timesteps)
    sample = _sample()
    for t in mine.timesteps[:3]:
        residual = _model(sample, t)
        a = mine.step(residual, t, sample, generator=torch.Generator().manual_seed(1)).prev_sample
        b = theirs.step(residual, t, sample, generator=torch.Generator().manual_seed(1)).prev_sample
        assert a.shape == sample.shape
        assert torch.equal(a, b)


@pytest.mark.parametrize(("ours", "parent", "T", "config"), list(_cases()))
def test_full_loop_sums_equal_the_parents(ours, parent, T, config):
    mine, theirs = _pair(ours, parent, T, config)
    # Every timestep up to T = 100 (DDPM's own loop); 100 spaced steps at T = 1000 keep the test fast.
    steps = min(T, 100) if ours is MemCtlDDPMScheduler else min(T, 50)
    a, b = _loop(mine, steps), _loop(theirs, steps)
    assert torch.isfinite(a).all()
    assert float(a.abs().sum()) == float(b.abs().sum()) and float(a.mean()) == float(b.mean())


@pytest.mark.parametrize(("ours", "parent", "T", "config"), list(_cases()))
def test_save_and_load_keep_config_and_outputs(ours, parent, T, config, tmp_path):
    scheduler = ours(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", **_memctl_config(config, T))
    scheduler.save_pretrained(tmp_path)
    loaded = ours.from_pretrained(tmp_path)
    assert loaded.memctl_config() == scheduler.memctl_config()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    steps = min(T, 10)
    assert torch.equal(_loop(loaded, steps), _loop(scheduler, steps))
    # The parent reads the same folder (our keys are ignored there) and denoises alike.
    plain = parent.from_pretrained(tmp_path)
    assert torch.equal(_loop(plain, steps), _loop(scheduler, steps))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("T", [5, 100])
def test_from_config_across_compatible_classes(config, T):
    ddpm = MemCtlDDPMScheduler(num_train_timesteps=T, **_memctl_config(config, T))
    # Our two classes pass the sampler settings to each other.
    ddim = MemCtlDDIMScheduler.from_config(ddpm.config)
    assert ddim.memctl_config() == ddpm.memctl_config()
    assert MemCtlDDPMScheduler.from_config(ddim.config).memctl_config() == ddpm.memctl_config()
    # Every class diffusers lists as compatible builds from our config exactly as from the parent's (defaults that
    # were not set explicitly stay the target's own, as diffusers intends), and its config builds ours back like the
    # parent (as diffusers' `test_compatibles` checks for its own classes).
    parent = DDPMScheduler(num_train_timesteps=T)
    # Plain classes may keep the keys they ignore; only the keys they use must match.
    used = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_") and k not in MEMCTL_CONFIG_DEFAULTS}  # noqa: E731
    for cls in ddpm.compatibles:
        try:
            from_parent = cls.from_config(parent.config)
        except ImportError:  # e.g. DPMSolverSDEScheduler without torchsde: not ours to test
            continue
        other = cls.from_config(ddpm.config)
        assert used(other.config) == used(from_parent.config), cls
        back, parent_back = MemCtlDDPMScheduler.from_config(other.config), DDPMScheduler.from_config(other.config)
        assert used(back.config) == used(parent_back.config), cls
    # A plain diffusers config gives our class with default (uniform) sampling.
    plain = MemCtlDDPMScheduler.from_config(DDPMScheduler(num_train_timesteps=T).config)
    assert plain.memctl_config() == MEMCTL_CONFIG_DEFAULTS


@pytest.mark.parametrize(("ours", "parent"), PAIRS)
def test_one_timestep_is_accepted_and_sampling_it_says_why_not(ours, parent):
    """Finding 7: the parent accepts T = 1; our default sampler is built when first used, not at construction."""
    parent(num_train_timesteps=1)
    scheduler = ours(num_train_timesteps=1)
    assert scheduler.config.num_train_timesteps == 1
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 2, got 1"):
        scheduler.sample_timesteps(4)
    # A chosen sampler is still checked at construction.
    with pytest.raises(ValueError, match="num_train_timesteps"):
        ours(num_train_timesteps=1, timestep_sampling="ci_normal", ci_lower=0, ci_upper=1)

import inspect

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusers_memctl.scheduling_memctl import (
    MEMCTL_CONFIG_DEFAULTS,
    MemCtlDDIMScheduler,
    MemCtlDDPMScheduler,
    MemorizationControlMixin,
)
from diffusers_memctl.timestep_sampling import ci_normal_timestep_probs

PAIRS = [(MemCtlDDPMScheduler, DDPMScheduler), (MemCtlDDIMScheduler, DDIMScheduler)]


@pytest.mark.parametrize("cls, parent", PAIRS)
def test_subclass_repeats_every_parent_argument(cls, parent):
    """Fails as soon as a future diffusers adds an __init__ argument that we do not repeat."""
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(parent.__init__).parameters
    missing = [name for name in theirs if name not in ours]
    assert not missing, f"{cls.__name__} must repeat {parent.__name__} arguments {missing}"
    for name, param in theirs.items():
        assert ours[name].default is param.default or ours[name].default == param.default, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values()), "no **kwargs"
    assert set(ours) - set(theirs) == set(MEMCTL_CONFIG_DEFAULTS)


CONFIGS = [
    {},
    {"timestep_sampling": "ci_normal", "ci_lower": 600, "ci_upper": 1000},
    {"timestep_sampling": "ci_normal", "ci_lower": 0, "ci_upper": 300, "ci_coverage": 0.9, "ci_tail": "renormalize"},
    {"timestep_sampling": "logit_normal", "logit_mean": 0.3, "logit_std": 1.2},
    {"timestep_sampling": "mode", "mode_scale": 0.8},
    {"timestep_sampling": "cosmap"},
    {"timestep_sampling": "edm_lognormal", "edm_p_mean": -1.0, "edm_p_std": 1.5},
    {"timestep_sampling": "window", "window_min": 200, "window_max": 800},
    {"timestep_sampling": "beta", "beta_alpha": 2.0, "beta_beta": 3.0},
    {"timestep_sampling": "loss_aware", "loss_aware_history": 4, "loss_aware_uniform_prob": 0.01},
]


@pytest.mark.parametrize("cls", [MemCtlDDPMScheduler, MemCtlDDIMScheduler])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.get("timestep_sampling", "default"))
def test_config_round_trip_keeps_settings_and_behaviour(tmp_path, cls, config):
    scheduler = cls(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", **config)
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert loaded.memctl_config() == scheduler.memctl_config()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(scheduler.config)
    assert torch.equal(loaded.timestep_probs(), scheduler.timestep_probs())
    a = scheduler.sample_timesteps(32, generator=torch.Generator().manual_seed(3))
    b = loaded.sample_timesteps(32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.max() < 1000


def test_ci_probs_come_from_config():
    scheduler = MemCtlDDPMScheduler(timestep_sampling="ci_normal", ci_lower=600, ci_upper=1000)
    np.testing.assert_allclose(
        scheduler.timestep_probs().numpy(), ci_normal_timestep_probs(1000, 600, 1000), atol=1e-15
    )
    assert MemCtlDDPMScheduler().timestep_probs().std() < 1e-15, "default is vanilla uniform DDPM"


@pytest.mark.parametrize("cls, parent", PAIRS)
def test_plain_diffusers_loads_saved_folder(tmp_path, cls, parent):
    cls(timestep_sampling="ci_normal", ci_lower=100, ci_upper=300, prediction_type="v_prediction").save_pretrained(
        tmp_path
    )
    plain = parent.from_pretrained(tmp_path)
    assert type(plain) is parent
    assert plain.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("cls, parent", PAIRS)
def test_step_output_is_identical_to_parent(cls, parent):
    ours = cls(timestep_sampling="ci_normal", ci_lower=100, ci_upper=300)
    theirs = parent()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    model_output = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in ours.timesteps[:3]:
        a = ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(2)).prev_sample
        b = theirs.step(model_output, t, sample, generator=torch.Generator().manual_seed(2)).prev_sample
        assert torch.equal(a, b)
    noise = torch.randn_like(sample)
    t = torch.tensor([5, 700])
    assert torch.equal(ours.add_noise(sample, noise, t), theirs.add_noise(sample, noise, t))


def test_mixin_works_on_any_scheduler_without_extra_keys():
    class MixedEuler(DDPMScheduler, MemorizationControlMixin):
        pass

    scheduler = MixedEuler(num_train_timesteps=100)
    t = scheduler.sample_timesteps(1000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 100
    assert scheduler.memctl_config()["timestep_sampling"] == "uniform"


@pytest.mark.parametrize(
    "config, match",
    [
        ({"timestep_sampling": "gauss"}, "unknown timestep_sampling 'gauss'"),
        ({"timestep_sampling": "ci_normal", "ci_lower": 700, "ci_upper": 600}, "700"),
        ({"timestep_sampling": "ci_normal", "ci_lower": 0, "ci_upper": 2000}, "t_upper must be <= "),
        ({"timestep_sampling": "ci_normal", "ci_lower": 0, "ci_upper": 100, "ci_coverage": 1.5}, "coverage"),
        ({"timestep_sampling": "ci_normal"}, "needs ci_lower and ci_upper"),
    ],
)
def test_bad_config_fails_at_construction(config, match):
    with pytest.raises(ValueError, match=match):
        MemCtlDDPMScheduler(**config)

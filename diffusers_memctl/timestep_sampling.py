"""Training-timestep samplers for discrete DDPM schedules.

Every sampler shares one interface: ``probs()`` gives the float64 probability of each discrete timestep
``k in {0, ..., T-1}`` where it is defined, and ``sample(batch_size, *, generator=None, device=None)`` draws
``torch.long`` timesteps exactly from that distribution, using only the ``torch.Generator`` it is given.

The paper's method is :class:`CINormalTimestepSampler` ("Memorization Control in Diffusion Models from
Denoising-centric Perspective", arXiv 2601.21348, Sec. 4): a normal distribution parameterised by a confidence
interval on the timestep axis whose tail mass outside ``[0, T)`` is handed back as a uniform mixture component.
The peers are the samplers users compare against (SD3, EDM, improved-diffusion); each class cites its source.

Convention for every peer defined on a continuous noise level: DDPM timestep ``k`` owns the interval
``[k/T, (k+1)/T)`` of a normalised time ``t in [0, 1)``, and larger ``t`` means more noise (``k = T-1`` is the
noisiest step), as in rectified flow where ``t = 1`` is pure noise. Mapping through ``floor(t * T)`` therefore
keeps "noisier" meaning "noisier" when an SD3 setting is reused on a DDPM schedule.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from scipy import special, stats

__all__ = [
    "TIMESTEP_SAMPLERS",
    "BetaTimestepSampler",
    "CINormalTimestepSampler",
    "CosMapTimestepSampler",
    "EDMLogNormalTimestepSampler",
    "LogitNormalTimestepSampler",
    "LossAwareTimestepSampler",
    "ModeTimestepSampler",
    "ProbabilityTableSampler",
    "TimestepSampler",
    "UniformTimestepSampler",
    "WindowTimestepSampler",
    "build_alias_table",
    "ci_normal_parameters",
    "ci_normal_timestep_probs",
    "create_timestep_sampler",
]


# --------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------


def _check_num_train_timesteps(num_train_timesteps: Any) -> int:
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)):
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps}")
    return int(num_train_timesteps)


def _check_finite(name: str, value: Any) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _check_positive(name: str, value: Any) -> float:
    value = _check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative integer, got {batch_size!r}")
    return int(batch_size)


# --------------------------------------------------------------------------------------------------------------
# The paper's CI-normal distribution
# --------------------------------------------------------------------------------------------------------------


def ci_normal_parameters(t_lower: float, t_upper: float, coverage: float = 0.95) -> tuple[float, float]:
    """Mean and standard deviation of the normal whose central `coverage` interval is ``[t_lower, t_upper]``.

    Implements Eq. 9 of arXiv 2601.21348: ``mu = (t_lower + t_upper) / 2`` and ``sigma = (t_upper - t_lower) / (2 z)``
    with ``z = Phi^-1((1 + coverage) / 2)`` (1.959964 at 95%).

    Args:
        t_lower (`float`): Lower end of the interval on the continuous timestep axis.
        t_upper (`float`): Upper end of the interval; must be greater than `t_lower`.
        coverage (`float`, defaults to 0.95): Probability mass of the normal inside the interval, in (0, 1).

    Returns:
        `tuple[float, float]`: ``(mu, sigma)``.
    """
    t_lower = _check_finite("t_lower", t_lower)
    t_upper = _check_finite("t_upper", t_upper)
    coverage = _check_finite("coverage", coverage)
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie in the open interval (0, 1), got {coverage}")
    if t_lower >= t_upper:
        raise ValueError(f"t_lower must be smaller than t_upper, got t_lower={t_lower} >= t_upper={t_upper}")
    z = float(stats.norm.ppf((1.0 + coverage) / 2.0))
    return (t_lower + t_upper) / 2.0, (t_upper - t_lower) / (2.0 * z)


def ci_normal_timestep_probs(
    num_train_timesteps: int,
    t_lower: float,
    t_upper: float,
    coverage: float = 0.95,
    tail: Literal["uniform", "renormalize"] = "uniform",
) -> np.ndarray:
    """Probability of every discrete DDPM timestep under CI-normal sampling (arXiv 2601.21348, Sec. 4.2-4.3).

    Timestep ``k`` owns ``[k, k+1)`` on the continuous axis ``[0, T)``. With ``mu, sigma`` from
    :func:`ci_normal_parameters` and ``p_tail = Phi(-mu/sigma) + 1 - Phi((T - mu)/sigma)`` the Gaussian mass outside
    ``[0, T)``, the paper's mixture ``(1 - p_tail) TruncNormal[0, T) + p_tail Uniform[0, T)`` gives

        ``P(k) = Phi((k + 1 - mu)/sigma) - Phi((k - mu)/sigma) + p_tail / T``,

    so every timestep keeps a non-zero probability. ``tail="renormalize"`` is the ablation the paper argues against:
    the truncated normal alone, ``(Phi((k + 1 - mu)/sigma) - Phi((k - mu)/sigma)) / (1 - p_tail)``.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T`` (>= 2).
        t_lower (`float`): Lower end of the confidence interval, ``0 <= t_lower < t_upper``.
        t_upper (`float`): Upper end of the confidence interval, ``t_upper <= T``.
        coverage (`float`, defaults to 0.95): Normal mass inside ``[t_lower, t_upper]``, in (0, 1).
        tail (`str`, defaults to `"uniform"`): `"uniform"` redistributes the tail mass uniformly (the paper);
            `"renormalize"` renormalises the truncated normal instead.

    Returns:
        `np.ndarray`: float64 array of shape ``(T,)`` summing to 1.
    """
    T = _check_num_train_timesteps(num_train_timesteps)
    mu, sigma = ci_normal_parameters(t_lower, t_upper, coverage)
    if t_lower < 0:
        raise ValueError(f"t_lower must be >= 0, got {t_lower}")
    if t_upper > T:
        raise ValueError(f"t_upper must be <= num_train_timesteps={T}, got {t_upper}")
    if tail not in ("uniform", "renormalize"):
        raise ValueError(f"tail must be 'uniform' or 'renormalize', got {tail!r}")
    edges = (np.arange(T + 1, dtype=np.float64) - mu) / sigma
    # Differences of the survival function are accurate far in the upper tail, those of the CDF in the lower tail.
    cdf = special.ndtr(edges)
    sf = special.ndtr(-edges)
    mass = np.where(edges[1:] <= 0.0, cdf[1:] - cdf[:-1], sf[:-1] - sf[1:])
    p_tail = float(cdf[0] + sf[-1])
    if tail == "uniform":
        probs = mass + p_tail / T
    else:
        inside = mass.sum()
        if inside <= 0.0:
            raise ValueError(
                f"tail='renormalize' needs Gaussian mass inside [0, {T}); the interval [{t_lower}, {t_upper}] has none"
            )
        probs = mass / inside
    return probs / probs.sum()


# --------------------------------------------------------------------------------------------------------------
# Exact sampling from a probability table
# --------------------------------------------------------------------------------------------------------------


def build_alias_table(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table built with Vose's stable method (Vose, IEEE TSE 17(9), 1991).

    Column ``k`` is kept with probability ``accept[k]`` and replaced by ``alias[k]`` otherwise; drawing a column
    uniformly and then one uniform number reproduces `probs` exactly (up to float64 rounding) in O(1) per draw.

    Args:
        probs (`np.ndarray`): Non-negative weights of shape ``(T,)``; they are normalised here.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: ``accept`` (float64, in [0, 1]) and ``alias`` (int64), both of shape ``(T,)``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size == 0 or not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("probs must be a non-empty 1D array of finite non-negative numbers")
    total = probs.sum()
    if total <= 0:
        raise ValueError("probs must have a positive sum")
    n = probs.size
    scaled = probs * (n / total)
    accept = np.ones(n, dtype=np.float64)
    alias = np.arange(n, dtype=np.int64)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    # Leftovers are 1 up to rounding: they keep their own column.
    for i in small + large:
        accept[i] = 1.0
    return accept, alias


class TimestepSampler(ABC):
    """Base class of all training-timestep samplers.

    Subclasses draw ``torch.long`` timesteps in ``[0, num_train_timesteps)``. Randomness comes only from the
    `generator` passed to :meth:`sample`; without one, torch's default generator of the target device is used (as
    `torch.randint` does), so library code never seeds or touches global state itself.
    """

    #: Registry name; also the value of the scheduler config key ``timestep_sampling``.
    name: str = ""
    #: Scheduler config key -> constructor argument, for the peers' own scalar parameters.
    config_keys: dict[str, str] = {}

    def __init__(self, num_train_timesteps: int):
        self.num_train_timesteps = _check_num_train_timesteps(num_train_timesteps)

    def probs(self) -> torch.Tensor | None:
        """The float64 probability of every timestep (shape ``(T,)``), or `None` where it is not defined."""
        return None

    @abstractmethod
    def sample(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Draw `batch_size` timesteps.

        Args:
            batch_size (`int`): Number of timesteps to draw (>= 0).
            generator (`torch.Generator`, *optional*): Source of randomness; the draw happens on its device and the
                result is moved to `device`.
            device (`str` or `torch.device`, *optional*): Device of the returned tensor (defaults to the generator's
                device, else CPU).

        Returns:
            `torch.LongTensor` of shape ``(batch_size,)``.
        """

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable description (name, parameters, derived quantities) for configs and model cards."""
        return {"name": self.name, "num_train_timesteps": self.num_train_timesteps}

    def update_with_losses(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:  # noqa: B027
        """Feed back per-sample training losses; only loss-aware samplers use them."""

    def state_dict(self) -> dict[str, Any]:
        """Mutable state to checkpoint (empty for stateless samplers)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: B027
        """Restore the state returned by :meth:`state_dict`."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.summary().items() if k != "name")
        return f"{type(self).__name__}({params})"


def _target_devices(
    generator: torch.Generator | None, device: str | torch.device | None
) -> tuple[torch.device, torch.device]:
    draw = generator.device if generator is not None else torch.device(device if device is not None else "cpu")
    out = torch.device(device) if device is not None else draw
    return draw, out


class ProbabilityTableSampler(TimestepSampler):
    """Exact sampler for an explicit probability vector.

    Draws with Walker's alias method (one float64 uniform per sample: its integer part picks the column, its
    fractional part decides between the column and its alias), which is O(1) per draw, unlike binary search whose
    branch mispredictions dominate on CPU. Tables are built once and cached per device.

    Args:
        probs (`np.ndarray` or `torch.Tensor`): Non-negative weights of shape ``(T,)``; normalised here.
    """

    name = "table"

    def __init__(self, probs: np.ndarray | torch.Tensor):
        probs = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
        super().__init__(probs.size)
        self._set_probs(probs)

    def _set_probs(self, probs: np.ndarray) -> None:
        accept, alias = build_alias_table(probs)
        self._probs = probs / probs.sum()
        # Absolute thresholds k + accept[k] let the draw compare x = u * T directly, saving one operation.
        self._thresholds = np.arange(self.num_train_timesteps, dtype=np.float64) + accept
        self._alias = alias
        self._device_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def probs(self) -> torch.Tensor:
        return torch.from_numpy(self._probs.copy())

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tables = self._device_tables.get(device)
        if tables is None:
            # MPS has no float64; a float32 table there loses exactness only at the 1e-7 level.
            dtype = torch.float32 if device.type == "mps" else torch.float64
            tables = (
                torch.as_tensor(self._thresholds, dtype=dtype, device=device),
                torch.as_tensor(self._alias, device=device),
            )
            self._device_tables[device] = tables
        return tables

    def sample(self, batch_size, *, generator=None, device=None):
        batch_size = _check_batch_size(batch_size)
        draw_device, out_device = _target_devices(generator, device)
        thresholds, alias = self._tables(draw_device)
        x = torch.rand(batch_size, generator=generator, dtype=thresholds.dtype, device=draw_device)
        x.mul_(self.num_train_timesteps)
        column = x.long().clamp_(max=self.num_train_timesteps - 1)
        timesteps = torch.where(x < thresholds[column], column, alias[column])
        return timesteps.to(out_device)


# --------------------------------------------------------------------------------------------------------------
# The samplers
# --------------------------------------------------------------------------------------------------------------


class UniformTimestepSampler(TimestepSampler):
    """Uniform sampling over ``{0, ..., T-1}``: vanilla DDPM training (Ho et al., 2020, Algorithm 1)."""

    name = "uniform"

    def probs(self) -> torch.Tensor:
        return torch.full((self.num_train_timesteps,), 1.0 / self.num_train_timesteps, dtype=torch.float64)

    def sample(self, batch_size, *, generator=None, device=None):
        batch_size = _check_batch_size(batch_size)
        draw_device, out_device = _target_devices(generator, device)
        t = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=draw_device)
        return t.to(out_device)


class CINormalTimestepSampler(ProbabilityTableSampler):
    """The paper's confidence-interval normal sampler (arXiv 2601.21348, Sec. 4).

    Draws exactly from :func:`ci_normal_timestep_probs`. Moving ``[t_lower, t_upper]`` toward later (noisier)
    timesteps is reported to reduce memorization; its width sets the strength of the effect.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        t_lower (`float`): Lower end of the interval, ``0 <= t_lower < t_upper``.
        t_upper (`float`): Upper end of the interval, ``<= T``.
        coverage (`float`, defaults to 0.95): Normal mass inside the interval.
        tail (`str`, defaults to `"uniform"`): `"uniform"` (paper) or `"renormalize"` (ablation).
    """

    name = "ci_normal"
    config_keys = {"ci_lower": "t_lower", "ci_upper": "t_upper", "ci_coverage": "coverage", "ci_tail": "tail"}

    def __init__(
        self,
        num_train_timesteps: int,
        t_lower: float,
        t_upper: float,
        coverage: float = 0.95,
        tail: Literal["uniform", "renormalize"] = "uniform",
    ):
        probs = ci_normal_timestep_probs(num_train_timesteps, t_lower, t_upper, coverage, tail)
        super().__init__(probs)
        self.t_lower, self.t_upper, self.coverage, self.tail = float(t_lower), float(t_upper), float(coverage), tail
        self.mu, self.sigma = ci_normal_parameters(t_lower, t_upper, coverage)
        T = self.num_train_timesteps
        self.p_tail = float(stats.norm.cdf(-self.mu / self.sigma) + stats.norm.sf((T - self.mu) / self.sigma))

    def summary(self):
        return {
            **super().summary(),
            "ci_lower": self.t_lower,
            "ci_upper": self.t_upper,
            "ci_coverage": self.coverage,
            "ci_tail": self.tail,
            "mu": self.mu,
            "sigma": self.sigma,
            "p_tail": self.p_tail,
        }


def _probs_from_cdf(cdf: Callable[[np.ndarray], np.ndarray], num_train_timesteps: int) -> np.ndarray:
    """Bin masses of a distribution on normalised time [0, 1] given its CDF, timestep k owning [k/T, (k+1)/T)."""
    edges = cdf(np.linspace(0.0, 1.0, num_train_timesteps + 1))
    probs = np.clip(np.diff(edges), 0.0, None)
    return probs / probs.sum()


class LogitNormalTimestepSampler(ProbabilityTableSampler):
    """SD3's logit-normal sampling: ``t = sigmoid(n)``, ``n ~ N(logit_mean, logit_std^2)``.

    Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (arXiv 2403.03206),
    Sec. 3.1; the same scheme as ``weighting_scheme="logit_normal"`` in diffusers'
    ``compute_density_for_timestep_sampling``. ``t`` is mapped to DDPM timestep ``floor(t * T)`` (``t = 1`` is pure
    noise), and bin masses are computed in closed form, so sampling is exact.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        logit_mean (`float`, defaults to 0.0): Mean of the normal before the sigmoid; positive values favour noise.
        logit_std (`float`, defaults to 1.0): Standard deviation before the sigmoid (> 0).
    """

    name = "logit_normal"
    config_keys = {"logit_mean": "logit_mean", "logit_std": "logit_std"}

    def __init__(self, num_train_timesteps: int, logit_mean: float = 0.0, logit_std: float = 1.0):
        self.logit_mean = _check_finite("logit_mean", logit_mean)
        self.logit_std = _check_positive("logit_std", logit_std)
        T = _check_num_train_timesteps(num_train_timesteps)

        def cdf(t: np.ndarray) -> np.ndarray:
            with np.errstate(divide="ignore"):
                return special.ndtr((special.logit(t) - self.logit_mean) / self.logit_std)

        super().__init__(_probs_from_cdf(cdf, T))

    def summary(self):
        return {**super().summary(), "logit_mean": self.logit_mean, "logit_std": self.logit_std}


class ModeTimestepSampler(ProbabilityTableSampler):
    """SD3's mode sampling with heavy tails: ``t = 1 - u - s (cos^2(pi u / 2) - 1 + u)``, ``u ~ U(0, 1)``.

    Esser et al. (arXiv 2403.03206), Eq. 20; ``weighting_scheme="mode"`` in diffusers. The map is strictly
    decreasing for ``-1 < mode_scale < 1 / (pi/2 - 1) ~ 1.752``, so the bin masses are obtained exactly by inverting
    it numerically at the bin edges.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        mode_scale (`float`, defaults to 1.29): The scale ``s`` (diffusers' default).
    """

    name = "mode"
    config_keys = {"mode_scale": "mode_scale"}

    def __init__(self, num_train_timesteps: int, mode_scale: float = 1.29):
        s = _check_finite("mode_scale", mode_scale)
        s_max = 1.0 / (math.pi / 2.0 - 1.0)
        if not -1.0 < s < s_max:
            raise ValueError(f"mode_scale must lie in (-1, {s_max:.4f}) for a monotone map, got {mode_scale}")
        self.mode_scale = s
        T = _check_num_train_timesteps(num_train_timesteps)

        def f(u: float) -> float:
            return 1.0 - u - s * (math.cos(math.pi * u / 2.0) ** 2 - 1.0 + u)

        def cdf(t_edges: np.ndarray) -> np.ndarray:
            # f decreases from f(0)=1 to f(1)=0, so P(t <= x) = 1 - f^-1(x).
            out = np.empty_like(t_edges)
            for i, x in enumerate(t_edges):
                if x <= 0.0:
                    out[i] = 0.0
                elif x >= 1.0:
                    out[i] = 1.0
                else:
                    from scipy.optimize import brentq

                    out[i] = 1.0 - brentq(lambda u, x=x: f(u) - x, 0.0, 1.0, xtol=1e-15, rtol=1e-15)
            return out

        super().__init__(_probs_from_cdf(cdf, T))

    def summary(self):
        return {**super().summary(), "mode_scale": self.mode_scale}


class CosMapTimestepSampler(ProbabilityTableSampler):
    """SD3's CosMap sampling: ``t = 1 - 1 / (tan(pi u / 2) + 1)``, ``u ~ U(0, 1)``.

    Esser et al. (arXiv 2403.03206), Eq. 21-22 (density ``2 / (pi (1 - 2t + 2t^2))``); ``weighting_scheme="cosmap"``
    in diffusers applies it as a loss weight, here it is the sampling density. CDF:
    ``F(t) = (2/pi) arctan(t / (1 - t))``.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
    """

    name = "cosmap"

    def __init__(self, num_train_timesteps: int):
        T = _check_num_train_timesteps(num_train_timesteps)
        super().__init__(_probs_from_cdf(lambda t: (2.0 / math.pi) * np.arctan2(t, 1.0 - t), T))


def default_alphas_cumprod(num_train_timesteps: int) -> np.ndarray:
    """DDPM's linear beta schedule (1e-4 to 0.02), the default of diffusers' `DDPMScheduler`."""
    betas = np.linspace(1e-4, 0.02, num_train_timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


class EDMLogNormalTimestepSampler(ProbabilityTableSampler):
    """EDM's log-normal noise-level sampling, ``ln(sigma) ~ N(p_mean, p_std^2)``, mapped to DDPM timesteps.

    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models" (NeurIPS 2022), Sec. 5
    (``P_mean = -1.2``, ``P_std = 1.2``). DDPM timestep ``k`` has ``sigma_k = sqrt((1 - abar_k) / abar_k)``; each
    drawn sigma goes to the timestep whose sigma is nearest in log space (the scale EDM samples in), so ``P(k)`` is
    the normal mass of ``ln sigma`` between the midpoints of neighbouring ``ln sigma_k``.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        edm_p_mean (`float`, defaults to -1.2): Mean of ``ln(sigma)``.
        edm_p_std (`float`, defaults to 1.2): Standard deviation of ``ln(sigma)`` (> 0).
        alphas_cumprod (`np.ndarray`, *optional*): The schedule's cumulative alphas; DDPM's linear schedule if omitted.
    """

    name = "edm_lognormal"
    config_keys = {"edm_p_mean": "edm_p_mean", "edm_p_std": "edm_p_std"}

    def __init__(
        self,
        num_train_timesteps: int,
        edm_p_mean: float = -1.2,
        edm_p_std: float = 1.2,
        alphas_cumprod: np.ndarray | torch.Tensor | None = None,
    ):
        T = _check_num_train_timesteps(num_train_timesteps)
        self.edm_p_mean = _check_finite("edm_p_mean", edm_p_mean)
        self.edm_p_std = _check_positive("edm_p_std", edm_p_std)
        abar = default_alphas_cumprod(T) if alphas_cumprod is None else np.asarray(alphas_cumprod, dtype=np.float64)
        if abar.shape != (T,):
            raise ValueError(f"alphas_cumprod must have shape ({T},), got {abar.shape}")
        log_sigma = 0.5 * (np.log1p(-abar) - np.log(abar))
        if np.any(np.diff(log_sigma) <= 0):
            raise ValueError("alphas_cumprod must be strictly decreasing for a one-to-one sigma -> timestep map")
        mid = (log_sigma[1:] + log_sigma[:-1]) / 2.0
        edges = np.concatenate([[-np.inf], mid, [np.inf]])
        cdf = special.ndtr((edges - self.edm_p_mean) / self.edm_p_std)
        super().__init__(np.clip(np.diff(cdf), 0.0, None))

    def summary(self):
        return {**super().summary(), "edm_p_mean": self.edm_p_mean, "edm_p_std": self.edm_p_std}


class WindowTimestepSampler(ProbabilityTableSampler):
    """Uniform sampling restricted to a hard window ``{window_min, ..., window_max}`` (both inclusive).

    The hard-cutoff counterpart of the CI-normal sampler: timesteps outside the window are never trained.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        window_min (`int`, defaults to 0): First timestep of the window.
        window_max (`int`, *optional*): Last timestep of the window (defaults to ``T - 1``).
    """

    name = "window"
    config_keys = {"window_min": "window_min", "window_max": "window_max"}

    def __init__(self, num_train_timesteps: int, window_min: int = 0, window_max: int | None = None):
        T = _check_num_train_timesteps(num_train_timesteps)
        window_max = T - 1 if window_max is None else window_max
        for key, value in (("window_min", window_min), ("window_max", window_max)):
            if isinstance(value, bool) or float(_check_finite(key, value)) != int(value):
                raise ValueError(f"{key} must be an integer timestep, got {value!r}")
        window_min, window_max = int(window_min), int(window_max)
        if not 0 <= window_min <= window_max <= T - 1:
            raise ValueError(
                f"need 0 <= window_min <= window_max <= {T - 1}, got window_min={window_min}, window_max={window_max}"
            )
        self.window_min, self.window_max = window_min, window_max
        probs = np.zeros(T)
        probs[window_min : window_max + 1] = 1.0
        super().__init__(probs)

    def summary(self):
        return {**super().summary(), "window_min": self.window_min, "window_max": self.window_max}


class BetaTimestepSampler(ProbabilityTableSampler):
    """Normalised time drawn from ``Beta(beta_alpha, beta_beta)`` and mapped to ``floor(t * T)``.

    A flexible unimodal family used for timestep sampling in flow-matching work (e.g. pi0, Black et al. 2024).

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        beta_alpha (`float`, defaults to 1.0): First shape parameter (> 0).
        beta_beta (`float`, defaults to 1.0): Second shape parameter (> 0).
    """

    name = "beta"
    config_keys = {"beta_alpha": "beta_alpha", "beta_beta": "beta_beta"}

    def __init__(self, num_train_timesteps: int, beta_alpha: float = 1.0, beta_beta: float = 1.0):
        T = _check_num_train_timesteps(num_train_timesteps)
        self.beta_alpha = _check_positive("beta_alpha", beta_alpha)
        self.beta_beta = _check_positive("beta_beta", beta_beta)
        super().__init__(_probs_from_cdf(lambda t: special.betainc(self.beta_alpha, self.beta_beta, t), T))

    def summary(self):
        return {**super().summary(), "beta_alpha": self.beta_alpha, "beta_beta": self.beta_beta}


class LossAwareTimestepSampler(TimestepSampler):
    """improved-diffusion's loss-second-moment importance sampler.

    Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (ICML 2021), Sec. 3.3: keep the last
    `history_per_term` losses of every timestep; until every timestep has a full history sample uniformly; afterwards
    ``P(k) ~ sqrt(E[L_k^2])`` mixed with `uniform_prob` of the uniform distribution. Losses from all processes are
    gathered before the update (``torch.distributed.all_gather``) so every rank keeps the same table.

    This sampler changes which timesteps are trained; to keep the uniform-sampling objective unbiased, combine it with
    the explicit ``importance`` loss weighting (``1 / (T P(k))``) — nothing is reweighted silently.

    Args:
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        loss_aware_history (`int`, defaults to 10): Losses kept per timestep.
        loss_aware_uniform_prob (`float`, defaults to 0.001): Weight of the uniform component, in [0, 1].
    """

    name = "loss_aware"
    config_keys = {"loss_aware_history": "history_per_term", "loss_aware_uniform_prob": "uniform_prob"}

    def __init__(self, num_train_timesteps: int, history_per_term: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_train_timesteps)
        if isinstance(history_per_term, bool) or not isinstance(history_per_term, (int, np.integer)):
            raise ValueError(f"loss_aware_history must be a positive integer, got {history_per_term!r}")
        if history_per_term < 1:
            raise ValueError(f"loss_aware_history must be a positive integer, got {history_per_term}")
        uniform_prob = _check_finite("loss_aware_uniform_prob", uniform_prob)
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"loss_aware_uniform_prob must lie in [0, 1], got {uniform_prob}")
        self.history_per_term, self.uniform_prob = int(history_per_term), uniform_prob
        self._history = torch.zeros(self.num_train_timesteps, self.history_per_term, dtype=torch.float64)
        self._counts = torch.zeros(self.num_train_timesteps, dtype=torch.long)
        self._cdf_cache: dict[torch.device, torch.Tensor] = {}

    @property
    def warmed_up(self) -> bool:
        """Whether every timestep has a full loss history."""
        return bool((self._counts == self.history_per_term).all())

    def probs(self) -> torch.Tensor:
        T = self.num_train_timesteps
        if not self.warmed_up:
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        weights = self._history.pow(2).mean(dim=1).sqrt()
        weights = weights / weights.sum()
        return weights * (1.0 - self.uniform_prob) + self.uniform_prob / T

    def sample(self, batch_size, *, generator=None, device=None):
        batch_size = _check_batch_size(batch_size)
        draw_device, out_device = _target_devices(generator, device)
        if not self.warmed_up:
            t = torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=draw_device)
            return t.to(out_device)
        # The table changes every step, so inverse-CDF search (cheap to rebuild) beats an alias table here.
        cdf = self._cdf_cache.get(draw_device)
        if cdf is None:
            cdf = torch.cumsum(self.probs(), 0).to(draw_device)
            self._cdf_cache[draw_device] = cdf
        u = torch.rand(batch_size, generator=generator, dtype=cdf.dtype, device=draw_device) * cdf[-1]
        t = torch.searchsorted(cdf, u, right=True).clamp_(max=self.num_train_timesteps - 1)
        return t.to(out_device)

    def update_with_losses(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Gather ``(timesteps, losses)`` from every process and record them (improved-diffusion's local update)."""
        timesteps = timesteps.detach().reshape(-1)
        losses = losses.detach().reshape(-1).to(torch.float64)
        if timesteps.shape != losses.shape:
            raise ValueError(f"timesteps {tuple(timesteps.shape)} and losses {tuple(losses.shape)} must match")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            timesteps, losses = _all_gather_variable(timesteps.long(), losses)
        self.update_with_all_losses(timesteps.cpu(), losses.cpu())

    def update_with_all_losses(self, timesteps: torch.Tensor, losses: torch.Tensor) -> None:
        """Record already-gathered losses, oldest entries dropped first."""
        for t, loss in zip(timesteps.tolist(), losses.tolist()):
            if not math.isfinite(loss):
                continue
            n = int(self._counts[t])
            if n == self.history_per_term:
                self._history[t, :-1] = self._history[t, 1:].clone()
                self._history[t, -1] = loss
            else:
                self._history[t, n] = loss
                self._counts[t] = n + 1
        self._cdf_cache.clear()

    def summary(self):
        return {
            **super().summary(),
            "loss_aware_history": self.history_per_term,
            "loss_aware_uniform_prob": self.uniform_prob,
        }

    def state_dict(self):
        return {"history": self._history.clone(), "counts": self._counts.clone()}

    def load_state_dict(self, state_dict):
        history, counts = state_dict["history"], state_dict["counts"]
        if tuple(history.shape) != tuple(self._history.shape):
            raise ValueError(f"loss history of shape {tuple(history.shape)} does not fit {tuple(self._history.shape)}")
        self._history = history.clone().to(torch.float64)
        self._counts = counts.clone().long()
        self._cdf_cache.clear()


def _all_gather_variable(timesteps: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather 1D tensors whose length may differ between ranks (padding to the longest)."""
    dist = torch.distributed
    n = torch.tensor([timesteps.numel()], device=timesteps.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    pad = longest - timesteps.numel()
    t_pad = torch.nn.functional.pad(timesteps, (0, pad))
    l_pad = torch.nn.functional.pad(losses, (0, pad))
    t_all = [torch.zeros_like(t_pad) for _ in sizes]
    l_all = [torch.zeros_like(l_pad) for _ in sizes]
    dist.all_gather(t_all, t_pad)
    dist.all_gather(l_all, l_pad)
    t_out = torch.cat([t[: int(s.item())] for t, s in zip(t_all, sizes)])
    l_out = torch.cat([v[: int(s.item())] for v, s in zip(l_all, sizes)])
    return t_out, l_out


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

#: Samplers by name, in the style of improved-diffusion's ``create_named_schedule_sampler``.
TIMESTEP_SAMPLERS: dict[str, type[TimestepSampler]] = {
    cls.name: cls
    for cls in (
        UniformTimestepSampler,
        CINormalTimestepSampler,
        LogitNormalTimestepSampler,
        ModeTimestepSampler,
        CosMapTimestepSampler,
        EDMLogNormalTimestepSampler,
        WindowTimestepSampler,
        BetaTimestepSampler,
        LossAwareTimestepSampler,
    )
}


def create_timestep_sampler(
    name: str,
    num_train_timesteps: int,
    *,
    alphas_cumprod: np.ndarray | torch.Tensor | None = None,
    **params: Any,
) -> TimestepSampler:
    """Build a sampler from its registry name and its parameters, given by config key or constructor name.

    Args:
        name (`str`): One of :data:`TIMESTEP_SAMPLERS` (e.g. `"uniform"`, `"ci_normal"`, `"logit_normal"`).
        num_train_timesteps (`int`): Number of discrete training timesteps ``T``.
        alphas_cumprod (`np.ndarray`, *optional*): The noise schedule, for samplers defined on noise levels.
        **params: Sampler parameters. Scheduler config keys (``ci_lower``, ``logit_mean``, ...) and constructor
            names (``t_lower``, ...) are both accepted; `None` values mean "use the default".

    Returns:
        [`TimestepSampler`]
    """
    if name not in TIMESTEP_SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; choose one of {sorted(TIMESTEP_SAMPLERS)}")
    cls = TIMESTEP_SAMPLERS[name]
    kwargs = {cls.config_keys.get(key, key): value for key, value in params.items() if value is not None}
    if cls is EDMLogNormalTimestepSampler:
        kwargs["alphas_cumprod"] = alphas_cumprod
    if cls is CINormalTimestepSampler:
        missing = [key for key in ("t_lower", "t_upper") if key not in kwargs]
        if missing:
            raise ValueError(
                "timestep_sampling='ci_normal' needs ci_lower and ci_upper (e.g. ci_lower=600, ci_upper=1000)"
            )
    try:
        return cls(num_train_timesteps, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad parameters {sorted(params)} for timestep sampler {name!r}: {err}") from None

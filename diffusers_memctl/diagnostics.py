"""Where learning happens: per-timestep gradient norm, coherence and contribution share of a trained denoiser.

The paper (arXiv 2601.21348, Sec. 3-4.1) argues from equations that under uniform timestep sampling the expected
gradient contribution of a timestep falls with t, that high-SNR (low t) gradients align across samples, and that a
CI-normal sampler with a later mean moves the contribution toward low-SNR steps. This module measures it.

For each of `num_bins` equal bins of [0, T) the denoising loss is differentiated on `num_batches` seeded
mini-batches whose timesteps are fixed by the bin, not drawn from a sampler: by default every sample gets its own
uniform timestep inside the bin (``timestep_mode="stratified"``: the bin's average gradient), or all sit at the bin's
midpoint. From the Gram matrix ``G_ij = g_i . g_j`` of the flattened batch gradients ``g_1 ... g_B`` of a bin:

- ``E||g||``: the mean per-batch gradient norm, ``mean_i sqrt(G_ii)``;
- ``||E g||``: the norm of the expected gradient, estimated without the noise bias of ``||mean_i g_i||`` by the
  U-statistic ``||E g||^2 ~ sum_{i != j} G_ij / (B (B - 1))`` (clipped at 0 before the square root);
- ``coherence = ||E g|| / E||g||`` in [0, 1]: 1 when every batch pulls the same way, near 0 when they cancel
  (after Chatterjee, "Coherent Gradients", ICLR 2020; his alpha, the mean pairwise dot product over the mean squared
  norm, is reported too as ``alignment``);
- optionally the same alpha over per-sample gradients (``torch.func.vmap`` of ``grad``), ``per_sample_alignment``.

Every standard error is a delete-one jackknife over batch indices. Batch ``i`` of every bin uses the same training
samples and noise (common random numbers, so differences between bins are not drowned by sampling noise), which is
why the jackknife drops batch ``i`` from every bin at once; the contribution shares get their errors the same way.

The contribution share of bin k under a sampler P and a loss weighting w is
``c_k = (sum_{t in bin k} P(t) w(t)) * ||E g_k||``, normalised to sum to 1: the share of the expected training
gradient's magnitude each bin supplies (an upper-bound picture: it ignores cancellation between bins).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .run_folder import (
    GRADIENT_CONTRIBUTION_PLOT,
    GRADIENT_PROFILE_NAME,
    GRADIENT_PROFILE_PLOT,
    GRADIENT_PROFILES_NAME,
    MODEL_CONFIG_NAME,
    MODEL_INDEX_NAME,
    PLOTS_DIR,
    UNET_DIR,
    RunFolder,
    read_json,
    read_run_args,
    write_csv_atomic,
    write_text_atomic,
)

__all__ = [
    "DEFAULT_SAMPLER_SPECS",
    "GRADIENT_PROFILE_NAME",
    "GRADIENT_PROFILE_SCHEMA_VERSION",
    "GradientProfile",
    "bin_edges",
    "contribution_shares",
    "estimate_gradient_profile",
    "find_run_folders",
    "gram_statistics",
    "profile_run",
    "profile_run_folders",
    "resolve_sampler_spec",
    "write_gradient_profile",
]

GRADIENT_PROFILE_SCHEMA_VERSION = 1

#: Samplers compared by default: uniform, three CI intervals of the paper's grid and the peers.
DEFAULT_SAMPLER_SPECS = (
    "uniform",
    "ci:0-250",
    "ci:500-1000",
    "ci:750-1000",
    "logit_normal",
    "uniform+min_snr",
    "uniform+p2",
)


# --------------------------------------------------------------------------------------------------------------
# Pure statistics over Gram matrices
# --------------------------------------------------------------------------------------------------------------


def bin_edges(num_train_timesteps: int, num_bins: int) -> np.ndarray:
    """Integer edges of `num_bins` equal bins over [0, T); bin k holds timesteps ``edges[k] <= t < edges[k+1]``."""
    if num_bins < 1 or num_bins > num_train_timesteps:
        raise ValueError(f"num_bins must be in [1, {num_train_timesteps}] (the number of timesteps), got {num_bins}")
    return np.round(np.linspace(0, num_train_timesteps, num_bins + 1)).astype(np.int64)


def _gram_stats(gram: np.ndarray) -> dict[str, float]:
    """Mean norm, squared norm of the mean (U-statistic), coherence and alignment of one Gram matrix."""
    n = gram.shape[0]
    diag = np.diag(gram)
    norms = np.sqrt(np.clip(diag, 0.0, None))
    off = (gram.sum() - diag.sum()) / (n * (n - 1))
    mean_norm = float(norms.mean())
    mean_grad_norm = math.sqrt(max(off, 0.0))
    return {
        "mean_batch_grad_norm": mean_norm,
        "mean_grad_sq": float(off),
        "mean_grad_norm": mean_grad_norm,
        "coherence": mean_grad_norm / mean_norm if mean_norm > 0 else float("nan"),
        "alignment": float(off / diag.mean()) if diag.mean() > 0 else float("nan"),
    }


def _delete_one(gram: np.ndarray, index: int) -> np.ndarray:
    keep = np.arange(gram.shape[0]) != index
    return gram[np.ix_(keep, keep)]


def _jackknife_se(estimates: np.ndarray) -> np.ndarray:
    """Delete-one jackknife standard error over axis 0 (Efron & Stein 1981): sqrt((n-1)/n * sum (x_i - mean)^2)."""
    n = estimates.shape[0]
    return np.sqrt((n - 1) / n * ((estimates - estimates.mean(axis=0)) ** 2).sum(axis=0))


def gram_statistics(gram: np.ndarray) -> dict[str, float]:
    """Statistics of one bin from the Gram matrix of its batch gradients, each with a jackknife standard error.

    Args:
        gram (`np.ndarray`): ``(B, B)`` matrix of dot products of the B flattened batch gradients (B >= 3).

    Returns:
        `dict`: ``mean_batch_grad_norm`` (E||g||), ``mean_grad_norm`` (||E g||), ``mean_grad_sq`` (its unbiased
        square), ``coherence`` (their ratio), ``alignment`` (Chatterjee's alpha), and ``<name>_se`` for each.
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] < 3:
        raise ValueError(f"a Gram matrix of at least 3 batches is needed for jackknife errors, got {gram.shape}")
    stats = _gram_stats(gram)
    replicates = [_gram_stats(_delete_one(gram, i)) for i in range(gram.shape[0])]
    for key in list(stats):
        stats[f"{key}_se"] = float(_jackknife_se(np.array([r[key] for r in replicates])))
    return stats


def contribution_shares(
    mean_grad_norms: Sequence[float] | np.ndarray,
    edges: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray | torch.Tensor,
    weights: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """Share of the expected gradient each timestep bin supplies under a sampler and a loss weighting.

    ``c_k = (sum_{t in bin k} P(t) w(t)) * ||E g_k||``, divided by ``sum_k c_k``.

    Args:
        mean_grad_norms (`Sequence[float]`): ``||E g_k||`` per bin (length K).
        edges (`Sequence[int]`): K + 1 integer bin edges over [0, T) (see :func:`bin_edges`).
        probs (`Sequence[float]`): The sampler's probability of every timestep, length T.
        weights (`Sequence[float]`, *optional*): Loss weight of every timestep, length T (default: all ones).

    Returns:
        `np.ndarray`: K shares summing to 1 (float64).
    """
    norms = np.asarray(mean_grad_norms, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.int64)
    probs = np.asarray(probs.cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    if edges.shape != (norms.shape[0] + 1,) or edges[0] != 0 or edges[-1] != probs.shape[0]:
        raise ValueError(
            f"edges must be {norms.shape[0] + 1} values from 0 to T={probs.shape[0]}, got {edges.tolist()}"
        )
    mass = probs.copy()
    if weights is not None:
        w = np.asarray(weights.cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
        if w.shape != probs.shape:
            raise ValueError(f"weights must have one value per timestep ({probs.shape[0]}), got shape {w.shape}")
        mass = mass * w
    bin_mass = np.add.reduceat(mass, edges[:-1])
    contribution = bin_mass * norms
    total = contribution.sum()
    if not total > 0:
        raise ValueError("no bin contributes (every ||E g_k|| or every bin's weighted mass is 0)")
    return contribution / total


# --------------------------------------------------------------------------------------------------------------
# Sampler / weighting specifications
# --------------------------------------------------------------------------------------------------------------


def _parse_interval(text: str, spec: str) -> tuple[float, float]:
    try:
        lower, upper = (float(part) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"sampler spec {spec!r}: write a CI interval as ci:LOWER-UPPER, e.g. ci:750-1000") from None
    return lower, upper


def resolve_sampler_spec(
    spec: str, alphas_cumprod: np.ndarray | torch.Tensor, *, prediction_type: str = "epsilon"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Timestep probabilities and loss weights of a spec ``SAMPLER[+WEIGHTING]``.

    SAMPLER is ``uniform``, ``ci:LOWER-UPPER`` (the paper's CI-normal sampler, coverage 0.95, uniform tail),
    ``importance:ci:LOWER-UPPER`` (uniform sampling with weights ``T P(k)``, the same expected gradient as sampling
    from P) or any name of :data:`~diffusers_memctl.timestep_sampling.TIMESTEP_SAMPLERS` with a closed-form
    distribution, at its default parameters. WEIGHTING is ``min_snr`` (gamma 5) or ``p2`` (k 1, gamma 1).

    Args:
        spec (`str`): E.g. ``"uniform"``, ``"ci:750-1000"``, ``"logit_normal"``, ``"uniform+min_snr"``.
        alphas_cumprod (`np.ndarray`): The noise schedule (length T).
        prediction_type (`str`, defaults to `"epsilon"`): The model's target (min-SNR depends on it).

    Returns:
        `tuple`: ``(probs, weights)``, float64 arrays of length T (`weights` is `None` for no weighting).
    """
    from .loss_weighting import compute_loss_weights
    from .timestep_sampling import create_timestep_sampler

    alphas_cumprod = torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64)
    T = alphas_cumprod.shape[0]
    sampler_text, _, weighting = spec.partition("+")
    if sampler_text.startswith("importance:"):
        if weighting:
            raise ValueError(f"sampler spec {spec!r}: importance weights cannot be combined with {weighting!r}")
        target, _ = resolve_sampler_spec(sampler_text[len("importance:") :], alphas_cumprod)
        return np.full(T, 1.0 / T), T * target
    if sampler_text == "loss_aware":
        raise ValueError(f"sampler spec {spec!r}: loss_aware has no closed-form distribution (it follows training)")
    if sampler_text.startswith("ci:"):
        lower, upper = _parse_interval(sampler_text[3:], spec)
        sampler = create_timestep_sampler("ci_normal", T, ci_lower=lower, ci_upper=upper)
    else:
        sampler = create_timestep_sampler(sampler_text, T, alphas_cumprod=alphas_cumprod.numpy())
    probs = sampler.probs()
    if probs is None:
        raise ValueError(f"sampler spec {spec!r}: {sampler_text!r} has no closed-form distribution to profile")
    probs = probs.double().cpu().numpy()
    if not weighting:
        return probs, None
    if weighting not in ("min_snr", "p2"):
        raise ValueError(f"sampler spec {spec!r}: unknown weighting {weighting!r}; use min_snr or p2")
    weights = compute_loss_weights(
        weighting, torch.arange(T), alphas_cumprod=alphas_cumprod, prediction_type=prediction_type
    )
    return probs, weights.double().numpy()


# --------------------------------------------------------------------------------------------------------------
# The profile
# --------------------------------------------------------------------------------------------------------------


@dataclass
class GradientProfile:
    """Measured per-bin gradient Gram matrices of one model, and everything derived from them.

    Args:
        num_train_timesteps (`int`): T of the noise schedule.
        edges (`list[int]`): K + 1 bin edges over [0, T).
        timesteps (`list[int]`): The midpoint of each bin (the timestep used in ``timestep_mode="midpoint"``).
        grams (`np.ndarray`): ``(K, B, B)`` dot products of the batch gradients of each bin.
        alphas_cumprod (`list[float]`): The schedule, so shares under any sampler can be recomputed from the file.
        settings (`dict`): Batch size, number of batches, seed, prediction type, parameter count, timings, source.
        per_sample_alignment (`np.ndarray`, *optional*): ``(K, M)`` Chatterjee alpha of per-sample gradients in the
            first M batches of every bin.
        mean_gradients (`torch.Tensor`, *optional*): ``(K, P)`` mean batch gradient of every bin (kept only when
            asked for; never written to the file).
    """

    num_train_timesteps: int
    edges: list[int]
    timesteps: list[int]
    grams: np.ndarray
    alphas_cumprod: list[float]
    settings: dict[str, Any] = field(default_factory=dict)
    per_sample_alignment: np.ndarray | None = None
    mean_gradients: torch.Tensor | None = None

    def bin_statistics(self) -> list[dict[str, float]]:
        """:func:`gram_statistics` of every bin, with its edges and timestep (and per-sample alignment, if any)."""
        rows = []
        for k, gram in enumerate(self.grams):
            row = {"bin": k, "t_start": self.edges[k], "t_end": self.edges[k + 1], "timestep": self.timesteps[k]}
            row.update(gram_statistics(gram))
            if self.per_sample_alignment is not None:
                values = self.per_sample_alignment[k]
                row["per_sample_alignment"] = float(values.mean())
                row["per_sample_alignment_se"] = (
                    float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
                )
            rows.append(row)
        return rows

    def share_replicates(self, spec: str) -> tuple[np.ndarray, np.ndarray]:
        """Shares under `spec` and their B delete-one replicates ``(B, K)`` (for jackknife errors of any function
        of the shares: ``_jackknife_se``-style ``sqrt((B-1)/B * sum (f_i - mean f)^2)``)."""
        probs, weights = resolve_sampler_spec(
            spec, self.alphas_cumprod, prediction_type=self.settings.get("prediction_type", "epsilon")
        )

        def shares_of(grams: np.ndarray) -> np.ndarray:
            norms = [_gram_stats(g)["mean_grad_norm"] for g in grams]
            return contribution_shares(norms, self.edges, probs, weights)

        num_batches = self.grams.shape[1]
        replicates = [shares_of(np.stack([_delete_one(g, i) for g in self.grams])) for i in range(num_batches)]
        return shares_of(self.grams), np.stack(replicates)

    def shares(self, spec: str, windows: int = 4) -> dict[str, Any]:
        """Contribution shares under one sampler spec (see :func:`resolve_sampler_spec`) with jackknife errors.

        Args:
            spec (`str`): The sampler, e.g. ``"uniform"`` or ``"ci:750-1000"``.
            windows (`int`, defaults to 4): Also sum the shares over this many equal windows of [0, T) (bins are
                assigned by their start), each with its own jackknife error (not the sum of the bins' errors).

        Returns:
            `dict`: ``shares``, ``shares_se`` (per bin) and ``window_shares`` (``t_start``, ``t_end``, ``share``,
            ``share_se``).
        """
        estimate, replicates = self.share_replicates(spec)
        starts = np.asarray(self.edges[:-1])
        window_edges = np.round(np.linspace(0, self.num_train_timesteps, windows + 1)).astype(int)
        window_rows = []
        for lo, hi in zip(window_edges[:-1], window_edges[1:]):
            member = (starts >= lo) & (starts < hi)
            window_rows.append(
                {
                    "t_start": int(lo),
                    "t_end": int(hi),
                    "share": float(estimate[member].sum()),
                    "share_se": float(_jackknife_se(replicates[:, member].sum(1))),
                }
            )
        return {
            "shares": estimate.tolist(),
            "shares_se": _jackknife_se(replicates).tolist(),
            "window_shares": window_rows,
        }

    def window_statistic(self, key: str, windows: int = 4) -> list[dict[str, float]]:
        """Mean of a per-bin statistic (e.g. ``"coherence"``) over equal windows of [0, T), with jackknife errors.

        Args:
            key (`str`): A key of :func:`gram_statistics` without ``_se``.
            windows (`int`, defaults to 4): Number of equal windows (bins are assigned by their start).

        Returns:
            `list[dict]`: ``t_start``, ``t_end``, ``value``, ``se`` per window.
        """
        estimate = np.array([_gram_stats(g)[key] for g in self.grams])
        replicates = np.array(
            [[_gram_stats(_delete_one(g, i))[key] for g in self.grams] for i in range(self.grams.shape[1])]
        )
        starts = np.asarray(self.edges[:-1])
        window_edges = np.round(np.linspace(0, self.num_train_timesteps, windows + 1)).astype(int)
        rows = []
        for lo, hi in zip(window_edges[:-1], window_edges[1:]):
            member = (starts >= lo) & (starts < hi)
            rows.append(
                {
                    "t_start": int(lo),
                    "t_end": int(hi),
                    "value": float(estimate[member].mean()),
                    "se": float(_jackknife_se(replicates[:, member].mean(1))),
                }
            )
        return rows

    def to_dict(self, sampler_specs: Sequence[str] = ()) -> dict[str, Any]:
        """The content of ``gradient_profile.json`` (raw Gram matrices, per-bin statistics, shares per sampler)."""
        return {
            "schema_version": GRADIENT_PROFILE_SCHEMA_VERSION,
            "num_train_timesteps": self.num_train_timesteps,
            "bin_edges": list(self.edges),
            "timesteps": list(self.timesteps),
            "settings": self.settings,
            "standard_errors": "delete-one jackknife over batch indices (batch i shares data and noise across bins)",
            "bins": self.bin_statistics(),
            "contribution": {spec: self.shares(spec) for spec in sampler_specs},
            "grams": [[[float(f"{v:.7g}") for v in row] for row in gram] for gram in self.grams],
            "per_sample_alignment": (
                None if self.per_sample_alignment is None else self.per_sample_alignment.tolist()
            ),
            "alphas_cumprod": [float(f"{v:.9g}") for v in self.alphas_cumprod],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GradientProfile:
        """Rebuild a profile from the content of ``gradient_profile.json``."""
        version = data.get("schema_version")
        if version != GRADIENT_PROFILE_SCHEMA_VERSION:
            raise ValueError(
                f"gradient profile schema_version {version!r} is not supported (expected "
                f"{GRADIENT_PROFILE_SCHEMA_VERSION})"
            )
        alignment = data.get("per_sample_alignment")
        return cls(
            num_train_timesteps=int(data["num_train_timesteps"]),
            edges=[int(v) for v in data["bin_edges"]],
            timesteps=[int(v) for v in data["timesteps"]],
            grams=np.asarray(data["grams"], dtype=np.float64),
            alphas_cumprod=[float(v) for v in data["alphas_cumprod"]],
            settings=dict(data.get("settings", {})),
            per_sample_alignment=None if alignment is None else np.asarray(alignment, dtype=np.float64),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> GradientProfile:
        """Read a ``gradient_profile.json`` file (or the one inside a folder)."""
        path = Path(path)
        if path.is_dir():
            path = path / GRADIENT_PROFILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no gradient profile at {path}")
        return cls.from_dict(read_json(path))


# --------------------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------------------


def _batch_generator(seed: int, batch_index: int, device: torch.device) -> torch.Generator:
    """One generator per batch index, shared by every bin (common random numbers), seeded via SeedSequence."""
    state = np.random.SeedSequence([seed, batch_index, 15]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device="cuda" if device.type == "cuda" else "cpu")
    return generator.manual_seed(int(state) & ((1 << 63) - 1))


def _forward(model: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    output = model(noisy, timesteps)
    return getattr(output, "sample", output)


def _draw_batch(
    samples: torch.Tensor, batch_size: int, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training samples (without replacement within the batch), their noise and a uniform offset in [0, 1) each
    (where in a bin its timestep falls, for ``timestep_mode="stratified"``), all from one generator."""
    index = torch.randperm(samples.shape[0], generator=generator, device=generator.device)[:batch_size].cpu()
    clean = samples[index].to(device)
    noise = torch.randn(clean.shape, generator=generator, device=generator.device).to(device)
    offsets = torch.rand(batch_size, generator=generator, device=generator.device, dtype=torch.float64).to(device)
    return clean, noise, offsets


def _bin_timesteps(mode: str, start: int, end: int, offsets: torch.Tensor) -> torch.Tensor:
    """The batch's timesteps in bin ``[start, end)``: all the midpoint, or one uniform draw per sample."""
    if mode == "midpoint":
        return torch.full(offsets.shape, (start + end) // 2, dtype=torch.long, device=offsets.device)
    return (start + torch.floor(offsets * (end - start))).long().clamp_(max=end - 1)


def _batch_gradient(
    model: torch.nn.Module,
    parameters: list[torch.nn.Parameter],
    scheduler: Any,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """Flattened gradient of the training loss (mean squared error, unweighted) of one batch at its timesteps."""
    from .training import regression_target

    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = regression_target(scheduler, clean, noise, timesteps)
    loss = F.mse_loss(_forward(model, noisy, timesteps).float(), target.float())
    grads = torch.autograd.grad(loss, parameters)
    return torch.cat([g.reshape(-1) for g in grads]).float()


def _gram(rows: torch.Tensor, chunk: int = 1 << 20) -> np.ndarray:
    """Dot products of float32 gradient rows, accumulated in float64 over parameter chunks (bounded extra memory)."""
    gram = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64)
    for start in range(0, rows.shape[1], chunk):
        part = rows[:, start : start + chunk].double()
        gram += part @ part.T
    return gram.numpy()


def _alignment_of(vectors: torch.Tensor) -> float:
    """Chatterjee's alpha of a set of gradients: mean pairwise dot product over mean squared norm."""
    gram = torch.from_numpy(_gram(vectors))
    n = gram.shape[0]
    diag = torch.diagonal(gram)
    return float((gram.sum() - diag.sum()) / (n * (n - 1)) / diag.mean())


def _per_sample_gradients(
    model: torch.nn.Module, scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> tuple[torch.Tensor, str]:
    """``(n, P)`` per-sample gradients with ``torch.func.vmap(grad(...))``; a loop of backward passes if vmap fails."""
    from torch.func import functional_call, grad, vmap

    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    from .training import regression_target

    noisy = scheduler.add_noise(clean, noise, timesteps)
    target = regression_target(scheduler, clean, noise, timesteps)

    def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0), t.unsqueeze(0)))
        return F.mse_loss(getattr(out, "sample", out).float(), y.unsqueeze(0).float())

    try:
        with warnings.catch_warnings():
            # CPU attention has no batching rule yet: torch warns once per call and falls back to a slower path.
            warnings.filterwarnings("ignore", message="There is a performance drop")
            per = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))(params, noisy, timesteps, target)
        return torch.cat([per[name].reshape(clean.shape[0], -1) for name in names], dim=1).float(), "vmap"
    except Exception:  # a model whose forward vmap cannot trace (data-dependent control flow): exact, slower
        parameters = [p for p in model.parameters() if p.requires_grad]
        rows = [
            _batch_gradient(model, parameters, scheduler, clean[i : i + 1], noise[i : i + 1], timesteps[i : i + 1])
            for i in range(clean.shape[0])
        ]
        return torch.stack(rows), "loop"


def estimate_gradient_profile(
    model: torch.nn.Module,
    scheduler: Any,
    samples: torch.Tensor,
    *,
    num_bins: int = 20,
    num_batches: int = 16,
    batch_size: int = 32,
    seed: int = 0,
    timestep_mode: Literal["stratified", "midpoint"] = "stratified",
    per_sample_batches: int = 0,
    keep_mean_gradients: bool = False,
    device: str | torch.device | None = None,
    progress: bool | Callable[[int], Any] = True,
) -> GradientProfile:
    """Measure per-bin gradient Gram matrices of `model` on `samples`, for equal timestep bins over [0, T).

    Args:
        model (`torch.nn.Module`): A denoiser called as ``model(noisy, timesteps)`` (returning a tensor or an output
            with ``.sample``). It is put in eval mode (no dropout) and its weights are not changed.
        scheduler: A diffusers DDPM-style scheduler (``add_noise``, ``alphas_cumprod``, ``config.prediction_type``).
        samples (`torch.Tensor`): Training samples ``(N, ...)`` in the model's value range.
        num_bins (`int`, defaults to 20): Equal timestep bins over [0, T).
        num_batches (`int`, defaults to 16): Seeded mini-batches per bin (>= 3, for jackknife errors).
        batch_size (`int`, defaults to 32): Samples per mini-batch (at most N).
        seed (`int`, defaults to 0): Seed of every draw (batch membership, noise, timesteps in the bin).
        timestep_mode (`str`, defaults to `"stratified"`): `"stratified"` gives every sample of a batch its own
            uniform timestep in the bin, so the bin's expected gradient is the average over its timesteps (what a
            sampler's P(bin) multiplies); `"midpoint"` differentiates every batch at the bin's midpoint timestep
            (the gradient at that one t: a trained network's error can change sharply between neighbouring t).
        per_sample_batches (`int`, defaults to 0): Batches per bin whose per-sample gradients (``torch.func``) give
            ``per_sample_alignment``; costs about one batch-size of backward passes each.
        keep_mean_gradients (`bool`, defaults to `False`): Keep the ``(K, P)`` mean gradient of every bin.

    Memory: the B gradients of one bin are held at once on the CPU (``B * P * 4`` bytes; 11 MB for the tiny U-Net
    with B = 16, 7 GB for the paper's 113M-parameter U-Net), plus ``batch_size * P * 4`` bytes for each per-sample
    batch.
        device (`str`, *optional*): Where to compute (default: the model's device).
        progress (`bool` or callable, defaults to `True`): A tqdm bar, or a callback called with each finished batch.

    Returns:
        [`GradientProfile`]
    """
    T = int(scheduler.config.num_train_timesteps)
    if num_batches < 3:
        raise ValueError(f"num_batches must be >= 3 for jackknife standard errors, got {num_batches}")
    if not 1 <= batch_size <= samples.shape[0]:
        raise ValueError(f"batch_size must be in [1, {samples.shape[0]}] (the number of samples), got {batch_size}")
    if timestep_mode not in ("stratified", "midpoint"):
        raise ValueError(f"timestep_mode must be 'stratified' or 'midpoint', got {timestep_mode!r}")
    if not 0 <= per_sample_batches <= num_batches:
        raise ValueError(f"per_sample_batches must be in [0, num_batches={num_batches}], got {per_sample_batches}")
    edges = bin_edges(T, num_bins)
    timesteps = ((edges[:-1] + edges[1:]) // 2).tolist()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    parameters = [p for p in model.parameters() if p.requires_grad]
    num_parameters = sum(p.numel() for p in parameters)
    bar = _progress_bar(progress, num_bins * num_batches)
    grams = np.zeros((num_bins, num_batches, num_batches))
    alignment = np.zeros((num_bins, per_sample_batches)) if per_sample_batches else None
    mean_gradients = torch.zeros(num_bins, num_parameters, dtype=torch.float64) if keep_mean_gradients else None
    method = None
    tic = time.perf_counter()
    try:
        for k in range(num_bins):
            rows = []
            for b in range(num_batches):
                clean, noise, offsets = _draw_batch(samples, batch_size, _batch_generator(seed, b, device), device)
                t = _bin_timesteps(timestep_mode, int(edges[k]), int(edges[k + 1]), offsets)
                rows.append(_batch_gradient(model, parameters, scheduler, clean, noise, t).cpu())
                if b < per_sample_batches:
                    per_sample, method = _per_sample_gradients(model, scheduler, clean, noise, t)
                    alignment[k, b] = _alignment_of(per_sample.cpu())
                bar(1)
            stacked = torch.stack(rows)
            grams[k] = _gram(stacked)
            if mean_gradients is not None:
                mean_gradients[k] = stacked.double().mean(0)
    finally:
        model.train(was_training)
        bar(None)
    settings = {
        "num_batches": num_batches,
        "batch_size": batch_size,
        "seed": seed,
        "num_samples": int(samples.shape[0]),
        "prediction_type": scheduler.config.prediction_type,
        "num_parameters": int(num_parameters),
        "per_sample_batches": per_sample_batches,
        "per_sample_method": method,
        "timestep_mode": timestep_mode,
        "loss": "mean squared error over all elements, unweighted",
        "device": str(device),
        "seconds": round(time.perf_counter() - tic, 3),
    }
    return GradientProfile(
        num_train_timesteps=T,
        edges=edges.tolist(),
        timesteps=timesteps,
        grams=grams,
        alphas_cumprod=scheduler.alphas_cumprod.double().cpu().tolist(),
        settings=settings,
        per_sample_alignment=alignment,
        mean_gradients=mean_gradients,
    )


def _progress_bar(progress: bool | Callable[[int], Any], total: int) -> Callable[[int | None], Any]:
    """A callable advancing a tqdm bar (``None`` closes it), or the user's callback."""
    if callable(progress):
        return lambda n: None if n is None else progress(n)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="gradients", disable=not progress)
    return lambda n: bar.close() if n is None else bar.update(n)


# --------------------------------------------------------------------------------------------------------------
# Run folders and files
# --------------------------------------------------------------------------------------------------------------


def _load_model_and_scheduler(path: Path, modality: str) -> tuple[torch.nn.Module, Any]:
    from diffusers import DDPMScheduler

    from .evaluation import load_run_pipeline
    from .scheduling_memctl import MEMCTL_CONFIG_DEFAULTS

    unet, scheduler_config = load_run_pipeline(path, modality)
    plain = {k: v for k, v in scheduler_config.items() if k not in MEMCTL_CONFIG_DEFAULTS}
    return unet, DDPMScheduler.from_config(plain)


def profile_run(
    model_path: str | os.PathLike,
    *,
    data_args: Any = None,
    training_data: Any = None,
    **kwargs: Any,
) -> tuple[GradientProfile, dict[str, Any]]:
    """Gradient profile of a run folder, a pipeline folder or a Hub id, on its training data.

    Args:
        model_path (`str` or `os.PathLike`): A run folder (``training_config.json`` names its data), a saved
            pipeline folder, or a Hub id of one.
        data_args ([`~diffusers_memctl.args.DataArguments`], *optional*): The training data; required when the
            folder is not a run of diffusers-memctl. Fields set here override the run's own.
        training_data ([`~diffusers_memctl.data.TrainingData`], *optional*): Preloaded data (wins over both).
        **kwargs: Passed to :func:`estimate_gradient_profile`; ``batch_size=None`` (or absent) takes the run's
            ``train_batch_size`` (32 for a plain pipeline), capped at the number of samples.

    Returns:
        `tuple`: The [`GradientProfile`] and a description of the source (path, data settings, modality).
    """
    from .evaluation import _resolve_run_dir

    path = _resolve_run_dir(model_path)
    if training_data is None:
        training_data, data_settings = _run_training_data(path, data_args)
    else:
        data_settings = {}
    model, scheduler = _load_model_and_scheduler(path, training_data.modality)
    if kwargs.get("batch_size") is None:
        kwargs["batch_size"] = min(_run_batch_size(path), training_data.samples.shape[0])
    profile = estimate_gradient_profile(model, scheduler, training_data.samples, **kwargs)
    source = {"model": str(model_path), "modality": training_data.modality, "data": data_settings}
    profile.settings["source"] = source
    return profile, source


def _run_batch_size(path: Path, default: int = 32) -> int:
    """The run's ``train_batch_size`` (the batch the gradients of training were taken over), else `default`."""
    return int(read_run_args(path).get("train_batch_size", default))


def _run_training_data(path: Path, data_args: Any) -> tuple[Any, dict[str, Any]]:
    """The run's own data settings (from ``training_config.json``), overridden by non-default `data_args` fields."""
    import dataclasses

    from .args import DataArguments
    from .data import load_training_data

    defaults = DataArguments()
    if RunFolder(path).has_training_config:
        run_args = read_run_args(path)
        values = {f.name: run_args.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(DataArguments)}
        if data_args is not None:
            values.update(
                {
                    f.name: getattr(data_args, f.name)
                    for f in dataclasses.fields(DataArguments)
                    if getattr(data_args, f.name) != getattr(defaults, f.name)
                }
            )
        resolved = DataArguments(**values)
    elif data_args is not None:
        resolved = data_args
        unet_config = path / UNET_DIR / MODEL_CONFIG_NAME
        if resolved.resolution is None and unet_config.is_file():
            # A plain pipeline: its images must have the size the UNet was trained at.
            size = json.loads(unet_config.read_text()).get("sample_size")
            if isinstance(size, int):
                resolved = dataclasses.replace(resolved, resolution=size)
    else:
        raise ValueError(
            f"{path} is not a diffusers-memctl run (no training_config.json): name its training data with "
            "--dataset_name / --train_data_dir / --data_dir"
        )
    return load_training_data(resolved), dataclasses.asdict(resolved)


def _dumps_compact(content: Mapping[str, Any]) -> str:
    """Indented JSON with every innermost list of numbers on one line (a Gram matrix row per line)."""
    text = json.dumps(content, indent=1)
    return re.sub(r"\[\s+([-+0-9.eEnaNInfity,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)


def _write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    """Write through a temporary file and a rename, so an interrupted run never leaves half a profile."""
    write_text_atomic(path, _dumps_compact(content) + "\n")


def write_gradient_profile(
    profile: GradientProfile,
    output_dir: str | os.PathLike,
    *,
    sampler_specs: Sequence[str] = DEFAULT_SAMPLER_SPECS,
    make_plots: bool = True,
) -> dict[str, Any]:
    """Write ``gradient_profile.json`` (and ``plots/gradient_profile.png``, ``plots/gradient_contribution.png``).

    Args:
        profile ([`GradientProfile`]): The measured profile.
        output_dir (`str` or `os.PathLike`): Destination folder (created if needed).
        sampler_specs (`Sequence[str]`): Samplers whose contribution shares are computed (see
            :func:`resolve_sampler_spec`).
        make_plots (`bool`, defaults to `True`): Also write the two figures (needs matplotlib).

    Returns:
        `dict`: The content written to ``gradient_profile.json``.
    """
    output_dir = Path(output_dir)
    content = profile.to_dict(sampler_specs)
    _write_json_atomic(output_dir / GRADIENT_PROFILE_NAME, content)
    if make_plots:
        from .plotting import plot_gradient_contribution, plot_gradient_profile, save_figure

        save_figure(plot_gradient_profile(content), output_dir / PLOTS_DIR / GRADIENT_PROFILE_PLOT)
        if content["contribution"]:
            save_figure(plot_gradient_contribution(content), output_dir / PLOTS_DIR / GRADIENT_CONTRIBUTION_PLOT)
    return content


# --------------------------------------------------------------------------------------------------------------
# Many runs at once (a sweep: the pretrained model and every cell)
# --------------------------------------------------------------------------------------------------------------

SWEEP_SUMMARY_NAME = GRADIENT_PROFILES_NAME


def find_run_folders(root: str | os.PathLike, max_depth: int = 2) -> list[Path]:
    """Run folders (``model_index.json`` + ``unet/``) at most `max_depth` levels below `root`, sorted by path.

    A sweep folder holds its pretrained run in ``pretrained/`` and one run per cell in ``cells/<name>/``.
    """
    root = Path(root)
    found = []
    for depth in range(1, max_depth + 1):
        for index in sorted(root.glob("/".join(["*"] * depth) + f"/{MODEL_INDEX_NAME}")):
            if (index.parent / UNET_DIR).is_dir():
                found.append(index.parent)
    return sorted(found)


def _summary_row(run: Path, root: Path, content: Mapping[str, Any], spec: str) -> dict[str, Any]:
    """One CSV row: the run's sampler settings, and per quarter of [0, T) ||E g||, coherence and the share."""
    args = read_run_args(run)
    row: dict[str, Any] = {
        "run": str(run.relative_to(root)),
        "timestep_sampling": args.get("timestep_sampling"),
        "ci_lower": args.get("ci_lower"),
        "ci_upper": args.get("ci_upper"),
    }
    profile = GradientProfile.from_dict(content)
    for key in ("mean_grad_norm", "coherence"):
        for window in profile.window_statistic(key):
            suffix = f"{window['t_start']}_{window['t_end']}"
            row[f"{key}_{suffix}"] = window["value"]
            row[f"{key}_{suffix}_se"] = window["se"]
    for window in content["contribution"][spec]["window_shares"]:
        suffix = f"{window['t_start']}_{window['t_end']}"
        row[f"share_{suffix}"] = window["share"]
        row[f"share_{suffix}_se"] = window["share_se"]
    return row


def profile_run_folders(
    root: str | os.PathLike,
    *,
    sampler_specs: Sequence[str] = DEFAULT_SAMPLER_SPECS,
    make_plots: bool = True,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Profile every run folder under `root` (e.g. a sweep: pretrained + cells) and compare them in one table.

    Each run gets its own ``gradient_profile.json`` (and figures); `root` gets ``gradient_profiles.csv`` with one row
    per run: its sampler settings and, per quarter of [0, T), ``||E g||``, coherence and the contribution share under
    the first sampler spec (each with its jackknife error). Comparing the pretrained row with a cell's row shows what
    fine-tuning with that interval did to where the model learns.

    Args:
        root (`str` or `os.PathLike`): The folder to search (see :func:`find_run_folders`).
        sampler_specs (`Sequence[str]`): Samplers of every profile; the first one is summarised in the table.
        make_plots (`bool`, defaults to `True`): Write each run's figures.
        **kwargs: Passed to :func:`profile_run` (and on to :func:`estimate_gradient_profile`).

    Returns:
        `list[dict]`: The rows of ``gradient_profiles.csv``.
    """
    root = Path(root)
    runs = find_run_folders(root)
    if not runs:
        raise FileNotFoundError(f"no run folders (model_index.json + unet/) in {root} or its subfolders")
    rows = []
    for run in runs:
        profile, _ = profile_run(run, **kwargs)
        content = write_gradient_profile(profile, run, sampler_specs=sampler_specs, make_plots=make_plots)
        rows.append(_summary_row(run, root, content, sampler_specs[0]))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    write_csv_atomic(root / SWEEP_SUMMARY_NAME, rows, columns)
    return rows

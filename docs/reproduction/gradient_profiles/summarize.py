"""Tables of docs/REPRODUCTION.md "Where learning happens: gradient profiles", from the stored profiles.

    python docs/reproduction/gradient_profiles/summarize.py > docs/reproduction/gradient_profiles/SUMMARY.md

Intervals are estimate +- 1.96 jackknife standard errors over the 32 batch indices of one profile (one model per
dataset: they say how precisely this model was measured, not how much another training run would differ).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from diffusers_memctl.diagnostics import GradientProfile

HERE = Path(__file__).resolve().parent
MODELS = {
    "digits": "digits 16x16, 1,797 images",
    "ecg_normal": "ECG5000 normal beats",
    "digits32": "32 digits (memorization regime)",
    "digits32_ft_uniform": "32 digits, fine-tuned 1000 more steps with uniform sampling",
    "digits32_ft_ci750": "32 digits, fine-tuned 1000 more steps with CI [750, 1000]",
}
Z = 1.959964


def _interval(value: float, se: float, digits: int = 3) -> str:
    return f"{value:.{digits}f} [{value - Z * se:.{digits}f}, {value + Z * se:.{digits}f}]"


def _jackknife_se(replicates: np.ndarray) -> float:
    n = len(replicates)
    return float(np.sqrt((n - 1) / n * ((replicates - replicates.mean()) ** 2).sum()))


def _trend(profile: GradientProfile, spec: str) -> str:
    """Spearman rho between bin midpoint and contribution share (negative: falls with t), with its interval."""
    shares, replicates = profile.share_replicates(spec)
    t = np.asarray(profile.timesteps)
    rho = spearmanr(t, shares).statistic
    return _interval(rho, _jackknife_se(np.array([spearmanr(t, r).statistic for r in replicates])), 2)


def summarize(name: str, content: dict) -> list[str]:
    profile = GradientProfile.from_dict(content)
    s = content["settings"]
    lines = [
        f"### {MODELS.get(name, name)} (`{name}.json`)",
        "",
        f"{s['num_parameters']:,} parameters, {s['num_samples']} training samples, {s['num_batches']} batches of "
        f"{s['batch_size']} per bin, {s['timestep_mode']} timesteps, {s['seconds']:.0f} s on {s['device']}.",
        "",
        "| window | E\\|\\|g\\|\\| | \\|\\|E g\\|\\| | coherence | per-sample alignment |",
        "| --- | --- | --- | --- | --- |",
    ]
    norm = profile.window_statistic("mean_batch_grad_norm")
    mean = profile.window_statistic("mean_grad_norm")
    coherence = profile.window_statistic("coherence")
    bins = content["bins"]
    for i, row in enumerate(norm):
        psa = [b.get("per_sample_alignment") for b in bins if row["t_start"] <= b["t_start"] < row["t_end"]]
        psa_text = f"{np.mean(psa):.3f}" if psa and psa[0] is not None else "-"
        lines.append(
            f"| [{row['t_start']}, {row['t_end']}) | {_interval(row['value'], row['se'], 4)} | "
            f"{_interval(mean[i]['value'], mean[i]['se'], 4)} | {_interval(coherence[i]['value'], coherence[i]['se'])} "
            f"| {psa_text} |"
        )
    best = max(bins, key=lambda b: b["coherence"])
    lines += ["", f"Most coherent bin: [{best['t_start']}, {best['t_end']}) at {best['coherence']:.3f}.", ""]
    lines += ["| sampler | [0, 250) | [250, 500) | [500, 750) | [750, 1000) | Spearman rho(t, share) |"]
    lines += ["| --- | --- | --- | --- | --- | --- |"]
    for spec, entry in content["contribution"].items():
        cells = " | ".join(_interval(w["share"], w["share_se"]) for w in entry["window_shares"])
        lines.append(f"| {spec} | {cells} | {_trend(profile, spec)} |")
    return [*lines, ""]


def compare(name: str, reference: str, contents: dict) -> list[str]:
    """Per-quarter ratio of ||E g|| and E||g|| of two models (delta-method interval, errors treated as independent:
    the shared batch seeds correlate them positively, so the interval is conservative)."""
    first, second = (GradientProfile.from_dict(contents[n]) for n in (name, reference))
    lines = [
        f"### `{name}` against `{reference}` (ratio of the two models' values per window)",
        "",
        "| window | \\|\\|E g\\|\\| ratio | E\\|\\|g\\|\\| ratio | coherence difference |",
        "| --- | --- | --- | --- |",
    ]
    stats = {}
    for key in ("mean_grad_norm", "mean_batch_grad_norm", "coherence"):
        stats[key] = (first.window_statistic(key), second.window_statistic(key))
    for i, window in enumerate(stats["coherence"][0]):
        cells = []
        for key in ("mean_grad_norm", "mean_batch_grad_norm"):
            a, b = stats[key][0][i], stats[key][1][i]
            ratio = a["value"] / b["value"]
            se = ratio * np.hypot(a["se"] / a["value"], b["se"] / b["value"])
            cells.append(_interval(ratio, se, 2))
        a, b = stats["coherence"][0][i], stats["coherence"][1][i]
        cells.append(_interval(a["value"] - b["value"], float(np.hypot(a["se"], b["se"]))))
        lines.append(f"| [{window['t_start']}, {window['t_end']}) | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main() -> None:
    print("<!-- generated by docs/reproduction/gradient_profiles/summarize.py from the stored profiles -->")
    print("Values: estimate [95% interval: +-1.96 jackknife SE over batch indices]. Shares sum to 1 per row.\n")
    contents = {
        name: json.loads((HERE / f"{name}.json").read_text()) for name in MODELS if (HERE / f"{name}.json").is_file()
    }
    for name, content in contents.items():
        print("\n".join(summarize(name, content)))
    # The memorization-regime model against the full-data one (same network, 32 images instead of 1,797), and what
    # 1000 steps of fine-tuning on [750, 1000] do against 1000 steps of uniform fine-tuning.
    for name, reference in (("digits32", "digits"), ("digits32_ft_ci750", "digits32_ft_uniform")):
        if name in contents and reference in contents:
            print("\n".join(compare(name, reference, contents)))


if __name__ == "__main__":
    main()

"""``memctl-diagnose`` / ``training_scripts/diagnose_memctl.py``: where a model learns, per timestep.

Measures the gradient norm, the norm of the expected gradient and their ratio (coherence) in every timestep bin, and
the share of the training gradient each bin supplies under the samplers asked for; writes ``gradient_profile.json``
and ``plots/gradient_profile.png``, ``plots/gradient_contribution.png``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..args import DataArguments, DiagnosticsArguments, parse_arguments
from ..run_folder import MODEL_INDEX_NAME


def _positional(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        help="Run folder, saved pipeline folder, Hub id of one, or a folder of runs (a sweep: every run in it is "
        "profiled and compared in gradient_profiles.csv).",
    )
    parser.add_argument(
        "--output_dir", default=None, help="Where to write (default: the run folder itself when it is local)."
    )
    parser.add_argument("--no_plots", action="store_true", help="Skip the figures.")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available).")


def _specs(text: str) -> list[str]:
    specs = [spec.strip() for spec in text.split(",") if spec.strip()]
    if not specs:
        raise ValueError(f"--samplers {text!r} names no sampler; e.g. --samplers uniform,ci:750-1000")
    return specs


def main(argv: list[str] | None = None) -> dict:
    """Profile a model and write ``gradient_profile.json`` (and figures); returns the file's content."""
    import torch
    from diffusers import DDPMScheduler

    from ..diagnostics import (
        find_run_folders,
        profile_run,
        profile_run_folders,
        resolve_sampler_spec,
        write_gradient_profile,
    )

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (data_args, d), rest = parse_arguments(
        [DataArguments, DiagnosticsArguments], argv, description=__doc__, extra=_positional
    )
    specs = _specs(d.samplers)
    for spec in specs:  # fail on a bad spec before measuring anything
        resolve_sampler_spec(spec, DDPMScheduler().alphas_cumprod)
    local = Path(rest.model).expanduser()
    device = rest.device or ("cuda" if torch.cuda.is_available() else "cpu")
    measure = {
        "data_args": data_args,
        "num_bins": d.num_bins,
        "num_batches": d.num_batches,
        "batch_size": d.diagnose_batch_size,
        "seed": d.diagnose_seed,
        "timestep_mode": d.timestep_mode,
        "per_sample_batches": d.per_sample_batches,
        "device": device,
    }
    if local.is_dir() and not (local / MODEL_INDEX_NAME).is_file() and find_run_folders(local):
        if rest.output_dir is not None:
            raise ValueError(
                f"--output_dir cannot be used with a folder of runs ({local}): each run gets its own profile"
            )
        rows = profile_run_folders(local, sampler_specs=specs, make_plots=not rest.no_plots, **measure)
        last = [key for key in rows[0] if key.startswith("share_") and not key.endswith("_se")][-1]
        for row in rows:
            print(f"{row['run']:40s} {last} under {specs[0]}: {row[last]:.3f} ± {row[last + '_se']:.3f}")
        return {"runs": rows}
    if rest.output_dir is None and not local.is_dir():
        raise ValueError(f"--output_dir is required when the model ({rest.model}) is not a local folder")
    output_dir = Path(rest.output_dir) if rest.output_dir else local
    profile, _ = profile_run(rest.model, **measure)
    content = write_gradient_profile(profile, output_dir, sampler_specs=specs, make_plots=not rest.no_plots)
    _print_summary(content)
    return content


def _print_summary(content: dict) -> None:
    print(f"{'t':>5s} {'E||g||':>10s} {'||E g||':>10s} {'coherence':>14s}")
    for row in content["bins"]:
        print(
            f"{row['timestep']:5d} {row['mean_batch_grad_norm']:10.4g} {row['mean_grad_norm']:10.4g} "
            f"{row['coherence']:7.3f}±{row['coherence_se']:.3f}"
        )
    for spec, entry in content["contribution"].items():
        windows = "  ".join(
            f"[{w['t_start']},{w['t_end']}) {w['share']:.3f}±{w['share_se']:.3f}" for w in entry["window_shares"]
        )
        print(f"share under {spec:18s} {windows}")
    print(f"measured in {content['settings']['seconds']:.1f} s on {content['settings']['device']}")


def cli() -> None:
    """Console entry point: :func:`main` with one-line errors (see `diffusers_memctl.cli.run_cli`)."""
    from . import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()

"""Memorization-regime studies: training-set size x independent pretrainings x methods, at matched compute.

Whether a diffusion model copies its training data depends on how many samples it has to fit (Gu et al. 2023, "On
Memorization in Diffusion Models", arXiv 2310.02664: the *effective model memorization*). A study therefore crosses

- training-set **sizes** (seeded random subsets, the indices recorded with every run),
- independent **pretrainings** (one uniform pretraining per size and seed: the unit of replication; each also draws
  its own subset, so a replicate varies the data as well as the initialisation), and
- **methods** (:mod:`diffusers_memctl.methods`: uniform, CI-normal intervals, the peers), each fine-tuned from the
  same pretrained model with the same steps, learning rate, EMA and evaluation.

Every (size, pretraining) pair is an ordinary sweep folder ``<study_dir>/n<size>-p<seed>/`` (``pretrained/`` plus
one run folder per method and fine-tune seed), run by :func:`~diffusers_memctl.sweep.run_sweep`, so resuming,
skipping finished runs and pinning settings work as for any sweep. Shards split the (size, pretraining) groups.
:func:`analyze_study_dir` collects every group into ``study_results.csv`` and writes the replicate-level analysis
(:mod:`diffusers_memctl.replicates`), the figures and ``REPORT.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

from .args import SweepArguments, TrainingOptions
from .distributed import process_state
from .frontier import add_matched_quality_to_study
from .run_folder import STUDY_RESULTS_NAME, STUDY_SETTINGS_NAME, read_json, run_lock, write_json_atomic
from .sweep import SWEEP_CONFIG_NAME, collect_results, run_sweep, shard_cells

__all__ = [
    "StudyGroup",
    "analyze_study_dir",
    "collect_study_results",
    "export_study_results",
    "is_study",
    "is_study_dir",
    "run_study",
    "study_groups",
    "study_settings",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StudyGroup:
    """One (training-set size, pretraining seed) pair of a study: one pretrained model and its fine-tunes."""

    train_subset_size: int
    pretrain_seed: int

    @property
    def name(self) -> str:
        return f"n{self.train_subset_size:05d}-p{self.pretrain_seed}"


def is_study(sweep: SweepArguments) -> bool:
    """Whether sweep settings ask for a study (training-set sizes or several pretrainings)."""
    return bool(getattr(sweep, "train_subset_sizes", None) or getattr(sweep, "pretrain_seeds", None))


def _int_list(text: str | None, flag: str, default: list[int]) -> list[int]:
    if text is None:
        return default
    try:
        values = [int(item) for item in str(text).split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{flag} needs distinct integers, got {text!r}")
    return values


def study_groups(sweep: SweepArguments) -> list[StudyGroup]:
    """Every (size, pretraining seed) group, sizes outermost (the order the shards take them in)."""
    sizes = _int_list(sweep.train_subset_sizes, "--train_subset_sizes", [])
    seeds = _int_list(sweep.pretrain_seeds, "--pretrain_seeds", [0])
    if any(size < 2 for size in sizes):
        raise ValueError(f"--train_subset_sizes must all be >= 2, got {sweep.train_subset_sizes!r}")
    if not sizes:
        raise ValueError("a study needs --train_subset_sizes (e.g. 16,64,256)")
    return [StudyGroup(size, seed) for size in sizes for seed in seeds]


def _check_study_settings(sweep: SweepArguments) -> None:
    if sweep.pretrained_run:
        raise ValueError("a study pretrains one model per size and seed itself: drop --pretrained_run")
    if not (sweep.pretrain_epochs or sweep.pretrain_max_train_steps):
        raise ValueError("a study pretrains itself: pass --pretrain_max_train_steps (or --pretrain_epochs)")
    if not sweep.methods:
        raise ValueError("a study compares methods: pass --methods (e.g. all, or uniform,ci_late)")


def group_settings(
    options: TrainingOptions, sweep: SweepArguments, group: StudyGroup
) -> tuple[TrainingOptions, SweepArguments]:
    """The sweep of one group: its subset (size, seed = pretraining seed), its pretraining seed, its folder."""
    group_options = copy.deepcopy(options)
    group_options.data.train_subset_size = group.train_subset_size
    group_options.data.train_subset_seed = group.pretrain_seed
    # The pretraining takes the shared seed; each fine-tune cell sets its own from --seeds.
    group_options.training.seed = group.pretrain_seed
    group_sweep = dataclasses.replace(
        sweep,
        sweep_dir=str(Path(sweep.sweep_dir) / group.name),
        train_subset_sizes=None,
        pretrain_seeds=None,
        num_shards=1,
        shard_index=0,
    )
    return group_options, group_sweep


def run_study(options: TrainingOptions, sweep: SweepArguments) -> list[dict[str, Any]]:
    """Run this shard's groups (pretraining + every method), then analyse every finished run of the study.

    Args:
        options ([`TrainingOptions`]): Settings shared by every run (fine-tuning length, learning rate, evaluation).
        sweep ([`SweepArguments`]): ``train_subset_sizes``, ``pretrain_seeds``, ``methods``, ``seeds`` (fine-tune
            seeds), the pretraining length and sharding (over groups).

    Returns:
        `list[dict]`: Result rows of every evaluated run of the study.
    """
    _check_study_settings(sweep)
    groups = study_groups(sweep)
    if sweep.analyze_only:
        return analyze_study_dir(sweep.sweep_dir)["rows"]
    mine = shard_cells(groups, sweep.num_shards, sweep.shard_index)
    for index, group in enumerate(mine):
        logger.info("[group %d/%d] %s", index + 1, len(mine), group.name)
        group_options, group_sweep = group_settings(options, sweep, group)
        run_sweep(group_options, group_sweep, analyze=False)
    if process_state().is_main_process:
        # Shards finishing together take turns, as a sweep's analysis does: the figures folder is rewritten whole.
        with run_lock(sweep.sweep_dir, wait=True, flag="--sweep_dir"):
            return analyze_study_dir(sweep.sweep_dir)["rows"]
    return []


def collect_study_results(study_dir: str | Path) -> list[dict[str, Any]]:
    """Result rows of every evaluated run in every group folder, with the group's reference values."""
    rows = []
    for group_dir in sorted(p for p in Path(study_dir).glob("n*-p*") if p.is_dir()):
        for row in collect_results(group_dir):
            row["group"] = group_dir.name
            rows.append(row)
    return rows


def analyze_study_dir(study_dir: str | Path, *, make_plots: bool = True) -> dict[str, Any]:
    """Collect a study folder and write ``study_results.csv``, ``analysis.json``, ``figures/`` and ``REPORT.md``."""
    from .study_report import write_study_analysis

    rows = collect_study_results(study_dir)
    if not rows:
        raise ValueError(f"no evaluated run in the groups of {study_dir}; run the study first")
    result = write_study_analysis(Path(study_dir), rows, make_plots=make_plots)
    # Runs evaluated along training (--eval_every_steps): the matched-quality answer opens REPORT.md.
    add_matched_quality_to_study(study_dir, make_plots=make_plots)
    return result


def is_study_dir(folder: str | Path) -> bool:
    """Whether `folder` holds a study: group folders ``n<size>-p<seed>/`` or an exported ``study_results.csv``."""
    folder = Path(folder)
    return (folder / STUDY_RESULTS_NAME).is_file() or any(p.is_dir() for p in folder.glob("n*-p*"))


def export_study_results(study_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """Write a study's rows (run folders named relative to the study) and its report into `dest`.

    The exported folder is self-contained: ``report_from_study_csv(dest)`` rebuilds every table and figure. Loss
    histories are not copied (the study compares methods on evaluation metrics; ``final_loss`` is in the rows).
    """
    from .study_report import write_study_analysis

    study_dir = Path(study_dir).resolve()
    rows = collect_study_results(study_dir)
    if not rows:
        raise ValueError(f"no evaluated run in the groups of {study_dir}; run the study first")
    for row in rows:
        row["run_dir"] = Path(row["run_dir"]).resolve().relative_to(study_dir).as_posix()
    Path(dest).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(dest) / STUDY_SETTINGS_NAME, study_settings(study_dir))
    return write_study_analysis(Path(dest), rows)


def study_settings(study_dir: str | Path) -> dict[str, Any]:
    """The settings every group of a study shares (from the groups' ``sweep_config.json``), and the groups.

    What an exported study needs besides its rows to be rerun: the per-group subset size and seed are listed under
    ``groups``; every other setting must agree between the groups (a disagreement is listed under ``differences``).
    """
    shared: dict[str, Any] | None = None
    differences: set[str] = set()
    groups = []
    for group_dir in sorted(p for p in Path(study_dir).glob("n*-p*") if (p / SWEEP_CONFIG_NAME).is_file()):
        config = read_json(group_dir / SWEEP_CONFIG_NAME)
        training = config.get("training", {})
        groups.append(
            {
                "group": group_dir.name,
                "train_subset_size": training.pop("train_subset_size", None),
                "train_subset_seed": training.pop("train_subset_seed", None),
            }  # fmt: skip
        )
        if shared is None:
            shared = config
            continue
        for part in ("training", "sweep"):
            for key in set(shared.get(part, {})) | set(config.get(part, {})):
                if shared.get(part, {}).get(key) != config.get(part, {}).get(key):
                    differences.add(f"{part}.{key}")
    return {"shared": shared or {}, "groups": groups, "differences": sorted(differences)}

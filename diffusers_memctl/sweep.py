"""CI-grid sweeps: the paper's experiment as one resumable, shardable command.

The paper (arXiv 2601.21348, Sec. 5) fine-tunes one uniformly pretrained model for every interval of a triangular
grid (``t_lower < t_upper`` on ``{0, 100, ..., 1000}``: 55 cells) and reads the effect of the interval's mean and
width. Here every cell (and seed) is one ordinary training job (:func:`~diffusers_memctl.runner.run_training_job`,
the same entry point as ``train_memctl.py``), writing its own run folder under ``<sweep_dir>/cells/``:

- a cell whose run folder holds a valid ``metrics.json`` is finished and skipped;
- a cell with checkpoints but no report resumes from its latest checkpoint;
- ``num_shards`` / ``shard_index`` (default: ``SLURM_ARRAY_TASK_COUNT`` / ``SLURM_ARRAY_TASK_ID``) split the cells
  round-robin over machines; each shard can itself run under ``accelerate launch`` on several GPUs;
- every cell is locked while it runs (``run_folder.try_run_lock``): several sweep processes on one ``sweep_dir``
  (launched by hand, or machines on a shared filesystem) skip the cells another process holds and take the next,
  so they split the sweep without ``num_shards``; a lock of a killed process is released by the OS;
- ``sweep_config.json`` pins the shared settings: a second invocation with different ones is refused, so the cells
  of one sweep folder are always comparable.

:func:`analyze_sweep_dir` collects the finished cells into ``sweep_results.csv``, ``analysis.json``, figures and
``REPORT.md``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .args import SweepArguments, TrainingOptions, env_int
from .distributed import process_state
from .methods import STUDY_METHODS, apply_method, resolve_method
from .run_folder import (
    ANALYSIS_NAME,
    CELLS_DIR,
    CHECKPOINTS_DIR,
    FIGURES_DIR,
    LOSS_HISTORIES_DIR,
    METRICS_NAME,
    MODEL_INDEX_NAME,
    PRETRAINED_DIR,
    SWEEP_CONFIG_NAME,
    SWEEP_RESULTS_NAME,
    UNET_DIR,
    RunFolder,
    RunFolderMismatchError,
    check_run_ids,
    latest_checkpoint,
    publishable_args,
    publishable_path,
    read_json,
    resolve_published_args,
    run_lock,
    try_run_lock,
    write_csv_atomic,
    write_json_atomic,
)

__all__ = [
    "SweepCell",
    "analyze_sweep_dir",
    "build_cells",
    "export_sweep_results",
    "collect_results",
    "is_run_evaluated",
    "parse_cells",
    "read_results_csv",
    "report_from_results",
    "run_sweep",
    "shard_cells",
    "triangular_grid",
    "write_sweep_analysis",
]

logger = logging.getLogger(__name__)

# Settings that differ between the runs of one sweep by design; every other setting must match.
_PER_CELL_KEYS = {
    "timestep_sampling",
    "ci_lower",
    "ci_upper",
    "seed",
    "output_dir",
    "pretrained_model_name_or_path",
    "resume_from_checkpoint",
    "trust_checkpoint_pickles",
    "overwrite_output_dir",
    "push_to_hub",
    "hub_model_id",
    "dry_run",
    "method_name",
}


# Settings added after sweeps were first pinned, with the value that reproduces the old behaviour: a sweep folder
# pinned before them still resumes when they keep that value.
_LATER_SETTINGS = {
    "eval_every_steps": 0,
    "eval_history_num_samples": None,
    "max_memorized_fraction": None,
    "pretrain_eval_every_steps": None,
}


@dataclass(frozen=True)
class SweepCell:
    """One run of a sweep: an interval (or the uniform baseline), or a named method, and a seed."""

    timestep_sampling: str
    ci_lower: int | None
    ci_upper: int | None
    seed: int
    method: str | None = None

    @property
    def cell(self) -> str:
        """Self-explaining cell name, e.g. ``ci-0600-1000``, ``uniform`` or a method name such as ``min_snr``."""
        if self.method is not None:
            return self.method
        if self.timestep_sampling == "uniform":
            return "uniform"
        return f"ci-{self.ci_lower:04d}-{self.ci_upper:04d}"

    @property
    def run_name(self) -> str:
        return f"{self.cell}-seed{self.seed}"


def triangular_grid(grid_min: int, grid_max: int, grid_step: int) -> list[tuple[int, int]]:
    """All intervals ``lo < hi`` with both ends on ``{grid_min, grid_min + step, ..., grid_max}``.

    ``triangular_grid(0, 1000, 100)`` gives the paper's 55 cells.
    """
    if grid_step <= 0:
        raise ValueError(f"grid_step must be > 0, got {grid_step}")
    if grid_min < 0 or grid_max <= grid_min:
        raise ValueError(f"need 0 <= grid_min < grid_max, got grid_min={grid_min}, grid_max={grid_max}")
    points = list(range(grid_min, grid_max + 1, grid_step))
    cells = [(lo, hi) for i, lo in enumerate(points) for hi in points[i + 1 :]]
    if not cells:
        raise ValueError(f"the grid {grid_min}..{grid_max} step {grid_step} has no interval")
    return cells


def parse_cells(text: str) -> list[tuple[int, int]]:
    """Parse ``"lo:hi,lo:hi"`` into intervals."""
    cells = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) != 2:
            raise ValueError(f"cell {item!r} must look like 'lo:hi' (e.g. 600:1000)")
        try:
            cells.append((int(parts[0]), int(parts[1])))
        except ValueError:
            raise ValueError(f"cell {item!r} must hold two integers 'lo:hi'") from None
    if not cells:
        raise ValueError(f"no cells in {text!r}; pass e.g. --cells 0:300,600:1000")
    return cells


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    return seeds


def build_cells(sweep: SweepArguments, num_train_timesteps: int) -> list[SweepCell]:
    """Every (interval, seed) run of the sweep, validated against ``[0, T]``; with ``--methods``, every (method, seed)."""
    if getattr(sweep, "methods", None):
        return _method_cells(sweep, num_train_timesteps)
    grid_max = sweep.grid_max if sweep.grid_max is not None else num_train_timesteps
    # `--cells ''` is a mistake to report, not a request for the full grid.
    if sweep.cells is not None:
        intervals = parse_cells(sweep.cells)
    else:
        intervals = triangular_grid(sweep.grid_min, grid_max, sweep.grid_step)
    for lo, hi in intervals:
        if not 0 <= lo < hi <= num_train_timesteps:
            raise ValueError(f"invalid cell {lo}:{hi}: need 0 <= t_lower < t_upper <= {num_train_timesteps}")
    if len(set(intervals)) != len(intervals):
        raise ValueError(f"duplicate cells in {intervals}")
    seeds = _parse_seeds(sweep.seeds)
    cells = [SweepCell("ci_normal", lo, hi, seed) for lo, hi in intervals for seed in seeds]
    if sweep.include_uniform:
        cells += [SweepCell("uniform", None, None, seed) for seed in seeds]
    return cells


def _method_cells(sweep: SweepArguments, num_train_timesteps: int) -> list[SweepCell]:
    from .methods import parse_methods

    if sweep.cells is not None:
        raise ValueError("--methods and --cells both choose the runs of a sweep: pass one of them")
    cells = []
    for method in parse_methods(sweep.methods):
        interval = method.ci_interval
        if interval is not None and not 0 <= interval[0] < interval[1] <= num_train_timesteps:
            raise ValueError(f"--methods: {method.name} needs 0 <= t_lower < t_upper <= {num_train_timesteps}")
        lo, hi = (None, None) if interval is None else (int(interval[0]), int(interval[1]))
        sampling = method.settings.get("timestep_sampling", "uniform")
        cells += [SweepCell(sampling, lo, hi, seed, method=method.name) for seed in _parse_seeds(sweep.seeds)]
    return cells


def shard_cells(
    cells: list[SweepCell], num_shards: int | None = None, shard_index: int | None = None
) -> list[SweepCell]:
    """Round-robin share of this shard (defaults from SLURM array variables, else the whole list).

    SLURM numbers array tasks from ``--array``'s first index (``--array=1-16`` gives IDs 1..16), so the shard is the
    task ID minus ``SLURM_ARRAY_TASK_MIN``.
    """
    num_shards = num_shards if num_shards is not None else (env_int("SLURM_ARRAY_TASK_COUNT") or 1)
    if shard_index is None:
        task_id = env_int("SLURM_ARRAY_TASK_ID")
        shard_index = 0 if task_id is None else task_id - (env_int("SLURM_ARRAY_TASK_MIN") or 0)
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"need num_shards >= 1 and 0 <= shard_index < num_shards, got {shard_index}/{num_shards}")
    return cells[shard_index::num_shards]


def _is_cell_finished(run_dir: Path) -> bool:
    """A sweep cell is finished when it is evaluated and its card (written last) is there."""
    return is_run_evaluated(run_dir) and RunFolder(run_dir).has_card


def is_run_evaluated(run_dir: str | Path) -> bool:
    """Whether a run folder holds a valid metric report of its own run (the sweep's "finished" test).

    The report must carry the run id of the folder's config and weights: a ``metrics.json`` left beside another
    run's config (an interrupted overwrite) does not make a cell finished.
    """
    folder = RunFolder(run_dir)
    if not folder.has_training_config:
        return False  # a report without its run's config belongs to a run whose overwrite was interrupted
    try:
        report = folder.read_metrics()
    except (OSError, ValueError):
        return False
    metrics = report.get("metrics")
    if not (isinstance(metrics, dict) and bool(metrics) and report.get("schema_version") is not None):
        return False
    try:
        check_run_ids(run_dir, (UNET_DIR, METRICS_NAME), action="count as finished")
    except RunFolderMismatchError as error:
        logger.warning("%s", error)
        return False
    return True


def _shared_settings(options: TrainingOptions, sweep: SweepArguments) -> dict[str, Any]:
    """What every cell shares, with local paths relative to the sweep folder (``sweep_config.json`` is published)."""
    sweep_dir = Path(sweep.sweep_dir)
    flat = publishable_args({k: v for k, v in options.to_dict().items() if k not in _PER_CELL_KEYS}, sweep_dir)
    shared = {
        k: v for k, v in vars(sweep).items() if k not in ("num_shards", "shard_index", "analyze_only", "sweep_dir")
    }
    if shared.get("pretrained_run"):
        shared["pretrained_run"] = publishable_path(shared["pretrained_run"], sweep_dir)
    return {"training": flat, "sweep": shared}


def _check_sweep_config(sweep_dir: Path, settings: dict[str, Any]) -> None:
    path = sweep_dir / SWEEP_CONFIG_NAME
    if path.is_file():
        stored = read_json(path)
        diffs = sorted(
            f"{group}.{key}: {stored.get(group, {}).get(key)!r} -> {value!r}"
            for group, values in settings.items()
            for key, value in values.items()
            if stored.get(group, {}).get(key, _LATER_SETTINGS.get(key)) != value
        )
        if diffs:
            raise ValueError(
                f"{sweep_dir} holds a sweep with other settings ({'; '.join(diffs)}); use another --sweep_dir or the "
                "same settings (finished cells are kept)"
            )
        return
    write_json_atomic(path, settings)


def _check_pretrained_run(path: Path) -> None:
    if not (path / MODEL_INDEX_NAME).is_file() or not RunFolder(path).has_training_config:
        raise FileNotFoundError(
            f"pretrained run {path} is not a finished diffusers-memctl run (model_index.json and "
            "training_config.json are missing); train it first or pass --pretrain_epochs"
        )


@contextlib.contextmanager
def _main_process_holds(state: Any, folder: Path, *, wait: bool):
    """Lock `folder` on the main process; yield whether it got it (the same answer on every process)."""
    with contextlib.ExitStack() as stack:
        held = None
        if state.is_main_process:
            if wait:
                with try_run_lock(folder) as free:
                    pass
                if not free:
                    logger.info("waiting for another process that writes %s", folder)
                stack.enter_context(run_lock(folder, wait=True))
                held = True
            else:
                held = stack.enter_context(try_run_lock(folder))
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            held = broadcast_object_list([held])[0]
        yield held


def _pretrain(options: TrainingOptions, sweep: SweepArguments, target: Path, state: Any) -> None:
    # Several sweep processes on one folder: one pretrains, the others wait for its result.
    with _main_process_holds(state, target, wait=True):
        _pretrain_locked(options, sweep, target)


def _pretrain_locked(options: TrainingOptions, sweep: SweepArguments, target: Path) -> None:
    from .runner import run_training_job
    from .training import TRAIN_COMPLETE_NAME

    if (target / TRAIN_COMPLETE_NAME).is_file():
        return
    pre = copy.deepcopy(options)
    pre.sampling = apply_method(pre.sampling, STUDY_METHODS["uniform"])
    pre.training.output_dir = str(target)
    pre.training.num_epochs = sweep.pretrain_epochs or pre.training.num_epochs
    pre.training.max_train_steps = getattr(sweep, "pretrain_max_train_steps", None)
    pre.training.learning_rate = sweep.pretrain_learning_rate or options.training.learning_rate
    if getattr(sweep, "pretrain_eval_every_steps", None) is not None:
        pre.evaluation.eval_every_steps = sweep.pretrain_eval_every_steps
    # The budget is for fine-tunes: a pretraining stopped early would change what every method starts from.
    pre.evaluation.max_memorized_fraction = None
    pre.training.resume_from_checkpoint = "latest" if (target / CHECKPOINTS_DIR).is_dir() else None
    # Without a checkpoint, whatever an earlier attempt left there is started over.
    pre.training.overwrite_output_dir = True
    pre.hub.push_to_hub = False
    length = (
        f"{pre.training.max_train_steps} steps" if pre.training.max_train_steps else f"{sweep.pretrain_epochs} epochs"
    )
    logger.info("pretraining with uniform sampling for %s into %s", length, target)
    run_training_job(pre)


def cell_options(options: TrainingOptions, cell: SweepCell, run_dir: Path, pretrained: Path) -> TrainingOptions:
    """The training options of one cell: the shared settings plus the cell's sampler, seed and folders."""
    cell_opts = copy.deepcopy(options)
    if cell.method is not None:
        method = resolve_method(cell.method)
        cell_opts.sampling = apply_method(cell_opts.sampling, method)
        cell_opts.training.learning_rate = options.training.learning_rate * method.learning_rate_scale
    else:
        cell_opts.sampling.timestep_sampling = cell.timestep_sampling
        cell_opts.sampling.ci_lower = cell.ci_lower
        cell_opts.sampling.ci_upper = cell.ci_upper
    cell_opts.training.seed = cell.seed
    cell_opts.training.output_dir = str(run_dir)
    cell_opts.model.pretrained_model_name_or_path = str(pretrained)
    resumable = bool(RunFolder(run_dir).list_checkpoints())
    cell_opts.training.resume_from_checkpoint = "latest" if resumable else None
    # A folder without a checkpoint was stopped before its first save: nothing to keep but a config.
    cell_opts.training.overwrite_output_dir = not resumable
    cell_opts.hub.push_to_hub = False
    return cell_opts


def run_sweep(options: TrainingOptions, sweep: SweepArguments, *, analyze: bool = True) -> list[dict[str, Any]]:
    """Run this shard's unfinished cells, then aggregate every finished cell of the sweep folder.

    Args:
        options ([`TrainingOptions`]): Settings shared by all cells (the cell's sampler, seed and folders are set
            here; `num_epochs` / `max_train_steps` / `learning_rate` are those of the fine-tuning).
        sweep ([`SweepArguments`]): Grid, seeds, sharding and pretraining settings.

    Returns:
        `list[dict]`: The result rows of every finished cell (this shard's and others').
    """
    from .validation import validate_options

    sweep_dir = Path(sweep.sweep_dir)
    state = process_state()
    validate_options(options)
    cells = build_cells(sweep, options.model.num_train_timesteps)
    if sweep.analyze_only:
        return analyze_sweep_dir(sweep_dir)["rows"]
    mine = shard_cells(cells, sweep.num_shards, sweep.shard_index)
    pretrained = Path(sweep.pretrained_run) if sweep.pretrained_run else sweep_dir / PRETRAINED_DIR
    pretrain_here = bool(sweep.pretrain_epochs or getattr(sweep, "pretrain_max_train_steps", None)) and not (
        sweep.pretrained_run
    )
    if not pretrain_here:
        # Checked before sweep_config.json pins the settings, so a mistyped path does not lock the folder.
        _check_pretrained_run(pretrained)
    settings = _shared_settings(options, sweep)
    if state.is_main_process:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(sweep_dir, wait=True, flag="--sweep_dir"):
            _check_sweep_config(sweep_dir, settings)
    state.wait_for_everyone()

    if pretrain_here:
        _pretrain(options, sweep, pretrained, state)
        state.wait_for_everyone()
        _check_pretrained_run(pretrained)

    logger.info("%d cells in the sweep, %d in this shard", len(cells), len(mine))
    for index, cell in enumerate(mine):
        run_dir = sweep_dir / CELLS_DIR / cell.run_name
        if _is_cell_finished(run_dir):
            logger.info("[%d/%d] %s finished: skipped", index + 1, len(mine), cell.run_name)
            continue
        with _main_process_holds(state, run_dir, wait=False) as held:
            if not held:
                logger.info("[%d/%d] %s is run by another process: skipped", index + 1, len(mine), cell.run_name)
            elif _is_cell_finished(run_dir):  # finished by another process since the check above
                logger.info("[%d/%d] %s finished: skipped", index + 1, len(mine), cell.run_name)
            else:
                _run_cell(options, cell, run_dir, pretrained, state, f"[{index + 1}/{len(mine)}]")
        state.wait_for_everyone()
    if state.is_main_process and analyze:
        with run_lock(sweep_dir, wait=True, flag="--sweep_dir"):
            return analyze_sweep_dir(sweep_dir)["rows"]
    return []


def _run_cell(
    options: TrainingOptions, cell: SweepCell, run_dir: Path, pretrained: Path, state: Any, tag: str
) -> None:
    """Train (or resume) and evaluate one cell, or only evaluate it when its training finished (cell locked)."""
    from .runner import evaluate_options, run_training_job

    cell_opts = cell_options(options, cell, run_dir, pretrained)
    if RunFolder(run_dir).is_trained:
        # Training finished but the evaluation did not: only evaluate.
        logger.info("%s %s trained: evaluating", tag, cell.run_name)
        if state.is_main_process and cell_opts.evaluation.eval_num_samples > 0:
            if not is_run_evaluated(run_dir):  # a kill may have come between the report and the card
                evaluate_options(cell_opts, progress=False)
            # As run_training_job does after its evaluation: the card carries the new metrics.
            from .hub import write_model_card

            write_model_card(run_dir, repo_id=cell_opts.hub.hub_model_id)
    else:
        checkpoint = latest_checkpoint(run_dir) if cell_opts.training.resume_from_checkpoint else None
        action = f"resuming from {checkpoint.name}" if checkpoint else "training"
        logger.info("%s %s: %s", tag, cell.run_name, action)
        run_training_job(cell_opts, progress=False)


def _final_loss(run_dir: Path, tail_fraction: float = 0.1) -> float | None:
    """Mean loss over the last 10% of the logged steps (one step is too noisy to compare cells)."""
    if not RunFolder(run_dir).loss_history.is_file():
        return None
    losses = [record["loss"] for record in RunFolder(run_dir).read_loss_history()]  # a partial last line is dropped
    if not losses:
        return None
    tail = losses[-max(1, math.ceil(len(losses) * tail_fraction)) :]
    return float(sum(tail) / len(tail))


def collect_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per evaluated run under ``<sweep_dir>/cells``: cell, sampler, interval, seed, final loss, metrics."""
    rows = []
    for run_dir in sorted((Path(sweep_dir) / CELLS_DIR).glob("*")):
        if not is_run_evaluated(run_dir):
            continue
        config = RunFolder(run_dir).read_training_config()
        report = RunFolder(run_dir).read_metrics()
        rows.append(_result_row(run_dir, config, report))
    return rows


def _result_row(run_dir: Path, config: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    args = config["args"]
    lo, hi = args.get("ci_lower"), args.get("ci_upper")
    weighting = args.get("loss_weighting") or "none"
    # Only runs that *sample* from a CI interval enter the interval correlations; importance re-weighting with a CI
    # distribution draws uniform timesteps.
    is_ci = args["timestep_sampling"] == "ci_normal" and weighting == "none"
    method = args.get("method_name")
    if method is None:
        method = SweepCell(args["timestep_sampling"], lo, hi, args["seed"]).cell if is_ci else "uniform"
    subset = config.get("data", {}).get("subset") or {}
    return {
        "cell": method,
        "method": method,
        "timestep_sampling": args["timestep_sampling"],
        "loss_weighting": weighting,
        "ci_lower": lo if is_ci else None,
        "ci_upper": hi if is_ci else None,
        "ci_mean": (lo + hi) / 2 if is_ci else None,
        "ci_width": hi - lo if is_ci else None,
        "seed": args["seed"],
        "train_subset_size": subset.get("size", config.get("data", {}).get("num_samples")),
        "train_subset_seed": subset.get("seed"),
        # Published relative to the run folder.
        "pretrain_seed": _pretrain_seed(resolve_published_args(args, run_dir).get("pretrained_model_name_or_path")),
        "run_dir": str(run_dir),
        "final_loss": _final_loss(run_dir),
        **report["metrics"],
        # The training set's own leave-one-out values, to read the metrics against.
        **{f"ref_{key}": value for key, value in (report.get("reference") or {}).items()},
    }


def _pretrain_seed(source: str | None) -> int | None:
    """The seed of the pretraining run a fine-tune started from (the replicate it belongs to), when it is local."""
    if not source:
        return None
    try:
        return int(RunFolder(source).read_training_config()["args"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_results_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Result rows as CSV (columns in order of first appearance), written to a temporary name and renamed.

    ``run_dir`` is written relative to the CSV's folder (the file is published); :func:`read_results_csv` resolves it.
    """
    rows = [
        {**row, "run_dir": publishable_path(row["run_dir"], path.parent)} if row.get("run_dir") else row
        for row in rows
    ]
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    write_csv_atomic(path, rows, columns)


#: Metrics drawn as heatmaps and against the interval mean / width in a sweep report.
REPORT_METRICS = (
    "mean_l2",
    "nn_l2_mean",
    "memorized_fraction",
    "nn_ratio_mean",
    "pca_pc1_wasserstein_1",
    "pca_frechet_distance",
    "feature_replication_score",
    "feature_frechet_distance",
    "feature_precision",
    "feature_recall",
    "final_loss",
)


def analyze_sweep_dir(
    sweep_dir: str | Path, *, make_plots: bool = True, num_train_timesteps: int | None = None
) -> dict[str, Any]:
    """Aggregate a sweep folder: ``sweep_results.csv``, ``analysis.json``, ``figures/*.png`` and ``REPORT.md``.

    Args:
        sweep_dir (`str` or `Path`): The sweep folder.
        make_plots (`bool`, defaults to `True`): Write the figures (needs matplotlib).
        num_train_timesteps (`int`, *optional*): T for heatmaps and sampling plots (default: from the cells).

    Returns:
        `dict` with ``rows``, ``analysis`` and ``figures``.
    """
    from .analysis import load_loss_histories

    sweep_dir = Path(sweep_dir)
    rows = collect_results(sweep_dir)
    if not rows:
        raise ValueError(f"no evaluated cell in {sweep_dir / CELLS_DIR}; run the sweep first")
    if num_train_timesteps is None:
        config = RunFolder(rows[0]["run_dir"]).read_training_config()
        num_train_timesteps = config["sampler"]["num_train_timesteps"]
    histories = load_loss_histories([r["run_dir"] for r in rows], missing="skip") if make_plots else {}
    return write_sweep_analysis(
        sweep_dir, rows, histories, num_train_timesteps=num_train_timesteps, make_plots=make_plots
    )


def write_sweep_analysis(
    out_dir: str | Path,
    rows: list[dict[str, Any]],
    histories: dict[str, list[dict]] | None = None,
    *,
    num_train_timesteps: int = 1000,
    make_plots: bool = True,
) -> dict[str, Any]:
    """Write ``sweep_results.csv``, ``analysis.json``, ``figures/`` and ``REPORT.md`` for result rows."""
    from .analysis import analyze_sweep, timestep_bin_losses
    from .plotting import write_sweep_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_csv(out_dir / SWEEP_RESULTS_NAME, rows)
    analysis = analyze_sweep(rows)
    # Every run of a sweep fine-tunes one pretrained model: its seeds are not independent replicates. Cell means
    # (seeds averaged) are the honest unit for one pretraining; the run-level numbers above are kept for comparison.
    cell_level = analyze_sweep(rows, unit="cell")
    analysis["cell_level_correlations"] = cell_level["correlations"]
    analysis["cell_level_note"] = (
        "Pearson/Spearman over cell means (fine-tune seeds averaged first); 'correlations' treats every run as "
        "independent, which overstates n when all runs share one pretrained model"
    )
    if histories:
        analysis["timestep_bin_losses"] = timestep_bin_losses(histories, rows)
    write_json_atomic(out_dir / ANALYSIS_NAME, analysis)
    figures = (
        _sweep_figures(out_dir, rows, histories or {}, analysis.get("timestep_bin_losses", []), num_train_timesteps)
        if make_plots
        else {}
    )
    write_sweep_report(out_dir, rows, analysis, figures)
    return {"rows": rows, "analysis": analysis, "figures": figures}


def read_results_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``sweep_results.csv`` with numbers parsed back (empty cells become `None`)."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value in ("", None):
                    row[key] = None
                    continue
                try:
                    number = float(value)
                    row[key] = int(number) if key == "seed" else number
                except ValueError:
                    row[key] = value
            run_dir = row.get("run_dir")
            if isinstance(run_dir, str) and not Path(run_dir).is_absolute() and (Path(path).parent / run_dir).exists():
                row["run_dir"] = str((Path(path).parent / run_dir).resolve())
            rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no result row")
    return rows


def export_sweep_results(sweep_dir: str | Path, dest: str | Path) -> dict[str, Any]:
    """Copy a sweep's small results (rows, loss histories) to `dest` and build its report there.

    The exported folder is self-contained: :func:`report_from_results` regenerates every figure and table from it.
    """
    from .analysis import load_loss_histories

    sweep_dir, dest = Path(sweep_dir), Path(dest)
    rows = collect_results(sweep_dir)
    if not rows:
        raise ValueError(f"no evaluated cell in {sweep_dir / CELLS_DIR}; run the sweep first")
    config = RunFolder(rows[0]["run_dir"]).read_training_config()
    (dest / LOSS_HISTORIES_DIR).mkdir(parents=True, exist_ok=True)
    histories = load_loss_histories([r["run_dir"] for r in rows], missing="skip")
    exported_histories = {}
    for row in rows:
        name = Path(row["run_dir"]).name
        if row["run_dir"] in histories:
            path = write_compact_history(dest / LOSS_HISTORIES_DIR / f"{name}.jsonl.gz", histories[row["run_dir"]])
            # The report is built from what was written, so that rebuilding it from the folder gives the same bytes.
            exported_histories[name] = read_compact_history(path)
        row["run_dir"] = name
    if (sweep_dir / SWEEP_CONFIG_NAME).is_file():
        shutil.copy(sweep_dir / SWEEP_CONFIG_NAME, dest / SWEEP_CONFIG_NAME)
    T = config["sampler"]["num_train_timesteps"]
    return write_sweep_analysis(dest, rows, exported_histories, num_train_timesteps=T)


def _round_floats(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, list):
        return [_round_floats(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round_floats(v, digits) for k, v in value.items()}
    return value


def write_compact_history(path: Path, records: list[dict[str, Any]], *, digits: int = 5) -> Path:
    """A loss history as gzip-compressed JSON lines, floats rounded to `digits` significant digits.

    Exported studies keep every step of every run; rounded and compressed they take about a tenth of the plain
    ``loss_history.jsonl`` (the full-precision file stays in the run folder). The gzip header carries no timestamp,
    so the same history always gives the same bytes.
    """
    import gzip

    text = "".join(json.dumps(_round_floats(r, digits)) + "\n" for r in records).encode()
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        handle.write(text)
    return path


def read_compact_history(path: Path) -> list[dict[str, Any]]:
    """Records of a ``.jsonl`` or ``.jsonl.gz`` loss history."""
    import gzip

    path = Path(path)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def report_from_results(results_dir: str | Path, *, num_train_timesteps: int = 1000) -> dict[str, Any]:
    """Regenerate ``analysis.json``, figures and ``REPORT.md`` from an exported ``sweep_results.csv``."""
    results_dir = Path(results_dir)
    rows = read_results_csv(results_dir / SWEEP_RESULTS_NAME)
    histories = {}
    for path in sorted((results_dir / LOSS_HISTORIES_DIR).glob("*.jsonl*")):
        histories[path.name.split(".jsonl")[0]] = read_compact_history(path)
    return write_sweep_analysis(results_dir, rows, histories, num_train_timesteps=num_train_timesteps)


def _sweep_figures(
    sweep_dir: Path, rows: list[dict], histories: dict, bin_losses: list[dict], num_train_timesteps: int | None
) -> dict[str, Path]:
    from .plotting import (
        plot_loss_curves_by_width,
        plot_metric_heatmap,
        plot_metric_vs_mean,
        plot_metric_vs_width,
        plot_pca_distances_vs_mean,
        plot_sampling_distributions,
        plot_timestep_bin_losses,
        save_figure,
    )
    from .timestep_sampling import ci_normal_timestep_probs

    out = sweep_dir / FIGURES_DIR
    T = num_train_timesteps or RunFolder(rows[0]["run_dir"]).read_training_config()["sampler"]["num_train_timesteps"]
    ci_rows = [r for r in rows if r["timestep_sampling"] == "ci_normal"]
    figures: dict[str, Path] = {}
    if ci_rows:
        for metric in REPORT_METRICS:
            if not any(r.get(metric) is not None for r in ci_rows):
                continue
            figures[f"{metric} over (t_lower, t_upper)"] = save_figure(
                plot_metric_heatmap(rows, metric, num_train_timesteps=T), out / f"heatmap_{metric}.png"
            )
            figures[f"{metric} vs CI mean"] = save_figure(
                plot_metric_vs_mean(rows, metric), out / f"vs_mean_{metric}.png"
            )
            figures[f"{metric} vs CI width"] = save_figure(
                plot_metric_vs_width(rows, metric), out / f"vs_width_{metric}.png"
            )
        figures["PCA distances vs CI mean"] = save_figure(plot_pca_distances_vs_mean(rows), out / "pca_vs_mean.png")
        intervals = sorted({(r["ci_lower"], r["ci_upper"]) for r in ci_rows})
        probs = {f"[{lo}, {hi}]": ci_normal_timestep_probs(T, lo, hi) for lo, hi in intervals}
        figures["Sampling distributions"] = save_figure(plot_sampling_distributions(probs), out / "sampling.png")
    if histories:
        figures["Loss curves by CI width"] = save_figure(
            plot_loss_curves_by_width(histories, rows), out / "loss_curves_by_width.png"
        )
        if ci_rows and any(e["timestep_sampling"] == "ci_normal" for e in bin_losses):
            figures["Loss on the same timesteps"] = save_figure(
                plot_timestep_bin_losses(bin_losses, num_train_timesteps=T), out / "timestep_bin_losses.png"
            )
    # Drop anything a previous, larger report left behind.
    for stale in out.glob("*.png"):
        if stale not in figures.values():
            stale.unlink()
    return figures

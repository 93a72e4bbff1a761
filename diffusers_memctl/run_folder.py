"""Run-folder safety: one writer per folder, atomic writes, all-or-nothing reports and pickle-free checkpoint state.

Training, evaluation and sweeps all write into run folders; this module is the one place that decides how:

- **One layout.** Every file and folder name of a run, sweep or study folder is a constant here (``METRICS_NAME``,
  ``LOSS_HISTORY_NAME``, ...), and :class:`RunFolder` gives the paths and typed readers/writers of one run folder
  (config, metrics, loss and metrics histories, checkpoints, locks). No other module spells a file name.
- **One writer.** :func:`run_lock` holds an OS lock (`filelock`, ``flock`` on Unix) on ``<folder>/.memctl.lock`` for
  as long as a run, an evaluation or a sweep cell writes there. The kernel drops the lock when its process dies, so a
  lock left by a killed process never blocks; a second writer fails at once (:class:`RunFolderBusyError`) or, in a
  sweep, moves on to the next cell (:func:`try_run_lock`). Locks are re-entrant within a process: a sweep cell's lock
  is the same lock that the training and evaluation of that cell take.
- **Atomic files.** :func:`write_json_atomic`, :func:`write_bytes_atomic` (and the text, CSV and JSON-lines
  writers) write to a hidden temporary name and rename; :func:`replace_folder` does the same for a whole folder;
  :func:`swap_in` moves a set of finished files into place together. Every new file honours the user's umask
  (:func:`apply_umask`), also those that `safetensors` and `tempfile` create as 0600.
- **Disk full.** :func:`disk_full_guard` turns an out-of-space failure (``ENOSPC``, ``EDQUOT``, or PyTorch's
  ``unexpected pos`` of a short write) into :class:`DiskFullError`, whose message says "no space left on device" and
  names the path.
- **One run per folder.** Every run gets a run id (:func:`new_run_id`) written into ``training_config.json``, the
  saved weights' safetensors metadata, ``metrics.json`` and the card; :func:`check_run_ids` refuses a folder whose
  parts disagree (e.g. old weights beside a new config after an interrupted ``--overwrite_output_dir``).
- **Partial lines.** :func:`read_jsonl` reads JSON-lines files (loss history, metrics history) whose last line a kill
  or a full disk cut short: that line is dropped (and, with ``repair``, removed from the file).
- **No pickle on resume.** Checkpoint state that accelerate would pickle (EMA weights, sampler state) is saved with
  :func:`save_state_file` as safetensors (tensors) plus JSON metadata (scalars). :func:`check_checkpoint_pickles`
  refuses a checkpoint holding ``custom_checkpoint_*.pkl`` files (which accelerate unpickles with
  ``weights_only=False``, i.e. runs any code they hold) unless the caller trusts the folder.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME as DIFFUSERS_SCHEDULER_CONFIG_NAME
from diffusers.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME

__all__ = [
    "ANALYSIS_NAME",
    "BUDGET_STATE_DIR",
    "CARD_NAME",
    "CELLS_DIR",
    "CHECKPOINTS_DIR",
    "CHECKPOINT_PREFIX",
    "EMA_STATE_NAME",
    "FIGURES_DIR",
    "FRONTIER_ROWS_NAME",
    "GRADIENT_CONTRIBUTION_PLOT",
    "GRADIENT_PROFILES_NAME",
    "GRADIENT_PROFILE_NAME",
    "GRADIENT_PROFILE_PLOT",
    "LOCK_NAME",
    "LOGS_DIR",
    "LOSS_HISTORIES_DIR",
    "LOSS_HISTORY_NAME",
    "LOSS_HISTORY_PLOT",
    "METRICS_HISTORY_NAME",
    "METRICS_NAME",
    "MODEL_CONFIG_NAME",
    "MODEL_INDEX_NAME",
    "MODEL_WEIGHTS_NAME",
    "NEAREST_NEIGHBORS_PLOT",
    "NN_DISTANCES_PLOT",
    "PCA_SCATTER_PLOT",
    "PLOTS_DIR",
    "PRETRAINED_DIR",
    "REPLICATED_PAIRS_PLOT",
    "REPORT_NAME",
    "RUN_ID_KEY",
    "SAMPLER_STATE_NAME",
    "SAMPLES_NAME",
    "SCHEDULER_CONFIG_NAME",
    "SCHEDULER_DIR",
    "SIGNAL_OVERLAY_PLOT",
    "STUDY_RESULTS_NAME",
    "STUDY_SETTINGS_NAME",
    "SWEEP_CONFIG_NAME",
    "SWEEP_RESULTS_NAME",
    "TRAINING_CONFIG_NAME",
    "TRAIN_COMPLETE_NAME",
    "UNET_DIR",
    "UNET_EMA_DIR",
    "CheckpointError",
    "DiskFullError",
    "RunFolder",
    "RunFolderBusyError",
    "RunFolderMismatchError",
    "UnsafeCheckpointError",
    "append_jsonl",
    "apply_umask",
    "card_run_id",
    "check_checkpoint_pickles",
    "check_run_ids",
    "disk_full_guard",
    "find_unreadable_file",
    "latest_checkpoint",
    "launch_lock",
    "list_checkpoints",
    "load_state_file",
    "missing_checkpoint_files",
    "new_run_id",
    "partial_folder",
    "publishable_args",
    "publishable_path",
    "read_json",
    "read_jsonl",
    "read_run_args",
    "recover_interrupted_swaps",
    "replace_folder",
    "resolve_published_args",
    "run_ids",
    "run_lock",
    "save_state_file",
    "staging_folder",
    "stamp_weights_run_id",
    "swap_in",
    "try_run_lock",
    "weights_run_id",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# Layout: every name a run, sweep or study folder holds, written once here (read them through `RunFolder`)
# --------------------------------------------------------------------------------------------------------------

LOCK_NAME = ".memctl.lock"
#: The run's settings, sampler summary and data summary (written when training starts).
TRAINING_CONFIG_NAME = "training_config.json"
#: The evaluation report (written last: its presence means the run is evaluated).
METRICS_NAME = "metrics.json"
#: One JSON line per optimizer step (loss, learning rate, per-bin losses).
LOSS_HISTORY_NAME = "loss_history.jsonl"
#: One JSON line per evaluation during training (memorization over steps, the memorization budget).
METRICS_HISTORY_NAME = "metrics_history.jsonl"
#: Written when training finished (its presence means the run is trained).
TRAIN_COMPLETE_NAME = "train_complete.json"
#: The diffusers pipeline index (``DiffusionPipeline.config_name``).
MODEL_INDEX_NAME = "model_index.json"
#: The model card (also the card of a sweep folder).
CARD_NAME = "README.md"
#: The samples the evaluation generated.
SAMPLES_NAME = "samples.npz"
#: Folders of the saved pipeline and of each checkpoint (diffusers' layout).
UNET_DIR = "unet"
UNET_EMA_DIR = "unet_ema"
SCHEDULER_DIR = "scheduler"
#: diffusers' config file names inside a model and a scheduler folder.
MODEL_CONFIG_NAME = CONFIG_NAME
MODEL_WEIGHTS_NAME = SAFETENSORS_WEIGHTS_NAME
SCHEDULER_CONFIG_NAME = DIFFUSERS_SCHEDULER_CONFIG_NAME
#: Figures of the run and of its evaluation.
PLOTS_DIR = "plots"
#: Figures of an evaluation in ``plots/`` (training's preview grids ``samples_epoch_<N>.png`` are not part of it).
PCA_SCATTER_PLOT = "pca_scatter.png"
NN_DISTANCES_PLOT = "nn_distances.png"
NEAREST_NEIGHBORS_PLOT = "nearest_neighbors.png"
SIGNAL_OVERLAY_PLOT = "signal_overlay.png"
LOSS_HISTORY_PLOT = "loss_history.png"
REPLICATED_PAIRS_PLOT = "replicated_pairs.png"
#: Figures of a gradient profile in ``plots/``.
GRADIENT_PROFILE_PLOT = "gradient_profile.png"
GRADIENT_CONTRIBUTION_PLOT = "gradient_contribution.png"
#: The trackers' folder (``--logging_dir``'s default, relative to the run folder).
LOGS_DIR = "logs"
#: ``checkpoints/checkpoint-<step>``: the resumable states.
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
#: The pipeline as last evaluated within the memorization budget (restored when the budget stops training).
BUDGET_STATE_DIR = "budget_state"
#: Checkpoint files of the state accelerate would pickle: safetensors tensors + JSON metadata instead
#: (``ema.safetensors``: EMA of checkpoints written before ``unet_ema/``; read only).
EMA_STATE_NAME = "ema.safetensors"
SAMPLER_STATE_NAME = "sampler_state.safetensors"
#: The gradient profile of a run (``memctl-diagnose``) and the table of those of a sweep.
GRADIENT_PROFILE_NAME = "gradient_profile.json"
GRADIENT_PROFILES_NAME = "gradient_profiles.csv"
#: Sweep and study folders: their runs (``cells/<name>``, ``pretrained/``), settings, result tables, analyses,
#: figures and reports; an exported sweep holds its runs' loss histories in ``loss_histories/``.
CELLS_DIR = "cells"
PRETRAINED_DIR = "pretrained"
FIGURES_DIR = "figures"
LOSS_HISTORIES_DIR = "loss_histories"
SWEEP_CONFIG_NAME = "sweep_config.json"
SWEEP_RESULTS_NAME = "sweep_results.csv"
STUDY_RESULTS_NAME = "study_results.csv"
STUDY_SETTINGS_NAME = "study_settings.json"
FRONTIER_ROWS_NAME = "frontier_rows.csv"
ANALYSIS_NAME = "analysis.json"
REPORT_NAME = "REPORT.md"
#: Files accelerate loads with ``torch.load(weights_only=False)``: arbitrary code runs while they are read.
UNSAFE_PICKLE_PATTERN = re.compile(r"^custom_checkpoint_\d+\.pkl$")
_STAGING_PREFIX = ".staging-"
#: Temporary files of atomic writes (``.<name>.tmp-<pid>-<hex>``) and of writers using a fixed ``.<name>.tmp``.
_TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp(-\d+-[0-9a-f]+)?$")
#: Written into a staging folder just before :func:`swap_in` starts renaming: its presence means "complete me".
_SWAP_JOURNAL = ".swap.json"
#: The key of the run id in training_config.json and metrics.json, and in the card's ``memctl`` metadata.
RUN_ID_KEY = "run_id"
#: The key of the run id in the safetensors metadata of the saved weights.
WEIGHTS_RUN_ID_KEY = "memctl_run_id"


class RunFolderBusyError(RuntimeError):
    """Another process holds the folder's lock (it is training, evaluating or running that sweep cell)."""


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the path and what was kept."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickle files that would run code when loaded, and the folder is not marked trusted."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read (truncated, corrupt, or from another version); names the file and the fallback."""


class RunFolderMismatchError(ValueError):
    """The parts of a run folder (config, weights, metrics, card) carry different run ids: they are not one run."""


# --------------------------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------------------------


def _lock(folder: Path):
    from filelock import FileLock

    # One instance per path in this process (is_singleton): a sweep cell's lock, and the training and evaluation
    # that run inside it, are one re-entrant lock, not three that would block each other.
    return FileLock(str(folder / LOCK_NAME), timeout=0, is_singleton=True)


def _acquire(folder: Path, *, wait: bool):
    """Acquire the lock of `folder` (created when missing); returns ``(lock, created)`` or raises `Timeout`."""
    created = _is_new_folder(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    # On failure nothing is removed, even when `folder` was missing a moment ago: another process created it in
    # between and holds its lock. Removing its lock file would let a third process lock a new one and write into the
    # same folder (two sweep workers training one cell, one deleting the other's checkpoint under way).
    lock.acquire(timeout=-1 if wait else 0)
    if getattr(lock, "lock_counter", 1) == 1 and not created:
        _clean_after_dead_writers(folder)
    return lock, created


def _is_new_folder(folder: Path) -> bool:
    """Whether `folder` does not exist yet (then the lock that creates it removes it again if nothing is written)."""
    return not folder.exists()


def _clean_after_dead_writers(folder: Path) -> None:
    """What writers killed in `folder` left: complete journalled swaps, remove temporary files (lock just taken).

    Only this folder's own level: its subfolders may be run folders (sweep cells) that other processes hold.
    """
    recover_interrupted_swaps(folder)
    for stale in folder.glob(".*.tmp*"):
        if stale.is_file() and _TEMPORARY_PATTERN.match(stale.name):
            stale.unlink(missing_ok=True)
    for partial in (folder / CHECKPOINTS_DIR).glob(f".{CHECKPOINT_PREFIX}*.partial"):
        shutil.rmtree(partial, ignore_errors=True)  # a checkpoint whose save was killed: never resumable


def _release(folder: Path, lock: Any, created: bool) -> None:
    outermost = getattr(lock, "lock_counter", 1) == 1
    # A folder this lock created and nothing else wrote to (e.g. the data failed to load) is not left behind. Its lock
    # file is unlinked while still held: unlinked after the release, it could be a lock another process has just
    # taken, and a third process would then lock a new file in the same folder.
    empty = outermost and created and _unlink_lock_if_alone(folder)
    lock.release()
    if empty:
        with contextlib.suppress(OSError):
            folder.rmdir()  # fails harmlessly if a process that waited on the unlinked lock wrote in the meantime


def _unlink_lock_if_alone(folder: Path) -> bool:
    """Unlink the lock file of `folder` if nothing else is in it (the caller holds the lock); whether it did."""
    with contextlib.suppress(OSError):
        if all(p.name == LOCK_NAME for p in folder.iterdir()):
            (folder / LOCK_NAME).unlink(missing_ok=True)
            return True
    return False


def _busy_message(folder: Path, flag: str) -> str:
    return (
        f"{flag} {folder} is in use by another process (it holds the lock {folder / LOCK_NAME}); wait for it to "
        f"finish or choose another {flag}. A lock of a process that died is released by the operating system."
    )


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, *, wait: bool = False, flag: str = "--output_dir") -> Iterator[None]:
    """Hold the one-writer lock of a run folder (created when missing) for the duration of the block.

    Args:
        folder (`str` or `os.PathLike`): The run folder.
        wait (`bool`, defaults to `False`): Wait for another holder to finish instead of failing at once.
        flag (`str`, defaults to `"--output_dir"`): The flag that named the folder, for the error message.

    Raises:
        [`RunFolderBusyError`]: Another process holds the lock (only when `wait` is `False`).
    """
    from filelock import Timeout

    folder = Path(folder)
    try:
        lock, created = _acquire(folder, wait=wait)
    except Timeout:
        raise RunFolderBusyError(_busy_message(folder, flag)) from None
    except NotADirectoryError:
        raise NotADirectoryError(
            f"{flag} {folder} exists and is a file, not a folder; choose another {flag}"
        ) from None
    try:
        yield
    finally:
        _release(folder, lock, created)


@contextlib.contextmanager
def launch_lock(
    folder: str | os.PathLike, *, is_main_process: bool, num_processes: int, flag: str = "--output_dir"
) -> Iterator[None]:
    """[`run_lock`] for a launch of several processes: the main process holds the lock, every process learns the
    outcome (a busy folder raises [`RunFolderBusyError`] on all of them, so none waits at a barrier for ever).

    Args:
        folder (`str` or `os.PathLike`): The run folder.
        is_main_process (`bool`): Whether this process takes the lock.
        num_processes (`int`): Processes of the launch (the outcome is broadcast when > 1).
        flag (`str`, defaults to `"--output_dir"`): The flag that named the folder, for the error message.
    """
    with contextlib.ExitStack() as stack:
        error = None
        if is_main_process:
            try:
                stack.enter_context(run_lock(folder, flag=flag))
            except RunFolderBusyError as busy:
                error = str(busy)
        if num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error = broadcast_object_list([error])[0]
        if error:
            raise RunFolderBusyError(error)
        yield


@contextlib.contextmanager
def try_run_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Like [`run_lock`] but yields `False` instead of raising when another process holds the folder."""
    from filelock import Timeout

    folder = Path(folder)
    try:
        lock, created = _acquire(folder, wait=False)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        _release(folder, lock, created)


# --------------------------------------------------------------------------------------------------------------
# Atomic writes, umask, disk full
# --------------------------------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(*paths: str | os.PathLike) -> None:
    """Give files (and, recursively, the files and folders under folders) the mode the user's umask asks for.

    Writers that go through `tempfile` or `safetensors` create files as 0600 whatever the umask; published files
    (model weights, the model card) must be readable by whoever may read the run folder.
    """
    mask = _umask()
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        items = [path, *path.rglob("*")] if path.is_dir() else [path]
        for item in items:
            if item.is_symlink():
                continue
            with contextlib.suppress(OSError):
                os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    # PyTorch's zip writer reports a short write as "[enforce fail at inline_container.cc] . unexpected pos".
    return "No space left on device" in text or "Disk quota exceeded" in text or "unexpected pos" in text


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike, what: str, *, kept: str = "") -> Iterator[None]:
    """Re-raise an out-of-space failure inside the block as [`DiskFullError`] naming `path`.

    Args:
        path (`str` or `os.PathLike`): The file or folder being written.
        what (`str`): What was being written (e.g. ``"checkpoint"``).
        kept (`str`, *optional*): What is still intact, appended to the message.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as error:  # safetensors' SafetensorError is neither an OSError nor a RuntimeError
        if not _is_disk_full(error):
            raise
        message = f"no space left on device while writing the {what} {path}"
        message += f"; {kept}" if kept else ""
        raise DiskFullError(errno.ENOSPC, f"{message} (free space, then run the command again)") from error


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_bytes_atomic(path: str | os.PathLike, writer: Callable[[Any], None]) -> Path:
    """Call ``writer(handle)`` on a temporary file beside `path`, then rename it to `path`.

    A crash or a full disk never leaves a half-written `path`, and a failure removes the temporary file. The file is
    created with ``open`` (mode 0666 minus the umask), as any file the user writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        with disk_full_guard(path, "file"), open(tmp, "xb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically (see [`write_bytes_atomic`])."""
    return write_bytes_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_csv_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]], columns: list[str]) -> Path:
    """Write rows as CSV (`csv.DictWriter`'s format, a header of `columns`) atomically (see [`write_bytes_atomic`]).

    Args:
        path (`str` or `os.PathLike`): The CSV file.
        rows (`Iterable[dict]`): One dict per row (keys among `columns`).
        columns (`list[str]`): The header, in order.
    """
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


def partial_folder(target: str | os.PathLike) -> Path:
    """The hidden name (``.<name>.partial``) under which a folder is written before [`replace_folder`] renames it."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def replace_folder(partial: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the finished folder `partial` in place of `target` (removed first), by a rename: no half folder is seen."""
    target = Path(target)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to a temporary file and rename it, so a crash never leaves a half-written file."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


# --------------------------------------------------------------------------------------------------------------
# All-or-nothing groups of files
# --------------------------------------------------------------------------------------------------------------


def staging_folder(folder: str | os.PathLike, kind: str) -> Path:
    """A fresh hidden folder inside `folder` in which to build files before [`swap_in`].

    Staging folders left by a process that died are dealt with first (:func:`recover_interrupted_swaps`): one whose
    swap had begun is completed, any other is removed (its files never reached the run folder).
    """
    folder = Path(folder)
    recover_interrupted_swaps(folder, kind)
    path = folder / f"{_STAGING_PREFIX}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def recover_interrupted_swaps(folder: str | os.PathLike, kind: str = "*") -> list[Path]:
    """Finish or discard the staging folders of `folder` left by a process that died (the caller holds the lock).

    A staging folder holding a swap journal was killed inside [`swap_in`]: every file of the new group was complete,
    so the swap is completed (the file taken out first, e.g. ``metrics.json``, is then the new one: it is never left
    missing). A staging folder without a journal died before its swap began: the run folder still holds the whole
    previous group, and the staging folder is removed.

    Returns:
        `list[Path]`: The staging folders whose swap was completed.
    """
    folder = Path(folder)
    completed = []
    for stale in sorted(folder.glob(f"{_STAGING_PREFIX}{kind}-*")):
        if (stale / _SWAP_JOURNAL).is_file():
            logger.warning("completing the swap of %s into %s, interrupted by a process that died", stale.name, folder)
            _complete_swap(stale, folder)
            completed.append(stale)
        shutil.rmtree(stale, ignore_errors=True)
    return completed


def swap_in(staging: Path, folder: Path, names: Iterable[str], *, last: str | None = None) -> None:
    """Replace ``folder/<name>`` by ``staging/<name>`` for every name, as one group; then remove `staging`.

    Names missing from `staging` are removed from `folder` (a file of an older report must not pass for the new
    one's). `last` is taken out first and put in last, so a reader that trusts `last` (e.g. ``metrics.json``) never
    sees it beside a half-swapped group. Only renames happen here: they need no free space. A journal written before
    the first rename lets :func:`recover_interrupted_swaps` complete a swap that a kill interrupted.
    """
    names = [n for n in names if n != last] + ([last] if last else [])
    journal = {"names": names, "last": last, "staged": [n for n in names if (staging / n).exists()]}
    write_json_atomic(staging / _SWAP_JOURNAL, journal)
    _complete_swap(staging, folder)
    shutil.rmtree(staging, ignore_errors=True)


def _set_aside(path: Path, old: Path, name: str) -> None:
    """Move `path` to ``old/name`` (replacing what an interrupted attempt put there)."""
    aside = old / name
    aside.parent.mkdir(parents=True, exist_ok=True)
    if aside.is_dir():
        shutil.rmtree(aside)
    os.replace(path, aside)


def _complete_swap(staging: Path, folder: Path) -> None:
    """Do (or finish) the renames of the swap journalled in `staging`; every step can be repeated after a kill."""
    journal = json.loads((staging / _SWAP_JOURNAL).read_text())
    names, last, staged = journal["names"], journal["last"], set(journal["staged"])
    old = staging / ".old"
    old.mkdir(exist_ok=True)
    # `last` leaves first, but only while its new version is still staged (after that, folder/last is the new one).
    if last and (folder / last).exists() and (last not in staged or (staging / last).exists()):
        _set_aside(folder / last, old, last)
    for name in names:
        if name == last:
            continue
        target, source = folder / name, staging / name
        if name not in staged:
            if target.exists():
                _set_aside(target, old, name)
        elif source.exists():  # not yet moved in (else an earlier attempt did it)
            if target.exists():
                _set_aside(target, old, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    if last and (staging / last).exists():
        (folder / last).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / last, folder / last)


# --------------------------------------------------------------------------------------------------------------
# JSON-lines files
# --------------------------------------------------------------------------------------------------------------


def append_jsonl(path: str | os.PathLike, record: dict[str, Any], *, what: str = "history") -> None:
    """Append one record as a JSON line (a kill may cut it short: [`read_jsonl`] drops such a partial last line).

    Args:
        path (`str` or `os.PathLike`): The JSON-lines file (created when missing).
        record (`dict`): The record.
        what (`str`, defaults to `"history"`): What the file is, for the message of a full disk.
    """
    with disk_full_guard(path, what), open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Write records as JSON lines atomically (see [`write_bytes_atomic`]), e.g. a history cut back on resume."""
    return write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in records))


def read_jsonl(path: str | os.PathLike, *, repair: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file whose last line may have been cut short.

    An append cut by a kill or a full disk leaves an unterminated last line (``{"step": 21, "epo``): it is dropped,
    and with `repair` removed from the file (atomically), so that the next append starts on a line of its own. A
    missing file has no records. Any other bad line is an error naming the file and the line.

    Args:
        path (`str` or `os.PathLike`): The file (e.g. ``loss_history.jsonl``, ``metrics_history.jsonl``).
        repair (`bool`, defaults to `False`): Rewrite the file without its partial last line (the caller holds the
            run folder's lock).

    Returns:
        `list[dict]`: One record per complete line.

    Raises:
        `ValueError`: A line other than an unterminated last one is not JSON, or holds no JSON object (the message
            names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError as error:
                text = line.strip()[:80].decode("utf-8", "replace")
                raise ValueError(
                    f"{path} line {number} is not JSON ({error}); the file is corrupt ({path.name}:{number}: {text!r})"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number} must hold a JSON object ({path.name}:{number}: {record!r})")
            records.append(record)
    if tail.strip():
        try:
            records.append(json.loads(tail))
            fixed = data + b"\n"  # a whole record whose newline was cut: keep it, end it
        except ValueError:
            logger.warning(
                "%s ends in a partial line (%d bytes, cut by a kill or a full disk): dropped", path, len(tail)
            )
            fixed = data[: len(data) - len(tail)]
        if repair:
            write_bytes_atomic(path, lambda handle: handle.write(fixed))
    return records


# --------------------------------------------------------------------------------------------------------------
# Run ids: one run per folder
# --------------------------------------------------------------------------------------------------------------


def new_run_id() -> str:
    """A fresh run id: UTC time of the start and 12 random hex digits (sorts by time, unique in practice)."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}"


def _weights_files(unet_dir: Path) -> list[Path]:
    return sorted(unet_dir.glob("*.safetensors")) if unet_dir.is_dir() else []


def weights_run_id(unet_dir: str | os.PathLike) -> str | None:
    """The run id in the safetensors metadata of the weights in `unet_dir` (``None`` when absent or unreadable)."""
    from safetensors import safe_open

    files = _weights_files(Path(unet_dir))
    if not files:
        return None
    try:
        with safe_open(str(files[0]), framework="pt") as handle:
            return (handle.metadata() or {}).get(WEIGHTS_RUN_ID_KEY)
    except Exception:  # an unreadable file carries no id; loading it fails later with its own message
        return None


def stamp_weights_run_id(unet_dir: str | os.PathLike, run_id: str) -> None:
    """Write `run_id` into the safetensors metadata of every weights file in `unet_dir` (rewritten atomically).

    diffusers' ``save_pretrained`` offers no metadata hook; the files are rewritten in place, keeping their mode.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    for path in _weights_files(Path(unet_dir)):
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata[WEIGHTS_RUN_ID_KEY] = run_id
        payload = save(tensors, metadata=metadata)
        mode = path.stat().st_mode & 0o777
        write_bytes_atomic(path, lambda handle, payload=payload: handle.write(payload))
        os.chmod(path, mode)


def card_run_id(card_path: str | os.PathLike) -> str | None:
    """The run id in the ``memctl`` metadata of a model card (``README.md``), ``None`` when it has none."""
    from huggingface_hub import metadata_load

    try:
        metadata = metadata_load(Path(card_path)) or {}
    except Exception:  # a hand-written or broken card carries no id
        return None
    memctl = metadata.get("memctl") or {}
    return memctl.get(RUN_ID_KEY) if isinstance(memctl, dict) else None


def _json_run_id(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value.get(RUN_ID_KEY) if isinstance(value, dict) else None


#: The parts of a run folder that carry the run id, by the name used in messages.
RUN_ID_PARTS = (TRAINING_CONFIG_NAME, UNET_DIR, METRICS_NAME, CARD_NAME)


def run_ids(folder: str | os.PathLike, parts: Iterable[str] = RUN_ID_PARTS) -> dict[str, str | None]:
    """The run id of each present part of a run folder (``None`` for a part that carries none)."""
    folder = Path(folder)
    found: dict[str, str | None] = {}
    for part in parts:
        path = folder / part
        if part == UNET_DIR:
            if _weights_files(path):
                found[UNET_DIR] = weights_run_id(path)
        elif path.is_file():
            found[part] = card_run_id(path) if part == CARD_NAME else _json_run_id(path)
    return found


def check_run_ids(folder: str | os.PathLike, parts: Iterable[str] = RUN_ID_PARTS, *, action: str) -> str | None:
    """Refuse a run folder whose present parts carry different run ids; return the run id (``None``: no id).

    A folder whose ``training_config.json`` has no run id was written before run ids existed and is accepted as is.

    Args:
        folder (`str` or `os.PathLike`): The run folder.
        parts (`Iterable[str]`): Parts to compare with the config (``"unet"``, ``"metrics.json"``, ``"README.md"``).
        action (`str`): What is refused, for the message (e.g. ``"evaluate"``).

    Raises:
        [`RunFolderMismatchError`]: A part's run id differs from the config's (or is missing).
    """
    folder = Path(folder)
    ids = run_ids(folder, [TRAINING_CONFIG_NAME, *parts])
    expected = ids.get(TRAINING_CONFIG_NAME)
    if expected is None:
        return None
    bad = {part: value for part, value in ids.items() if value != expected}
    if bad:
        which = ", ".join(f"{part} has {value or 'none'}" for part, value in bad.items())
        raise RunFolderMismatchError(
            f"cannot {action} {folder}: its parts come from different runs (training_config.json has run id "
            f"{expected}, {which}); an interrupted --overwrite_output_dir leaves this. Train it again with "
            "--overwrite_output_dir"
        )
    return expected


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoints/checkpoint-N`` folders of a run, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [
        (int(p.name.split("-")[1]), p) for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.name.split("-")[1].isdigit()
    ]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoints/checkpoint-N`` folder of a run (``None`` when it has none)."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def check_checkpoint_pickles(checkpoint: Path, *, trusted: bool) -> list[Path]:
    """The files of `checkpoint` that accelerate would unpickle unsafely; raises unless `trusted`.

    Raises:
        [`UnsafeCheckpointError`]: The checkpoint holds ``custom_checkpoint_*.pkl`` and `trusted` is `False`.
    """
    pickles = sorted(p for p in checkpoint.iterdir() if UNSAFE_PICKLE_PATTERN.match(p.name))
    if pickles and not trusted:
        names = ", ".join(p.name for p in pickles)
        raise UnsafeCheckpointError(
            f"checkpoint {checkpoint} holds pickle files ({names}) that run arbitrary code when loaded; refusing to "
            "load them. If you wrote this checkpoint yourself (diffusers-memctl 0.1 saved EMA and sampler state "
            "this way) and nobody else can write to the folder, pass --trust_checkpoint_pickles"
        )
    return pickles


def save_state_file(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a state dict of tensors, lists of tensors and JSON scalars as one safetensors file (no pickle).

    Tensors are stored under their key, a list of tensors under ``key.0``, ``key.1``, ...; every other value goes into
    the file's JSON metadata.
    """
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    lists: dict[str, int] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous()
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            lists[key] = len(value)
            tensors.update({f"{key}.{i}": v.detach().cpu().contiguous() for i, v in enumerate(value)})
        else:
            scalars[key] = value
    metadata = {"scalars": json.dumps(scalars, default=_json_default), "lists": json.dumps(lists)}
    payload = save(tensors, metadata=metadata)
    return write_bytes_atomic(path, lambda handle: handle.write(payload))


def load_state_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by [`save_state_file`] (safetensors and JSON only: nothing is unpickled)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    state: dict[str, Any] = json.loads(metadata.get("scalars", "{}"))
    for key, length in json.loads(metadata.get("lists", "{}")).items():
        state[key] = [tensors.pop(f"{key}.{i}") for i in range(length)]
    state.update(tensors)
    return state


def missing_checkpoint_files(checkpoint: Path, names: Iterable[str]) -> list[Path]:
    """The files of `names` that `checkpoint` lacks."""
    return [checkpoint / name for name in names if not (checkpoint / name).is_file()]


def find_unreadable_file(checkpoint: Path) -> tuple[Path, str] | None:
    """The first file of `checkpoint` that is truncated or corrupt, with the reason (``None`` when all are whole).

    Safetensors files are read in full; PyTorch files (``.bin``, ``.pkl``, ``.pt``: zip archives) have their
    archive checked (every member's CRC) without being unpickled, so that a file that is whole but holds objects a
    ``weights_only`` load refuses (accelerate's ``random_states_0.pkl``) is not blamed.
    """
    from safetensors import safe_open

    # A model folder (unet/, unet_ema/) whose config survived but whose weights did not.
    for config in sorted(checkpoint.glob(f"*/{MODEL_CONFIG_NAME}")):
        if not list(config.parent.glob("*.safetensors")):
            return config.parent / MODEL_WEIGHTS_NAME, "missing"
    # Recursive (the model lives in unet/ and unet_ema/); safetensors first, as they are checked completely.
    files = sorted((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: (p.suffix != ".safetensors", p))
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_tensor(key)
            elif path.suffix in (".bin", ".pkl", ".pt") and not UNSAFE_PICKLE_PATTERN.match(path.name):
                if zipfile.is_zipfile(path):
                    with zipfile.ZipFile(path) as archive:
                        broken = archive.testzip()
                    if broken is not None:
                        raise ValueError(f"member {broken} fails its CRC check")
                else:
                    torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any failure to read is the answer
            return path, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


# --------------------------------------------------------------------------------------------------------------
# Published paths
# --------------------------------------------------------------------------------------------------------------


def publishable_path(value: Any, run_dir: str | os.PathLike) -> Any:
    """A local path as seen from `run_dir` (relative), so that published files carry no absolute local path.

    Values that are not existing local paths (Hub ids, preset names, `None`) are returned unchanged.
    """
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    if not (path.is_absolute() or path.exists()):
        return value
    return os.path.relpath(path.resolve(), Path(run_dir).resolve())


#: Settings that may hold a local path (published relative to the run folder).
PATH_SETTINGS = (
    "output_dir",
    "dataset_name",
    "train_data_dir",
    "data_dir",
    "pretrained_model_name_or_path",
    "model_config_name_or_path",
    "resume_from_checkpoint",
    "cache_dir",
    "feature_cache_dir",
    "logging_dir",
)


def publishable_args(args: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """`args` with every local path of :data:`PATH_SETTINGS` made relative to `run_dir` (``output_dir`` is ``.``)."""
    return {key: publishable_path(value, run_dir) if key in PATH_SETTINGS else value for key, value in args.items()}


def resolve_published_args(args: dict[str, Any], run_dir: str | os.PathLike) -> dict[str, Any]:
    """Undo [`publishable_args`]: relative paths that exist as seen from `run_dir` become absolute again.

    Values that name nothing below `run_dir` (preset names, Hub ids, paths of configs written before paths were
    published relative) are returned unchanged.
    """
    run_dir = Path(run_dir)
    resolved = dict(args)
    for key in PATH_SETTINGS:
        value = args.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (run_dir / value).exists():
            resolved[key] = str((run_dir / value).resolve())
    return resolved


def read_run_args(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``args`` of a run's ``training_config.json``, local paths resolved against the run folder (not the cwd).

    Every reader of a run's settings goes through here, so that ``data_dir: ../../shared/data/ecg5000`` means the
    same folder whatever directory the reader runs from. Returns ``{}`` for a folder without a training config.
    """
    config = RunFolder(run_dir).read_training_config(missing_ok=True)
    return resolve_published_args(config.get("args") or {}, run_dir)


# --------------------------------------------------------------------------------------------------------------
# RunFolder: the paths and typed readers/writers of one run folder
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFolder:
    """The layout of one run folder: where each file lives, and how it is read and written.

    Every module that reads or writes a run's files goes through here, so the file names and formats have one owner.
    JSON documents are written atomically, JSON-lines histories are read tolerantly (a partial last line is dropped).

    Args:
        path (`str` or `os.PathLike`): The run folder (need not exist yet).

    Example:

    ```py
    >>> run = RunFolder("runs/tiny")
    >>> run.is_trained, run.latest_checkpoint()  # doctest: +SKIP
    ```
    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return str(self.path)

    # Paths ----------------------------------------------------------------------------------------------------

    @property
    def training_config(self) -> Path:
        return self.path / TRAINING_CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def loss_history(self) -> Path:
        return self.path / LOSS_HISTORY_NAME

    @property
    def metrics_history(self) -> Path:
        return self.path / METRICS_HISTORY_NAME

    @property
    def train_complete(self) -> Path:
        return self.path / TRAIN_COMPLETE_NAME

    @property
    def model_index(self) -> Path:
        return self.path / MODEL_INDEX_NAME

    @property
    def card(self) -> Path:
        return self.path / CARD_NAME

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES_NAME

    @property
    def unet(self) -> Path:
        return self.path / UNET_DIR

    @property
    def scheduler(self) -> Path:
        return self.path / SCHEDULER_DIR

    @property
    def scheduler_config(self) -> Path:
        return self.path / SCHEDULER_DIR / SCHEDULER_CONFIG_NAME

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_DIR

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def budget_state(self) -> Path:
        return self.path / BUDGET_STATE_DIR

    @property
    def gradient_profile(self) -> Path:
        return self.path / GRADIENT_PROFILE_NAME

    def checkpoint(self, step: int) -> Path:
        """The folder of the checkpoint at optimizer step `step` (``checkpoints/checkpoint-<step>``)."""
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step}"

    # State ----------------------------------------------------------------------------------------------------

    @property
    def has_training_config(self) -> bool:
        """Whether training ever started here (the config is the first file a run writes)."""
        return self.training_config.is_file()

    @property
    def is_trained(self) -> bool:
        """Whether training finished (``train_complete.json`` exists)."""
        return self.train_complete.is_file()

    @property
    def is_evaluated(self) -> bool:
        """Whether the evaluation report (``metrics.json``) exists."""
        return self.metrics.is_file()

    @property
    def has_card(self) -> bool:
        """Whether the model card (``README.md``) exists."""
        return self.card.is_file()

    @property
    def has_pipeline(self) -> bool:
        """Whether a saved diffusers pipeline is here (``model_index.json`` and ``unet/``)."""
        return self.model_index.is_file() and self.unet.is_dir()

    # Readers and writers --------------------------------------------------------------------------------------

    def read_training_config(self, *, missing_ok: bool = False) -> dict[str, Any]:
        """The whole ``training_config.json`` (``args`` as published: local paths relative to the folder).

        Args:
            missing_ok (`bool`, defaults to `False`): Return ``{}`` for a folder without a config instead of raising.

        Raises:
            `FileNotFoundError`: The folder has no training config (and `missing_ok` is `False`).
        """
        return _read_json_file(self.training_config, missing_ok=missing_ok)

    def read_scheduler_config(self) -> dict[str, Any]:
        """The saved pipeline's ``scheduler/scheduler_config.json`` (diffusers' settings and ours)."""
        return _read_json_file(self.scheduler_config, missing_ok=False)

    def write_training_config(self, config: dict[str, Any]) -> Path:
        """Write ``training_config.json`` atomically."""
        return write_json_atomic(self.training_config, config)

    def read_args(self) -> dict[str, Any]:
        """The run's settings, local paths resolved against the folder ([`read_run_args`]; ``{}`` without config)."""
        return read_run_args(self.path)

    def read_metrics(self, *, missing_ok: bool = False) -> dict[str, Any]:
        """The evaluation report ``metrics.json``.

        Args:
            missing_ok (`bool`, defaults to `False`): Return ``{}`` for a folder not evaluated instead of raising.

        Raises:
            `FileNotFoundError`: The folder has no report (and `missing_ok` is `False`).
        """
        return _read_json_file(self.metrics, missing_ok=missing_ok)

    def write_metrics(self, report: dict[str, Any]) -> Path:
        """Write ``metrics.json`` atomically."""
        return write_json_atomic(self.metrics, report)

    def read_train_complete(self, *, missing_ok: bool = False) -> dict[str, Any]:
        """The marker ``train_complete.json`` (its ``global_step``, ...)."""
        return _read_json_file(self.train_complete, missing_ok=missing_ok)

    def write_train_complete(self, content: dict[str, Any]) -> Path:
        """Write ``train_complete.json`` atomically."""
        return write_json_atomic(self.train_complete, content)

    def read_loss_history(self, *, repair: bool = False) -> list[dict[str, Any]]:
        """The records of ``loss_history.jsonl`` (see [`read_jsonl`]: a partial last line is dropped)."""
        return read_jsonl(self.loss_history, repair=repair)

    def append_loss_record(self, record: dict[str, Any]) -> None:
        """Append one step's record to ``loss_history.jsonl``."""
        append_jsonl(self.loss_history, record, what="loss history")

    def read_metrics_history(self, *, repair: bool = False) -> list[dict[str, Any]]:
        """The records of ``metrics_history.jsonl`` (see [`read_jsonl`]: a partial last line is dropped)."""
        return read_jsonl(self.metrics_history, repair=repair)

    def write_metrics_history(self, records: Iterable[dict[str, Any]]) -> Path:
        """Write ``metrics_history.jsonl`` atomically (the whole history)."""
        return write_jsonl_atomic(self.metrics_history, records)

    # Checkpoints and locks ------------------------------------------------------------------------------------

    def list_checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first ([`list_checkpoints`])."""
        return list_checkpoints(self.path)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (``None`` when there is none)."""
        return latest_checkpoint(self.path)

    def lock(self, *, wait: bool = False, flag: str = "--output_dir") -> contextlib.AbstractContextManager[None]:
        """The folder's one-writer lock ([`run_lock`])."""
        return run_lock(self.path, wait=wait, flag=flag)

    def try_lock(self) -> contextlib.AbstractContextManager[bool]:
        """The folder's lock if free ([`try_run_lock`]: yields whether it was taken)."""
        return try_run_lock(self.path)


def read_json(path: str | os.PathLike, *, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from a file of a run, sweep or study folder (``sweep_config.json``, ``gradient_profile.json``, ...).

    Args:
        path (`str` or `os.PathLike`): The file.
        missing_ok (`bool`, defaults to `False`): Return ``{}`` for a missing file instead of raising.

    Raises:
        `FileNotFoundError`: The file is missing (and `missing_ok` is `False`).
        `ValueError`: The file is not JSON, or holds no JSON object (the message names the file).
    """
    return _read_json_file(Path(path), missing_ok=missing_ok)


def _read_json_file(path: Path, *, missing_ok: bool) -> dict[str, Any]:
    """A JSON object from `path` (``{}`` for a missing file with `missing_ok`); a bad file raises naming it."""
    if missing_ok and not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data

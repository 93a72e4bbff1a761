"""Run-folder safety: one writer per folder, atomic writes, all-or-nothing reports and pickle-free checkpoint state.

Training, evaluation and sweeps all write into run folders; this module is the one place that decides how:

- **One writer.** :func:`run_lock` holds an OS lock (`filelock`, ``flock`` on Unix) on ``<folder>/.memctl.lock`` for
  as long as a run, an evaluation or a sweep cell writes there. The kernel drops the lock when its process dies, so a
  lock left by a killed process never blocks; a second writer fails at once (:class:`RunFolderBusyError`) or, in a
  sweep, moves on to the next cell (:func:`try_run_lock`). Locks are re-entrant within a process: a sweep cell's lock
  is the same lock that the training and evaluation of that cell take.
- **Atomic files.** :func:`write_json_atomic` and :func:`write_bytes_atomic` write to a hidden temporary name and
  rename; :func:`swap_in` moves a set of finished files into place together. Every new file honours the user's umask
  (:func:`apply_umask`), also those that `safetensors` and `tempfile` create as 0600.
- **Disk full.** :func:`disk_full_guard` turns an out-of-space failure (``ENOSPC``, ``EDQUOT``, or PyTorch's
  ``unexpected pos`` of a short write) into :class:`DiskFullError`, whose message says "no space left on device" and
  names the path.
- **No pickle on resume.** Checkpoint state that accelerate would pickle (EMA weights, sampler state) is saved with
  :func:`save_state_file` as safetensors (tensors) plus JSON metadata (scalars). :func:`check_checkpoint_pickles`
  refuses a checkpoint holding ``custom_checkpoint_*.pkl`` files (which accelerate unpickles with
  ``weights_only=False``, i.e. runs any code they hold) unless the caller trusts the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINTS_DIR",
    "LOCK_NAME",
    "CheckpointError",
    "DiskFullError",
    "RunFolderBusyError",
    "UnsafeCheckpointError",
    "apply_umask",
    "check_checkpoint_pickles",
    "disk_full_guard",
    "list_checkpoints",
    "find_unreadable_file",
    "launch_lock",
    "load_state_file",
    "publishable_args",
    "publishable_path",
    "read_run_args",
    "resolve_published_args",
    "run_lock",
    "save_state_file",
    "staging_folder",
    "swap_in",
    "try_run_lock",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".memctl.lock"
CHECKPOINTS_DIR = "checkpoints"
#: Files accelerate loads with ``torch.load(weights_only=False)``: arbitrary code runs while they are read.
UNSAFE_PICKLE_PATTERN = re.compile(r"^custom_checkpoint_\d+\.pkl$")
_STAGING_PREFIX = ".staging-"


class RunFolderBusyError(RuntimeError):
    """Another process holds the folder's lock (it is training, evaluating or running that sweep cell)."""


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the path and what was kept."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds pickle files that would run code when loaded, and the folder is not marked trusted."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read (truncated, corrupt, or from another version); names the file and the fallback."""


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
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock(folder)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except BaseException:
        if created:
            _remove_if_empty(folder)
        raise
    return lock, created


def _release(folder: Path, lock: Any, created: bool) -> None:
    outermost = getattr(lock, "lock_counter", 1) == 1
    lock.release()
    if outermost and created:
        # A folder this lock created and nothing else wrote to (e.g. the data failed to load) is not left behind.
        _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        leftovers = [p for p in folder.iterdir() if p.name != LOCK_NAME]
        if not leftovers:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()


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
    except (OSError, RuntimeError) as error:
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
    """A fresh hidden folder inside `folder` in which to build files before [`swap_in`] (removes stale ones)."""
    folder = Path(folder)
    for stale in folder.glob(f"{_STAGING_PREFIX}{kind}-*"):
        # The caller holds the folder's lock, so any staging folder left here belongs to a process that died.
        shutil.rmtree(stale, ignore_errors=True)
    path = folder / f"{_STAGING_PREFIX}{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def swap_in(staging: Path, folder: Path, names: Iterable[str], *, last: str | None = None) -> None:
    """Replace ``folder/<name>`` by ``staging/<name>`` for every name, as one group; then remove `staging`.

    Names missing from `staging` are removed from `folder` (a file of an older report must not pass for the new
    one's). `last` is taken out first and put in last, so a reader that trusts `last` (e.g. ``metrics.json``) never
    sees it beside a half-swapped group. Only renames happen here: they need no free space.
    """
    names = [n for n in names if n != last] + ([last] if last else [])
    old = staging / ".old"
    old.mkdir(exist_ok=True)
    if last and (folder / last).exists():
        (old / last).parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder / last, old / last)
    for name in names:
        target, source = folder / name, staging / name
        if target.exists() and not (name == last):
            (old / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, old / name)
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete ``checkpoints/checkpoint-N`` folders of a run, oldest first."""
    folder = Path(output_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return [path for _, path in sorted(found)]


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


def find_unreadable_file(checkpoint: Path) -> tuple[Path, str] | None:
    """The first file of `checkpoint` that cannot be read safely, with the reason (``None`` when all read)."""
    from safetensors import safe_open

    # Recursive (the model lives in unet/ and unet_ema/); safetensors first, as they are checked completely.
    files = sorted((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: (p.suffix != ".safetensors", p))
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_tensor(key)
            elif path.suffix in (".bin", ".pkl", ".pt") and not UNSAFE_PICKLE_PATTERN.match(path.name):
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
    config_file = Path(run_dir) / "training_config.json"
    if not config_file.is_file():
        return {}
    return resolve_published_args(json.loads(config_file.read_text()).get("args") or {}, run_dir)

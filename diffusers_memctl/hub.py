"""Hub pushes of diffusers-memctl run folders and sweeps (cards are :mod:`diffusers_memctl.reports.cards`).

Pushes never upload pickles (:mod:`diffusers_memctl.uploads`): `plan_hub_commit` walks a run folder and keeps only
safetensors weights, JSON configs, `loss_history.jsonl`, `samples.npz`, PNG plots and Markdown/CSV/text reports;
`.bin`, `.pt`, `.pth`, `.pkl`, `.pickle`, `.ckpt` and `.joblib` files are skipped with a warning, tensorboard logs and
`checkpoints/` (unless asked) are left out. `push_to_hub` writes a missing model card first, then makes exactly one
`HfApi.create_repo(..., exist_ok=True)` and one `HfApi.create_commit` call. The token comes from the argument, else
from huggingface_hub's own resolution (`HF_TOKEN`, then the login cache); it is never written to a file, a card, a
log or an error message.

Sweeps go to ONE repo: one folder per cell (each a complete run folder with its own card) plus the sweep report and
its card at the root. One repo keeps a sweep's cells, their shared report and their provenance together in one
commit. diffusers' `DiffusionPipeline.from_pretrained` has no `subfolder` argument (only single components such as
`UNet2DModel.from_pretrained(repo_id, subfolder="cell/unet")` do), so a cell loads through a partial download:

```python
local = huggingface_hub.snapshot_download(repo_id, allow_patterns=["cell/*"])
pipeline = DDPMPipeline.from_pretrained(f"{local}/cell")
```
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .errors import HubPushError
from .reports.cards import find_sweep_cells, write_model_card, write_sweep_card
from .run_folder import (
    CARD_NAME,
    RunFolder,
    check_run_ids,
)
from .uploads import PICKLE_SUFFIXES, SECRET_ARG, root_report_files, walk_uploadable, warn_refused

__all__ = ["HubPushError", "PICKLE_SUFFIXES", "plan_hub_commit", "push_sweep_to_hub", "push_to_hub"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Templates and small helpers
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Pushes
# ----------------------------------------------------------------------------------------------------------------


def _redact(data: Any) -> tuple[Any, list[str]]:
    """Copy of a JSON value with secret-looking string entries (`hub_token`, `password`, ...) set to null."""
    if isinstance(data, dict):
        out, found = {}, []
        for key, value in data.items():
            if isinstance(key, str) and SECRET_ARG.search(key) and isinstance(value, str) and value:
                out[key] = None
                found.append(key)
            else:
                out[key], inner = _redact(value)
                found += inner
        return out, found
    if isinstance(data, list):
        pairs = [_redact(item) for item in data]
        return [p[0] for p in pairs], [k for p in pairs for k in p[1]]
    return data, []


def _upload_source(path: Path) -> Path | bytes:
    """The file itself, or for a JSON file holding secret-looking entries, redacted bytes (the file stays as is)."""
    if path.suffix.lower() != ".json":
        return path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return path
    redacted, keys = _redact(data)
    if not keys:
        return path
    message = f"uploading {path} with secret-looking entries {sorted(set(keys))} set to null (local file unchanged)"
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)
    return (json.dumps(redacted, indent=2) + "\n").encode("utf-8")


def _operations(folder: Path, files: list[Path], path_in_repo: str) -> list[CommitOperationAdd]:
    prefix = PurePosixPath(path_in_repo.strip("/")) if path_in_repo.strip("/") else None
    ops = []
    for path in files:
        relative = path.relative_to(folder).as_posix()
        target = str(prefix / relative) if prefix else relative
        ops.append(CommitOperationAdd(path_in_repo=target, path_or_fileobj=_upload_source(path)))
    return sorted(ops, key=lambda op: op.path_in_repo)


def plan_hub_commit(
    folder: str | os.PathLike, *, path_in_repo: str = "", include_checkpoints: bool = False
) -> list[CommitOperationAdd]:
    """The files of a run folder that a push uploads, as commit operations (pure: reads nothing but the listing).

    Kept: `*.safetensors`, `*.json` (pipeline configs, `training_config.json`, `metrics.json`), `*.jsonl`
    (`loss_history.jsonl`), `*.npz` (`samples.npz`), `*.png` (`plots/`), `*.md` (`README.md`), `*.csv`, `*.txt`.
    JSON files with secret-looking entries (`hub_token`, `*_secret`, `password`, `api_key`...) are uploaded with
    those values set to null (the local file is not changed). Refused with a warning: pickle formats (`.bin`, `.pt`, `.pth`, `.pkl`, `.pickle`, `.ckpt`, `.joblib`). Left out:
    hidden files and folders, tensorboard logs (`logs/`, `tensorboard/`, `events.out.tfevents.*`) and `checkpoints/`
    unless `include_checkpoints` (accelerate's optimizer/RNG states are pickles and stay local even then).

    Args:
        folder (`str` or `os.PathLike`): The run folder.
        path_in_repo (`str`, defaults to `""`): Folder inside the repo to upload to (repo root by default).
        include_checkpoints (`bool`, defaults to `False`): Also upload the safetensors/JSON files of `checkpoints/`.

    Returns:
        `list[CommitOperationAdd]`: One operation per file, sorted by path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder to push {folder} does not exist or is not a directory")
    files, refused = walk_uploadable(folder, include_checkpoints=include_checkpoints)
    warn_refused(refused)
    if not files:
        raise ValueError(f"nothing to upload in {folder}: no safetensors/JSON/plot/report files found")
    return _operations(folder, files, path_in_repo)


def _plan_root_report(sweep_dir: Path, cells: list[Path]) -> list[CommitOperationAdd]:
    """Files of a sweep folder outside its cells (the sweep report, plots and root card)."""
    return _operations(sweep_dir, root_report_files(sweep_dir, cells), "")


def _retry_code(function: str, folder: Path, repo_id: str, options: Mapping[str, Any], defaults: Mapping) -> str:
    arguments = [repr(str(folder)), repr(repo_id)]
    arguments += [f"{k}={v!r}" for k, v in options.items() if v != defaults.get(k)]
    return f"from diffusers_memctl.hub import {function}; {function}({', '.join(arguments)})"


def _commit(
    function: str,
    folder: Path,
    repo_id: str,
    operations: list[CommitOperationAdd],
    *,
    token: str | None,
    options: Mapping[str, Any],
    default_message: str,
) -> str:
    """Create the repo if missing and commit `operations`; any failure becomes one [`HubPushError`].

    `options` are the keyword arguments the caller `function` was given (never the token): they set `private`,
    `commit_message`, `create_pr` and `endpoint` here, and make up the retry command quoted in the error.
    """
    private, create_pr, endpoint = options["private"], options["create_pr"], options["endpoint"]
    commit_message = options["commit_message"] or default_message
    retry_code = _retry_code(function, folder.resolve(), repo_id, options, _PUSH_DEFAULTS)
    api = HfApi(endpoint=endpoint, token=token)
    stage = f"creating the repo {repo_id!r}"
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        stage = f"committing {len(operations)} file(s) to {repo_id!r}"
        info = api.create_commit(repo_id, operations, commit_message=commit_message, create_pr=create_pr)
    except Exception as error:  # every failure becomes one actionable error
        # The token never appears here: huggingface_hub's errors carry the URL and server message, not headers.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubPushError(
            f"pushing {folder} to the Hub repo {repo_id!r} failed while {stage}: {type(error).__name__}: {reason}\n"
            f"Local files are untouched. Check the repo id and your token (argument, HF_TOKEN or `hf auth login`), "
            f'then retry with:\n  python -c "{retry_code}"',
            repo_id=repo_id,
            retry_code=retry_code,
        ) from error
    logger.info("pushed %d file(s) from %s to %s: %s", len(operations), folder, repo_id, info.commit_url)
    return str(info.commit_url)


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {error}") from error


_PUSH_DEFAULTS = {
    "private": False,
    "commit_message": None,
    "path_in_repo": "",
    "include_checkpoints": False,
    "create_pr": False,
    "endpoint": None,
}


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    path_in_repo: str = "",
    include_checkpoints: bool = False,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> str:
    """Push a run folder to a Hub model repo in one commit (writing its model card first if missing).

    Args:
        folder (`str` or `os.PathLike`): The run folder.
        repo_id (`str`): Target repo, `namespace/name`; created if missing (`exist_ok=True`).
        token (`str`, *optional*):
            Hub token; defaults to huggingface_hub's resolution (`HF_TOKEN`, then the login cache). Never stored.
        private (`bool`, defaults to `False`): Create the repo as private (ignored when it already exists).
        commit_message (`str`, *optional*): Commit title; defaults to "Upload diffusers-memctl run <folder name>".
        path_in_repo (`str`, defaults to `""`): Folder inside the repo to upload to.
        include_checkpoints (`bool`, defaults to `False`): Also upload `checkpoints/` (safetensors/JSON only).
        create_pr (`bool`, defaults to `False`): Open a pull request instead of committing to `main`.
        endpoint (`str`, *optional*): Hub endpoint; defaults to `HF_ENDPOINT` / https://huggingface.co.

    Returns:
        `str`: URL of the created commit.

    Raises:
        `HubPushError`: If creating the repo or the commit fails (message names the repo and the retry code).
    """
    folder = Path(folder)
    _check_repo_id(repo_id)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder to push {folder} does not exist or is not a directory")
    if not RunFolder(folder).has_card:
        if RunFolder(folder).has_training_config:
            write_model_card(folder, repo_id=repo_id, subfolder=path_in_repo.strip("/") or None)
        else:
            logger.warning("no README.md and no training_config.json in %s: pushing without a model card", folder)
    check_run_ids(folder, action="push")
    operations = plan_hub_commit(folder, path_in_repo=path_in_repo, include_checkpoints=include_checkpoints)
    options = {
        "private": private,
        "commit_message": commit_message,
        "path_in_repo": path_in_repo,
        "include_checkpoints": include_checkpoints,
        "create_pr": create_pr,
        "endpoint": endpoint,
    }
    return _commit(
        "push_to_hub",
        folder,
        repo_id,
        operations,
        token=token,
        options=options,
        default_message=f"Upload diffusers-memctl run {folder.resolve().name}",
    )


def push_sweep_to_hub(
    sweep_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    include_checkpoints: bool = False,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> str:
    """Push a whole sweep to ONE Hub repo in one commit: a folder per cell plus the sweep report at the root.

    Missing cards are written first (each cell's card, with loading code for its subfolder, and the sweep card).

    Args:
        sweep_dir (`str` or `os.PathLike`): The sweep's output folder (cells are found by [`find_sweep_cells`]).
        repo_id (`str`): Target repo, `namespace/name`; created if missing.
        token (`str`, *optional*): Hub token; defaults to huggingface_hub's resolution. Never stored.
        private (`bool`, defaults to `False`): Create the repo as private.
        commit_message (`str`, *optional*): Commit title; defaults to "Upload diffusers-memctl sweep <folder name>".
        include_checkpoints (`bool`, defaults to `False`): Also upload the cells' `checkpoints/` (no pickles).
        create_pr (`bool`, defaults to `False`): Open a pull request instead of committing to `main`.
        endpoint (`str`, *optional*): Hub endpoint; defaults to `HF_ENDPOINT` / https://huggingface.co.

    Returns:
        `str`: URL of the created commit.

    Raises:
        `HubPushError`: If creating the repo or the commit fails.
    """
    sweep_dir = Path(sweep_dir)
    _check_repo_id(repo_id)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist or is not a directory")
    cells = find_sweep_cells(sweep_dir)
    if not cells:
        raise FileNotFoundError(f"no run folders (with model_index.json or training_config.json) below {sweep_dir}")
    operations: list[CommitOperationAdd] = []
    for cell in cells:
        subfolder = cell.relative_to(sweep_dir).as_posix()
        if not RunFolder(cell).has_card and RunFolder(cell).has_training_config:
            write_model_card(cell, repo_id=repo_id, subfolder=subfolder)
        check_run_ids(cell, action="push")
        operations += plan_hub_commit(cell, path_in_repo=subfolder, include_checkpoints=include_checkpoints)
    if not (sweep_dir / CARD_NAME).is_file():
        write_sweep_card(sweep_dir, repo_id=repo_id)
    operations += _plan_root_report(sweep_dir, cells)
    operations.sort(key=lambda op: op.path_in_repo)
    options = {
        "private": private,
        "commit_message": commit_message,
        "include_checkpoints": include_checkpoints,
        "create_pr": create_pr,
        "endpoint": endpoint,
    }
    return _commit(
        "push_sweep_to_hub",
        sweep_dir,
        repo_id,
        operations,
        token=token,
        options=options,
        default_message=f"Upload diffusers-memctl sweep {sweep_dir.resolve().name}",
    )

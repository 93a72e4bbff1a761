"""What may be published from a run or sweep folder: weights, configs, metrics, plots and reports, never pickles.

Both the Hub push (:mod:`diffusers_memctl.hub`, which plans the commit) and the sweep card
(:mod:`diffusers_memctl.reports.cards`, which lists the report files a push uploads) read this policy.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path, PurePosixPath

from .pipelines import REMOTE_PIPELINE_FILE, REMOTE_UNET_FILE
from .run_folder import CHECKPOINTS_DIR, LOGS_DIR, MODEL_INDEX_NAME

__all__ = [
    "PICKLE_SUFFIXES",
    "SECRET_ARG",
    "is_remote_code",
    "root_report_files",
    "walk_uploadable",
    "warn_refused",
]

logger = logging.getLogger("diffusers_memctl.hub")


#: File suffixes that may hold pickles; never uploaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})


UPLOAD_SUFFIXES = frozenset({".safetensors", ".json", ".jsonl", ".npz", ".png", ".md", ".csv", ".txt"})


#: Python files a run folder publishes: the remote code that lets diffusers load a signal pipeline on its own.
UPLOAD_CODE = frozenset({REMOTE_PIPELINE_FILE, REMOTE_UNET_FILE})


EXCLUDED_DIRS = frozenset({LOGS_DIR, "tensorboard", "wandb", "__pycache__"})


SECRET_ARG = re.compile(r"(^|_)(token|secret|password|passwd|api_key|credentials?)$", re.IGNORECASE)


def is_remote_code(path: Path) -> bool:
    """A signal pipeline's remote-code copy, in its place beside the pipeline's `model_index.json`."""
    for relative in UPLOAD_CODE:
        depth = len(PurePosixPath(relative).parts)
        pipeline_root = path.parents[depth - 1]
        if path.relative_to(pipeline_root).as_posix() == relative and (pipeline_root / MODEL_INDEX_NAME).is_file():
            return True
    return False


def walk_uploadable(
    folder: Path, *, include_checkpoints: bool, skip_dirs: frozenset[Path] = frozenset()
) -> tuple[list[Path], list[Path]]:
    """(files to upload, pickle files refused) below `folder`, both sorted."""
    keep: list[Path] = []
    refused: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in EXCLUDED_DIRS
            and (include_checkpoints or d != CHECKPOINTS_DIR)
            and here / d not in skip_dirs
        )
        for name in sorted(filenames):
            path = here / name
            suffix = path.suffix.lower()
            if suffix in PICKLE_SUFFIXES:
                refused.append(path)
            elif suffix in UPLOAD_SUFFIXES and not name.startswith((".", "events.out.tfevents")) and path.is_file():
                keep.append(path)
            elif is_remote_code(path):
                keep.append(path)
            else:
                logger.info("not uploading %s (not a weights/config/metrics/plot/report file)", path)
    return keep, refused


def warn_refused(refused: list[Path]) -> None:
    if refused:
        listing = ", ".join(str(p) for p in refused)
        message = (
            f"not uploading {len(refused)} file(s) that may contain pickles (never pushed; use safetensors): {listing}"
        )
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def root_report_files(sweep_dir: Path, cells: list[Path]) -> list[Path]:
    """Files of a sweep folder outside its cells (the sweep report, plots and root card); warns about pickles."""
    files, refused = walk_uploadable(sweep_dir, include_checkpoints=False, skip_dirs=frozenset(cells))
    warn_refused(refused)
    return files

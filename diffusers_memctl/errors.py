"""The package's exceptions, in one place: each module that raises one imports it from here (and re-exports it, so
``from diffusers_memctl.run_folder import RunFolderBusyError`` and the like keep working).

The CLI prints :data:`USER_ERRORS` as one line (plus a hint) instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "USER_ERRORS",
    "AfterTrainingError",
    "CheckpointError",
    "DiskFullError",
    "HubPushError",
    "NonFiniteLossError",
    "RunFolderBusyError",
    "RunFolderMismatchError",
    "UnsafeCheckpointError",
]


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


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss or the weights become NaN or infinite; the message says which checkpoint is kept."""


class AfterTrainingError(RuntimeError):
    """A step after training (evaluation, model card, push) failed; the trained pipeline is saved and kept."""


class HubPushError(RuntimeError):
    """A push to the Hub failed; local files are untouched and `retry_code` repeats the call.

    Args:
        message (`str`): What failed, for which repo, and how to retry.
        repo_id (`str`): The target repo id.
        retry_code (`str`): Python code that repeats the push (never contains a token).
    """

    def __init__(self, message: str, *, repo_id: str, retry_code: str) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.retry_code = retry_code


#: Errors that describe bad input or a state of the run folder: the message is all the user needs.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    AfterTrainingError,
    CheckpointError,
    DiskFullError,
    RunFolderBusyError,
    UnsafeCheckpointError,
    NonFiniteLossError,
)

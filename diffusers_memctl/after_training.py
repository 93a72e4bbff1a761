"""Steps that follow training (evaluation, model card, push): a failure there never costs the trained model.

The pipeline is saved before any of them runs (see `diffusers_memctl.training`); when one fails, the job stops with
a [`StepAfterTrainingError`] whose one line says which step failed, that the model is saved, and the command that
reruns just that step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

__all__ = ["StepAfterTrainingError", "rerun_command", "run_step_after_training"]

T = TypeVar("T")


class StepAfterTrainingError(RuntimeError):
    """A step after training failed; the trained pipeline is saved in the run folder."""

    def __init__(self, step: str, run_dir: Path, rerun: str, error: BaseException):
        self.step, self.run_dir, self.rerun = step, run_dir, rerun
        cause = " ".join(str(error).split()) or type(error).__name__
        super().__init__(
            f"{step} failed after training ({type(error).__name__}: {cause}); the trained pipeline is saved in "
            f"{run_dir}; rerun just this step: {rerun}"
        )


def rerun_command(step: str, run_dir: Path, repo_id: str | None = None) -> str:
    """The shell command that redoes `step` ("evaluation", "model card" or "push") for `run_dir`."""
    if step == "push":
        return f"python -c \"from diffusers_memctl.hub import push_to_hub; push_to_hub('{run_dir}', '{repo_id}')\""
    # memctl-evaluate writes metrics.json and plots, then the model card.
    return f"memctl-evaluate {run_dir}"


def run_step_after_training(step: str, run_dir: Path, function: Callable[[], T], repo_id: str | None = None) -> T:
    """Call `function`; turn any failure into a [`StepAfterTrainingError`] naming `step` and its rerun command."""
    try:
        return function()
    except (KeyboardInterrupt, StepAfterTrainingError):
        raise
    except Exception as error:
        raise StepAfterTrainingError(step, run_dir, rerun_command(step, run_dir, repo_id), error) from error

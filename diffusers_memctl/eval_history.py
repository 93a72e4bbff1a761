"""Evaluation along training (``metrics_history.jsonl``) and the memorization budget (``--max_memorized_fraction``).

Whether a method copies less than *training less* can only be seen along training: the same run evaluated at several
steps traces a copies-vs-quality path. With ``--eval_every_steps N`` the training loop evaluates the (EMA) model at
step 0 when fine-tuning (the pretrained model), every N steps, and the run's final evaluation closes the file, so

- every row holds ``step`` plus the metric keys of ``metrics.json`` (held-out quality included when the data has a
  held-out split), ``num_samples`` and ``eval_seconds`` (the evaluation's cost);
- the last row (``"final": true``) *is* ``metrics.json``'s metrics: it is rewritten whenever ``metrics.json`` is;
- rows are tied to steps: resuming from checkpoint ``c`` drops every row after ``c`` (those steps are trained and
  evaluated again, deterministically), and a row is written before the checkpoint of its step, so a SIGKILL leaves
  neither a duplicate nor a gap. The file is rewritten atomically under the run folder's lock.

The budget: the first evaluation whose ``memorized_fraction`` exceeds F stops fine-tuning, and the pipeline saved is
the last evaluated state at or under F (kept on disk at that evaluation in ``budget_state/``, not retrained).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .run_folder import BUDGET_STATE_DIR, METRICS_HISTORY_NAME, RunFolder

__all__ = [
    "BUDGET_STATE_DIR",
    "HISTORY_NAME",
    "BudgetOutcome",
    "budget_message",
    "read_history",
    "record_history_row",
    "sync_final_row",
    "truncate_history",
]

logger = logging.getLogger(__name__)

HISTORY_NAME = METRICS_HISTORY_NAME
BUDGET_KEY = "memorization_budget"


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics_history.jsonl`` (empty when there is none)."""
    return RunFolder(run_dir).read_metrics_history()  # a partial last line (a kill mid-append) is dropped


def _write_history(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    # Whole-file atomic rewrite: a kill mid-write leaves the previous file, never a torn last line.
    RunFolder(run_dir).write_metrics_history(rows)


def record_history_row(run_dir: str | Path, row: dict[str, Any]) -> None:
    """Add an along-training row, replacing a row of the same step and dropping a stale final row."""
    rows = [r for r in read_history(run_dir) if not r.get("final") and r["step"] != row["step"]]
    rows.append(row)
    _write_history(Path(run_dir), sorted(rows, key=lambda r: r["step"]))


def truncate_history(run_dir: str | Path, last_step: int) -> list[dict[str, Any]]:
    """Keep the along-training rows up to `last_step` (a resumed checkpoint); returns them."""
    if not RunFolder(run_dir).metrics_history.is_file():
        return []
    rows = [r for r in read_history(run_dir) if not r.get("final") and r["step"] <= last_step]
    _write_history(Path(run_dir), rows)
    return rows


def sync_final_row(run_dir: str | Path, report: dict[str, Any]) -> None:
    """Close ``metrics_history.jsonl`` with the final evaluation (`report` = ``metrics.json``), when the run has one.

    The final row's step is the step of the saved pipeline: the last training step, or under a memorization budget
    that stopped, the step of the state that was kept.
    """
    run_dir = Path(run_dir)
    if not RunFolder(run_dir).metrics_history.is_file():
        return
    rows = [r for r in read_history(run_dir) if not r.get("final")]
    step = _saved_step(run_dir)
    timings = report.get("timings") or {}
    rows.append(
        {
            "step": step,
            "final": True,
            "num_samples": report.get("num_samples"),
            "eval_seconds": round(
                float(sum(v for k, v in timings.items() if k.endswith("_s") and "estimate" not in k)), 3
            ),
            **report["metrics"],
        }
    )
    _write_history(run_dir, rows)


def _saved_step(run_dir: Path) -> int | None:
    folder = RunFolder(run_dir)
    budget = folder.read_training_config(missing_ok=True).get(BUDGET_KEY) or {}
    if budget.get("saved_step") is not None:
        return int(budget["saved_step"])
    if folder.is_trained:
        return int(folder.read_train_complete().get("global_step", 0))
    return None


@dataclass
class BudgetOutcome:
    """Where a run stands with its memorization budget: the last state within it, and whether it stopped."""

    max_memorized_fraction: float
    saved_step: int | None = None
    saved_fraction: float | None = None
    stopped_at_step: int | None = None
    stopped_fraction: float | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_at_step is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_memorized_fraction": self.max_memorized_fraction,
            "stopped": self.stopped,
            "stopped_at_step": self.stopped_at_step,
            "memorized_fraction_at_stop": self.stopped_fraction,
            "saved_step": self.saved_step,
            "saved_memorized_fraction": self.saved_fraction,
            "within_budget": self.saved_fraction is not None and self.saved_fraction <= self.max_memorized_fraction,
            "message": budget_message(self),
        }

    @classmethod
    def from_history(cls, rows: list[dict[str, Any]], max_memorized_fraction: float) -> BudgetOutcome:
        """The outcome the along-training rows imply (used on resume: the rows are the record)."""
        outcome = cls(max_memorized_fraction)
        for row in rows:
            if not row.get("final"):
                outcome.update(row["step"], float(row["memorized_fraction"]))
        return outcome

    def update(self, step: int, fraction: float) -> bool:
        """Record the evaluation of `step`; returns whether this state is the one to keep (within budget)."""
        if fraction <= self.max_memorized_fraction:
            self.saved_step, self.saved_fraction = step, fraction
            return True
        self.stopped_at_step, self.stopped_fraction = step, fraction
        return False


def budget_message(outcome: BudgetOutcome) -> str:
    """One line for config, metrics and card, e.g. ``stopped at step 480: copies 3.1% > 2%; saved step 320``."""
    limit = f"{100 * outcome.max_memorized_fraction:.3g}%"
    if not outcome.stopped:
        return f"memorization budget {limit} never exceeded along training; saved the last step"
    head = f"stopped at step {outcome.stopped_at_step}: copies {100 * outcome.stopped_fraction:.3g}% > {limit}"
    if outcome.saved_fraction is None or outcome.saved_fraction > outcome.max_memorized_fraction:
        return (
            f"{head}; no evaluated state was within the budget: saved step {outcome.saved_step} (the starting model)"
        )
    return f"{head}; saved step {outcome.saved_step} (copies {100 * outcome.saved_fraction:.3g}%)"

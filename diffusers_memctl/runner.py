"""One training job end to end: train, evaluate, write the model card, optionally push.

The training script and every sweep cell call :func:`run_training_job`, so there is exactly one path from settings
to a finished, evaluated run folder. The run folder is locked for the whole job (training, evaluation and card), and
every setting is checked before any data is loaded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .args import TrainingOptions
from .data import load_training_data
from .distributed import check_launch, process_state
from .evaluation import evaluate_run
from .features import check_feature_extractor
from .run_folder import RunFolder, launch_lock
from .training import TrainResult, finished_run_result, plan_run, train
from .validation import validate_options

__all__ = ["AfterTrainingError", "evaluate_options", "run_training_job"]

logger = logging.getLogger(__name__)


class AfterTrainingError(RuntimeError):
    """A step after training (evaluation, model card, push) failed; the trained pipeline is saved and kept."""


@contextlib.contextmanager
def _after_training(step: str, output_dir: Path, rerun: str) -> Iterator[None]:
    """Turn a failure of `step` into one line that says the model is safe and how to rerun only that step."""
    try:
        yield
    except Exception as error:
        reason = " ".join(part.strip() for part in str(error).splitlines() if part.strip()) or type(error).__name__
        raise AfterTrainingError(
            f"training finished and the pipeline is saved in {output_dir}, but the {step} failed "
            f"({type(error).__name__}: {reason}); rerun just that step: {rerun}"
        ) from error


def evaluate_options(options: TrainingOptions, *, progress: bool = True, training_data: Any = None) -> dict[str, Any]:
    """Run :func:`~diffusers_memctl.evaluation.evaluate_run` with the evaluation settings of `options`."""
    return evaluate_run(
        options.training.output_dir, options.evaluation, progress=progress, training_data=training_data
    )


def run_training_job(options: TrainingOptions, *, progress: bool = True) -> tuple[TrainResult, dict[str, Any] | None]:
    """Train, then (on the main process) evaluate, write ``README.md`` and push when asked.

    One pass: the options are validated once and the run folder is planned once ([`plan_run`], under the folder's
    lock, before any data is loaded); [`train`] receives that plan, and the training data loaded for training is the
    data the evaluation measures against. Resuming a finished run trains nothing: its evaluation is run only when it
    has none yet.

    Args:
        options ([`TrainingOptions`]): Every setting of the run.
        progress (`bool`, defaults to `True`): Show the evaluation's progress bars.

    Returns:
        `tuple`: The [`TrainResult`] and the metric report (`None` when evaluation is off, on other processes, or
        when a finished run already had one).
    """
    validate_options(options)
    state = process_state()
    # A launch whose processes would not train together stops before any data is loaded.
    check_launch(state.num_processes)
    output_dir = Path(options.training.output_dir)
    t_args = options.training
    with launch_lock(output_dir, is_main_process=state.is_main_process, num_processes=state.num_processes):
        # Planned before the data is loaded, so that a refused folder fails at once.
        plan = plan_run(
            output_dir,
            overwrite=t_args.overwrite_output_dir,
            resume=t_args.resume_from_checkpoint,
            max_train_steps=t_args.max_train_steps,
            num_epochs=t_args.num_epochs,
        )
        if plan.action == "finished":
            result, data = finished_run_result(output_dir), None
        else:
            data = load_training_data(options.data)
            if options.evaluation.feature_extractor and options.evaluation.eval_num_samples > 0:
                # A missing backbone should stop the job now, not after training.
                e = options.evaluation
                check_feature_extractor(
                    e.feature_extractor, data.modality, replication_threshold=e.replication_threshold
                )
            # Validated and planned once, here: train() follows this plan under this lock.
            result = train(options, data=data, plan=plan)
        if not state.is_main_process:
            return result, None
        try:
            return result, _report_and_publish(options, result, data, progress)
        except Exception as error:
            if options.hub.push_to_hub:
                # The error says what failed; this says that nothing reached the Hub and how to push later.
                logger.warning(
                    "nothing was pushed (%s); once that is fixed, push the run with: %s",
                    type(error).__name__,
                    push_command(options),
                )
            raise


def _report_and_publish(options: TrainingOptions, result: TrainResult, data: Any, progress: bool) -> dict | None:
    """Evaluate, write the card, push: each after the pipeline is saved, each failing with its own rerun line."""
    # hub (cards, pushes) sits above the runner in the layers: imported where a job reaches it.
    from .hub import write_model_card

    output_dir = Path(options.training.output_dir)
    # The same command again resumes the finished run: it redoes only the missing evaluation, card and push.
    again = f"the same command with --resume_from_checkpoint latest (the run folder {output_dir} is complete)"
    report = None
    evaluated = RunFolder(output_dir).is_evaluated
    if options.evaluation.eval_num_samples > 0 and not (result.already_finished and evaluated):
        with _after_training("evaluation", output_dir, f"memctl-evaluate {output_dir}"):
            report = evaluate_options(options, progress=progress, training_data=data)
    if result.already_finished and evaluated and RunFolder(output_dir).has_card:
        if options.hub.push_to_hub:
            # A finished run (e.g. after a push that failed offline) is pushed as it is: nothing is trained again.
            logger.info("%s holds a finished, evaluated run: pushing it as it is", output_dir)
            with _after_training("push to the Hub", output_dir, again):
                _push(options)
        return None
    with _after_training("model card", output_dir, again):
        write_model_card(options.training.output_dir, repo_id=options.hub.hub_model_id)
    if options.hub.push_to_hub:
        with _after_training("push to the Hub", output_dir, again):
            _push(options)
    return report


def push_command(options: TrainingOptions) -> str:
    """The command that pushes the run folder of `options` as it is (said when a push does not happen)."""
    hub = options.hub
    command = (
        f"memctl-train --output_dir {options.training.output_dir} --resume_from_checkpoint latest --push_to_hub "
        f"--hub_model_id {hub.hub_model_id or 'USER/NAME'}"
    )
    return command + (" --hub_private_repo" if hub.hub_private_repo else "")


def _push(options: TrainingOptions) -> None:
    from .hub import push_to_hub

    if not options.hub.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (user/name)")
    url = push_to_hub(
        options.training.output_dir,
        options.hub.hub_model_id,
        private=options.hub.hub_private_repo,
        include_checkpoints=options.hub.push_checkpoints,
    )
    logger.info("pushed %s to %s", options.training.output_dir, url)

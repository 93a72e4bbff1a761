"""Evaluation along training (``metrics_history.jsonl``) and the memorization budget, on tiny real runs.

Images (digits, with a held-out split) and signals (ECG5000); a SIGKILL in the middle of a run; a run made to copy
that a budget stops.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_memctl.cli.train import main
from diffusers_memctl.eval_history import BudgetOutcome, budget_message, read_history, truncate_history
from diffusers_memctl.experiments.methods import (
    FRONTIER_METHODS,
    LOGIT_MEAN_MATCHED_CI_LATE,
    STUDY_METHODS,
    mass_matched_logit_mean,
    parse_methods,
    resolve_method,
)
from diffusers_memctl.timestep_sampling import create_timestep_sampler

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training_scripts" / "train_memctl.py"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _argv(output_dir: Path, *extra: str, steps: int = 6) -> list[str]:
    return [
        "--output_dir", str(output_dir), "--model_preset", "tiny", "--max_train_steps", str(steps),
        "--train_batch_size", "8", "--checkpointing_steps", "0", "--save_images_epochs", "0",
        "--save_model_epochs", "0", "--num_inference_steps", "4", "--eval_batch_size", "16", "--logger", "none",
        "--dataset_name", "digits", "--resolution", "8", "--train_subset_size", "16", "--learning_rate", "1e-3",
        "--lr_warmup_steps", "1", *extra,
    ]  # fmt: skip


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pre") / "pretrained"
    main(_argv(run, "--eval_num_samples", "12", steps=4))
    return run


def test_history_holds_step0_every_n_steps_and_the_final_evaluation(pretrained, tmp_path):
    run = tmp_path / "fine"
    argv = _argv(
        run, "--pretrained_model_name_or_path", str(pretrained), "--eval_num_samples", "12",
        "--eval_every_steps", "2", "--eval_history_num_samples", "12", steps=5,
    )  # fmt: skip
    main(argv)
    rows = read_history(run)
    assert [(r["step"], r["final"]) for r in rows] == [(0, False), (2, False), (4, False), (5, True)]
    report = _metrics(run)
    # The last row is metrics.json; every row has its keys (held-out quality included: the subset leaves a held-out set).
    assert {k: rows[-1][k] for k in report["metrics"]} == report["metrics"]
    assert "heldout_frechet_distance" in report["metrics"]
    for row in rows:
        assert set(report["metrics"]) <= set(row) and row["num_samples"] == 12 and row["eval_seconds"] > 0
    # Step 0 is the pretrained model, evaluated in memory with the same settings and seed as its own metrics.json.
    pre = _metrics(pretrained)["metrics"]
    for key in ("memorized_fraction", "nn_l2_mean", "heldout_frechet_distance", "pca_frechet_distance"):
        assert rows[0][key] == pytest.approx(pre[key], rel=1e-5, abs=1e-7)
    # The run trained: later rows differ from step 0.
    assert rows[2]["nn_l2_mean"] != pytest.approx(rows[0]["nn_l2_mean"], rel=1e-6)


def test_cheaper_intermediate_sample_count_is_recorded(pretrained, tmp_path):
    run = tmp_path / "cheap"
    main(
        _argv(
            run,
            "--pretrained_model_name_or_path",
            str(pretrained),
            "--eval_num_samples",
            "12",
            "--eval_every_steps",
            "3",
            "--eval_history_num_samples",
            "6",
            steps=3,
        )  # fmt: skip
    )
    rows = read_history(run)
    assert [(r["step"], r["num_samples"], r["final"]) for r in rows] == [(0, 6, False), (3, 12, True)]
    config = json.loads((run / "training_config.json").read_text())["args"]
    assert config["eval_history_num_samples"] == 6 and config["eval_every_steps"] == 3


def test_from_scratch_run_has_no_step0_row_and_reevaluation_rewrites_the_final_row(tmp_path):
    from diffusers_memctl.evaluation import evaluate_run

    run = tmp_path / "scratch"
    main(_argv(run, "--eval_num_samples", "8", "--eval_every_steps", "2", steps=4))
    assert [(r["step"], r["final"]) for r in read_history(run)] == [(2, False), (4, True)]
    report = evaluate_run(run, num_samples=10, batch_size=10, num_inference_steps=3, make_plots=False, progress=False)
    rows = read_history(run)
    assert [(r["step"], r["final"]) for r in rows] == [(2, False), (4, True)]
    assert rows[-1]["num_samples"] == 10 and rows[-1]["nn_l2_mean"] == report["metrics"]["nn_l2_mean"]


def test_signals_evaluate_along_training(shared_data, tmp_path):
    run = tmp_path / "ecg"
    argv = [
        "--output_dir", str(run), "--model_preset", "tiny", "--max_train_steps", "4", "--train_batch_size", "8",
        "--checkpointing_steps", "0", "--save_images_epochs", "0", "--save_model_epochs", "0",
        "--num_inference_steps", "3", "--logger", "none", "--dataset_name", "ecg5000",
        "--data_dir", str(shared_data / "ecg5000"), "--train_subset_size", "24", "--eval_num_samples", "8",
        "--eval_every_steps", "2",
    ]  # fmt: skip
    main(argv)
    rows = read_history(run)
    assert [(r["step"], r["final"]) for r in rows] == [(2, False), (4, True)]
    assert {k: rows[-1][k] for k in _metrics(run)["metrics"]} == _metrics(run)["metrics"]
    assert "heldout_frechet_distance" in rows[0]


def test_truncate_history_keeps_rows_up_to_the_checkpoint(tmp_path):
    rows = [{"step": s, "final": False, "memorized_fraction": 0.0} for s in (0, 2, 4, 6)]
    rows.append({"step": 6, "final": True, "memorized_fraction": 0.0})
    (tmp_path / "metrics_history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = truncate_history(tmp_path, 4)
    assert [r["step"] for r in kept] == [0, 2, 4] and read_history(tmp_path) == kept


# --------------------------------------------------------------------------------------------------------------
# SIGKILL in the middle: the resumed history equals the uninterrupted one (no duplicated or missing rows)
# --------------------------------------------------------------------------------------------------------------


def _rows_while_running(run: Path) -> list[int]:
    try:
        return [r["step"] for r in read_history(run)]
    except (OSError, ValueError):
        return []


@pytest.mark.slow
def test_history_after_sigkill_and_resume_equals_an_uninterrupted_run(pretrained, tmp_path):
    common = [
        "--pretrained_model_name_or_path", str(pretrained), "--eval_num_samples", "8", "--eval_every_steps", "2",
        "--checkpointing_steps", "3", "--seed", "5",
    ]  # fmt: skip
    steps = 14
    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *_argv(killed, *common, steps=steps)],
            cwd=tmp_path, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # Kill once the row of step 8 is written: checkpoint-6 exists, so the rows of 8 must be dropped and redone.
        deadline = time.monotonic() + 240
        while 8 not in _rows_while_running(killed):
            assert process.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no row of step 8 after 240 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "train_complete.json").exists()
    main(_argv(killed, *common, "--resume_from_checkpoint", "latest", steps=steps))
    reference = tmp_path / "reference"
    main(_argv(reference, *common, steps=steps))
    got, want = read_history(killed), read_history(reference)
    assert [(r["step"], r["final"]) for r in got] == [(s, False) for s in range(0, steps, 2)] + [(steps, True)]
    assert [(r["step"], r["final"]) for r in got] == [(r["step"], r["final"]) for r in want]
    for a, b in zip(got, want):
        for key in ("memorized_fraction", "nn_l2_mean", "heldout_frechet_distance"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


# --------------------------------------------------------------------------------------------------------------
# The memorization budget
# --------------------------------------------------------------------------------------------------------------


def test_budget_outcome_and_message():
    outcome = BudgetOutcome(0.02)
    assert outcome.update(0, 0.0) and outcome.update(160, 0.01)
    assert not outcome.update(320, 0.031)
    assert outcome.stopped and (outcome.saved_step, outcome.stopped_at_step) == (160, 320)
    assert budget_message(outcome) == "stopped at step 320: copies 3.1% > 2%; saved step 160 (copies 1%)"
    restored = BudgetOutcome.from_history(
        [{"step": 0, "memorized_fraction": 0.0}, {"step": 160, "memorized_fraction": 0.01}], 0.02
    )
    assert (restored.saved_step, restored.stopped) == (160, False)


def _copying_argv(run: Path, *extra: str) -> list[str]:
    # Made to copy: 4 training images, a high constant learning rate and no EMA, so samples drift onto training
    # images; the ratio threshold 0.95 counts near copies, so the copied share rises within a few dozen steps.
    return _argv(
        run, "--train_subset_size", "4", "--train_batch_size", "4", "--learning_rate", "1e-2", "--use_ema", "false",
        "--lr_scheduler", "constant", "--memorization_threshold", "0.95", "--num_inference_steps", "10",
        "--eval_num_samples", "16", "--eval_every_steps", "16", "--checkpointing_steps", "16", *extra, steps=64,
    )  # fmt: skip


@pytest.fixture(scope="module")
def copying_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("copy") / "free"
    # A budget that is never exceeded: every step of the run is evaluated, the last one included.
    main(_copying_argv(run, "--max_memorized_fraction", "0.999"))
    return run


@pytest.mark.slow
def test_budget_stops_at_the_first_evaluation_over_it_and_keeps_the_last_state_within(copying_run, tmp_path):
    free = [r for r in read_history(copying_run) if not r["final"]]
    fractions = [r["memorized_fraction"] for r in free]
    # The run copies: some evaluation after the first exceeds everything before it.
    first = next((i for i in range(1, len(free)) if fractions[i] > max(fractions[:i])), None)
    assert first is not None, f"the tiny run did not copy more along training: {fractions}"
    budget = (max(fractions[:first]) + fractions[first]) / 2
    run = tmp_path / "budget"
    main(_copying_argv(run, "--max_memorized_fraction", str(budget)))
    rows = read_history(run)
    stop, saved = free[first]["step"], free[first - 1]["step"]
    # Training stopped at the first evaluation over the budget (the same rows as the free run up to there) ...
    assert [r["step"] for r in rows if not r["final"]] == [r["step"] for r in free[: first + 1]]
    assert [r["memorized_fraction"] for r in rows if not r["final"]] == fractions[: first + 1]
    assert rows[-1]["final"] and rows[-1]["step"] == saved
    assert json.loads((run / "train_complete.json").read_text())["global_step"] == stop
    assert not (run / "checkpoints" / f"checkpoint-{stop}").exists()
    # ... and the saved pipeline holds the weights of that earlier evaluation (its checkpoint has the same ones),
    # not the weights of the step that stopped.
    saved_unet = load_file(run / "unet" / "diffusion_pytorch_model.safetensors")
    at_saved = load_file(run / "checkpoints" / f"checkpoint-{saved}" / "unet" / "diffusion_pytorch_model.safetensors")
    assert sorted(saved_unet) == sorted(at_saved)
    assert all(torch.equal(saved_unet[k], at_saved[k]) for k in saved_unet)
    # The final evaluation (metrics.json) is of the saved state: it copies no more than the budget allows.
    assert _metrics(run)["metrics"]["memorized_fraction"] == pytest.approx(fractions[first - 1])
    # Config, metrics and card say so.
    outcome = json.loads((run / "training_config.json").read_text())["memorization_budget"]
    assert outcome["stopped"] and outcome["stopped_at_step"] == stop and outcome["saved_step"] == saved
    assert outcome["message"].startswith(f"stopped at step {stop}: copies ")
    assert f"saved step {saved}" in outcome["message"]
    assert _metrics(run)["memorization_budget"]["message"] == outcome["message"]
    assert outcome["message"] in (run / "README.md").read_text()
    assert not (run / "budget_state").exists()


def test_budget_never_exceeded_saves_the_last_step(copying_run):
    outcome = json.loads((copying_run / "training_config.json").read_text())["memorization_budget"]
    assert not outcome["stopped"] and outcome["saved_step"] == 64
    assert "never exceeded" in outcome["message"]
    rows = read_history(copying_run)
    # The last step is checked too, then the final evaluation closes the file.
    assert [(r["step"], r["final"]) for r in rows] == [(s, False) for s in (16, 32, 48, 64)] + [(64, True)]
    a, b = rows[-2:]
    # The in-loop evaluation of the last step equals the final one from the saved pipeline (same settings).
    assert a["memorized_fraction"] == b["memorized_fraction"]
    assert a["nn_l2_mean"] == pytest.approx(b["nn_l2_mean"], rel=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max_memorized_fraction", "0.1"], "--max_memorized_fraction 0.1 needs --eval_every_steps"),
        (["--eval_every_steps", "2", "--eval_num_samples", "0"], "--eval_every_steps 2 needs --eval_num_samples"),
        (["--eval_every_steps", "-1"], "--eval_every_steps must be an integer >= 0"),
        (["--eval_every_steps", "2", "--max_memorized_fraction", "1.5"], "--max_memorized_fraction must lie in"),
        (["--eval_every_steps", "2", "--eval_history_num_samples", "1"], "--eval_history_num_samples must be"),
    ],
)
def test_bad_history_flags_are_one_clear_line(extra, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        main(_argv(tmp_path / "bad", "--eval_num_samples", "8", *extra))
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------------------------
# The frontier study's arms
# --------------------------------------------------------------------------------------------------------------


def test_logit_normal_matched_draws_as_few_low_noise_steps_as_ci_late():
    ci_late = float(create_timestep_sampler("ci_normal", 1000, ci_lower=750, ci_upper=1000).probs()[:750].sum())
    matched = resolve_method("logit_normal_matched").settings
    probs = create_timestep_sampler(
        "logit_normal", 1000, logit_mean=matched["logit_mean"], logit_std=matched["logit_std"]
    ).probs()
    assert float(probs[:750].sum()) == pytest.approx(ci_late, abs=2e-4)
    assert LOGIT_MEAN_MATCHED_CI_LATE == pytest.approx(mass_matched_logit_mean(), abs=1e-3)
    # The older "late" logit-normal is not mass-matched to ci_late (54% below 750, near ci_mid's 52%).
    late = STUDY_METHODS["logit_normal_late"].settings
    old = create_timestep_sampler("logit_normal", 1000, logit_mean=late["logit_mean"], logit_std=late["logit_std"])
    assert float(old.probs()[:750].sum()) > 0.5


def test_lower_learning_rate_arms_scale_the_sweep_learning_rate(tmp_path):
    from diffusers_memctl.args import TrainingOptions
    from diffusers_memctl.experiments.sweep import SweepCell, cell_options

    options = TrainingOptions()
    options.training.learning_rate = 2e-4
    for name, scale in (("uniform", 1.0), ("uniform_lr0.5", 0.5), ("uniform_lr0.25", 0.25)):
        cell = SweepCell("uniform", None, None, 0, method=name)
        got = cell_options(options, cell, tmp_path / name, tmp_path / "pre")
        assert got.training.learning_rate == pytest.approx(2e-4 * scale)
        assert got.sampling.timestep_sampling == "uniform" and got.sampling.method_name == name
    assert options.training.learning_rate == 2e-4
    # Named, not part of `all` (the regime study's list stays as published).
    assert set(FRONTIER_METHODS).isdisjoint(m.name for m in parse_methods("all"))


def test_a_sweep_pinned_before_evaluation_along_training_still_resumes(tmp_path):
    from diffusers_memctl.args import SweepArguments, TrainingOptions
    from diffusers_memctl.experiments.sweep import SWEEP_CONFIG_NAME, _check_sweep_config, _shared_settings

    options, sweep = TrainingOptions(), SweepArguments()
    old = _shared_settings(options, sweep)
    for key in ("eval_every_steps", "eval_history_num_samples", "max_memorized_fraction"):
        del old["training"][key]
    del old["sweep"]["pretrain_eval_every_steps"]
    (tmp_path / SWEEP_CONFIG_NAME).write_text(json.dumps(old))
    _check_sweep_config(tmp_path, _shared_settings(options, sweep))  # the defaults reproduce the old sweep
    options.evaluation.eval_every_steps = 100
    with pytest.raises(ValueError, match=r"training.eval_every_steps: None -> 100"):
        _check_sweep_config(tmp_path, _shared_settings(options, sweep))


@pytest.mark.slow
def test_a_study_evaluates_the_pretraining_and_every_arm_along_training(tmp_path):
    from diffusers_memctl.cli.sweep import main as sweep_main

    study = tmp_path / "study"
    sweep_main(
        [
            "--sweep_dir",
            str(study),
            "--dataset_name",
            "digits",
            "--resolution",
            "8",
            "--model_preset",
            "tiny",
            "--train_batch_size",
            "8",
            "--train_subset_sizes",
            "16",
            "--pretrain_seeds",
            "0",
            "--pretrain_max_train_steps",
            "6",
            "--pretrain_learning_rate",
            "1e-3",
            "--pretrain_eval_every_steps",
            "3",
            "--methods",
            "uniform,uniform_lr0.5,ci_late",
            "--seeds",
            "0",
            "--max_train_steps",
            "4",
            "--learning_rate",
            "2e-4",
            "--lr_warmup_steps",
            "1",
            "--eval_every_steps",
            "2",
            "--checkpointing_steps",
            "2",
            "--save_images_epochs",
            "0",
            "--save_model_epochs",
            "0",
            "--logger",
            "none",
            "--eval_num_samples",
            "12",
            "--eval_batch_size",
            "12",
            "--num_inference_steps",
            "3",
        ]  # fmt: skip
    )
    group = study / "n00016-p0"
    assert [(r["step"], r["final"]) for r in read_history(group / "pretrained")] == [(3, False), (6, True)]
    for arm in ("uniform", "uniform_lr0.5", "ci_late"):
        rows = read_history(group / "cells" / f"{arm}-seed0")
        assert [(r["step"], r["final"]) for r in rows] == [(0, False), (2, False), (4, True)]
        # Step 0 of every arm is the pretrained model: the pretraining's own last row.
        assert rows[0]["nn_l2_mean"] == pytest.approx(read_history(group / "pretrained")[-1]["nn_l2_mean"], rel=1e-5)
    lr = json.loads((group / "cells" / "uniform_lr0.5-seed0" / "training_config.json").read_text())["args"]
    assert lr["learning_rate"] == pytest.approx(1e-4)
    report = (study / "REPORT.md").read_text()
    assert report.splitlines()[2] == "<!-- matched-quality answer -->"
    assert "`ci_late` (CI-normal on [750, 1000]" in report
    rows = (study / "matched_quality" / "frontier_rows.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 + 3 * 3  # header, pretraining (2 rows), 3 arms x 3 evaluations

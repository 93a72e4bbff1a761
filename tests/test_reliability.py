"""Reliability of run folders (issue 12): each test reproduces one finding of the issue on a tiny run.

1. resuming never silently replaces a run; 2. one writer per run folder and per sweep cell (real processes);
3. no pickle is loaded on resume; 4. evaluation outputs are all or nothing, disk-full errors say so and name the path;
5. every flag is checked before anything is loaded or written, and errors are one line; 6. published files hold no
absolute local path and honour the umask. (7, the scheduler with T = 1, is in test_scheduler_common.py.)
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from diffusers_memctl import run_folder
from diffusers_memctl.cli.train import main, parse_training_options
from diffusers_memctl.evaluation import evaluate_run
from diffusers_memctl.run_folder import (
    LOCK_NAME,
    CheckpointError,
    DiskFullError,
    RunFolderBusyError,
    RunFolderMismatchError,
    UnsafeCheckpointError,
    disk_full_guard,
    run_lock,
    try_run_lock,
)
from diffusers_memctl.training import EMA_CONFIG_KEYS, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hub_fixtures  # noqa: E402

hub = hub_fixtures.hub  # the local Hub stand-in (tests/hub_stand_in.py)
REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "training_scripts" / "train_memctl.py"
SWEEP_SCRIPT = REPO / "training_scripts" / "sweep_ci_grid.py"


def _argv(output_dir: Path, *extra: str, steps: int = 4) -> list[str]:
    """A fast run: tiny model, 32 samples in batches of 16 (two steps per epoch), no previews, no tracker."""
    return [
        "--output_dir", str(output_dir),
        "--model_preset", "tiny",
        "--max_train_samples", "32",
        "--train_batch_size", "16",
        "--max_train_steps", str(steps),
        "--checkpointing_steps", "2",
        "--save_images_epochs", "0",
        "--eval_num_samples", "0",
        "--num_inference_steps", "3",
        "--logger", "none",
        *extra,
    ]  # fmt: skip


def _env(**extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MEMCTL_DEBUG", None)
    return {**env, **extra}


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "loss_history.jsonl").read_text().splitlines() if line]


def _weights(run: Path) -> bytes:
    """The saved weights' tensors as bytes (the header's metadata, which holds the run id, may list keys in any
    order: safetensors keeps metadata in a hash map)."""
    from safetensors.torch import load_file

    tensors = load_file(run / "unet" / "diffusion_pytorch_model.safetensors")
    return b"".join(key.encode() + tensors[key].numpy().tobytes() for key in sorted(tensors))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints 2 and 4 (copied by tests that change it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    main(_argv(run))
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(LOCK_NAME))
    return target


# ---- 1. resuming never replaces a run ---------------------------------------------------------------------------


def test_resuming_a_finished_run_is_a_no_op_that_says_so(finished_run, tmp_path, caplog):
    """The finding: rerun with fewer epochs and --resume_from_checkpoint latest replaced the finished model."""
    run = _copy(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints")  # as with --checkpointing_steps 0 in the report
    weights, history = _weights(run), (run / "loss_history.jsonl").read_text()
    result, report = main(_argv(run, "--num_epochs", "1", "--resume_from_checkpoint", "latest", steps=1))
    assert result.already_finished and result.global_step == 4 and report is None
    assert "finished run" in caplog.text and "nothing to resume" in caplog.text
    assert _weights(run) == weights and (run / "loss_history.jsonl").read_text() == history


def test_resume_without_a_checkpoint_never_starts_over_in_a_folder_holding_a_run(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    (run / "train_complete.json").unlink()  # a run stopped before its first checkpoint
    history = (run / "loss_history.jsonl").read_text()
    with pytest.raises(ValueError, match="no checkpoint .* holds a run .*--overwrite_output_dir"):
        main(_argv(run, "--resume_from_checkpoint", "latest", steps=2))
    assert (run / "loss_history.jsonl").read_text() == history  # nothing touched

    result, _ = main(_argv(run, "--resume_from_checkpoint", "latest", "--overwrite_output_dir", steps=2))
    assert result.global_step == 2 and _steps(run) == [1, 2]  # started over: not steps 1-4 followed by 1-2


# ---- 2. one writer per run folder and per sweep cell --------------------------------------------------------------


def _wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the process ended early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_second_training_into_a_busy_folder_fails_at_once_and_a_killed_holder_never_blocks(tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "first.log"
    flags = _argv(run, "--checkpointing_steps", "5", steps=2000)
    with open(log, "w") as handle:
        first = subprocess.Popen(
            [sys.executable, str(TRAIN_SCRIPT), *flags], env=_env(), stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(lambda: (run / "checkpoints" / "checkpoint-5").is_dir(), first, log)
        tic = time.monotonic()
        second = subprocess.run(
            [sys.executable, str(TRAIN_SCRIPT), *flags, "--resume_from_checkpoint", "latest"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert (
            len(lines) == 1 and lines[0].startswith("error: --output_dir") and "in use by another process" in lines[0]
        )
        assert "Traceback" not in second.stderr and "--debug" in lines[0]
        assert time.monotonic() - tic < 120  # at once: no waiting for the first run
        assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.wait(timeout=60)
    assert (run / LOCK_NAME).exists()  # left behind by the killed process ...
    with run_lock(run):  # ... and not held by anyone: the OS released it with the process
        pass
    killed_at = max(_steps(run))
    result, _ = main(
        [*_argv(run, "--checkpointing_steps", "5", steps=killed_at + 2), "--resume_from_checkpoint", "latest"]
    )
    assert result.global_step == killed_at + 2
    assert _steps(run) == list(range(1, killed_at + 3))  # one record per step: no interleaved writer


def test_the_lock_is_one_per_folder_and_reentrant_within_a_process(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from diffusers_memctl.run_folder import run_lock\nimport time\nwith run_lock({str(run)!r}):\n    print('held', flush=True)\n    time.sleep(120)",
        ],
        env={**_env(), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderBusyError, match="in use by another process"):
            main(_argv(run, steps=2))
        with pytest.raises(RunFolderBusyError):
            evaluate_run(run, num_samples=2)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with run_lock(run), run_lock(run):  # the same process may take it again (sweep cell -> training -> evaluation)
        pass


def test_a_process_that_loses_the_race_for_a_new_folder_removes_nothing(tmp_path, monkeypatch):
    """Two sweep workers reach a cell that does not exist yet: both see it missing, one creates and locks it.

    The loser must leave the folder and its lock file alone; before the fix it removed both, and a third worker then
    locked a fresh lock file and trained the same cell, deleting the first worker's checkpoint under way (CI failure
    of test_a_sweep_survives_workers_killed_at_random: "No such file or directory ... .checkpoint-2.partial").
    """
    cell = tmp_path / "cell"
    hold = f"from diffusers_memctl.run_folder import run_lock\nimport time\nwith run_lock({str(cell)!r}):\n    print('held', flush=True)\n    time.sleep(120)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold], env={**_env(), "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock_inode = (cell / LOCK_NAME).stat().st_ino
        # This process looked before the holder created the folder (the race window, made deterministic).
        monkeypatch.setattr(run_folder, "_is_new_folder", lambda folder: True)
        with try_run_lock(cell) as free:
            assert not free
        assert (cell / LOCK_NAME).stat().st_ino == lock_inode, "the loser removed the holder's lock file"
        monkeypatch.undo()
        third = subprocess.run(
            [sys.executable, "-c", f"from diffusers_memctl.run_folder import try_run_lock\nwith try_run_lock({str(cell)!r}) as free:\n    print(free)"],
            env={**_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert third.stdout.strip() == "False", third.stderr[-2000:]
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_a_new_folder_left_empty_is_removed_with_its_lock(tmp_path):
    cell = tmp_path / "cell"
    with try_run_lock(cell) as free:
        assert free and (cell / LOCK_NAME).exists()
    assert not cell.exists()
    with try_run_lock(cell) as free:
        (cell / "weights").write_text("x")
    assert (cell / "weights").exists() and (cell / LOCK_NAME).exists()


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrained") / "run"
    main(_argv(run, "--checkpointing_steps", "0", steps=2))
    return run


@pytest.mark.slow
def test_two_sweep_processes_on_one_folder_split_the_cells_and_train_each_once(pretrained_run, tmp_path):
    sweep_dir = tmp_path / "sweep"
    flags = [
        "--sweep_dir", str(sweep_dir), "--pretrained_run", str(pretrained_run),
        "--cells", "0:500,500:1000", "--include_uniform", "false", "--seeds", "0",
        "--model_preset", "tiny", "--max_train_samples", "32", "--train_batch_size", "16",
        "--max_train_steps", "40", "--checkpointing_steps", "0", "--save_images_epochs", "0",
        "--save_model_epochs", "0", "--eval_num_samples", "4", "--num_inference_steps", "2", "--logger", "none",
    ]  # fmt: skip
    processes, logs = [], []
    for name in ("a", "b"):
        logs.append(tmp_path / f"{name}.log")
        with open(logs[-1], "w") as handle:
            processes.append(
                subprocess.Popen(
                    [sys.executable, str(SWEEP_SCRIPT), *flags], env=_env(), stdout=handle, stderr=subprocess.STDOUT
                )
            )
    for process, log in zip(processes, logs):
        assert process.wait(timeout=420) == 0, log.read_text()[-3000:]
    text = "".join(log.read_text() for log in logs)
    for cell in ("ci-0000-0500-seed0", "ci-0500-1000-seed0"):
        # Trained by exactly one of the two processes, and its history is that of one run.
        assert text.count(f"{cell}: training") == 1, text[-4000:]
        assert _steps(sweep_dir / "cells" / cell) == list(range(1, 41))
    # The two processes overlapped: one of them met a cell that the other held, and moved on.
    assert "is run by another process: skipped" in text


# ---- 3. no pickle on resume -------------------------------------------------------------------------------------


class _Payload:
    """What an attacker plants: unpickling it creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _interrupted_copy(finished_run: Path, tmp_path: Path) -> Path:
    run = _copy(finished_run, tmp_path)
    (run / "train_complete.json").unlink()  # as if killed after its last checkpoint
    return run


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_never_unpickled(finished_run, tmp_path):
    run = _interrupted_copy(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    planted = run / "checkpoints" / "checkpoint-4" / "custom_checkpoint_1.pkl"
    torch.save(_Payload(marker), planted)  # the file format accelerate writes there
    # The payload works: torch.load(weights_only=False), as accelerate's load_custom_state does, runs it.
    torch.load(planted, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UnsafeCheckpointError, match=r"custom_checkpoint_1\.pkl.*--trust_checkpoint_pickles"):
        main(_argv(run, "--resume_from_checkpoint", "latest", steps=6))
    assert not marker.exists()


def test_checkpoints_hold_no_pickle_and_resume_exactly(finished_run, tmp_path):
    checkpoint = finished_run / "checkpoints" / "checkpoint-4"
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    # The EMA state is the config of unet_ema/ (EMAModel.save_pretrained's format) beside safetensors weights.
    ema_config = json.loads((checkpoint / "unet_ema" / "config.json").read_text())
    assert ema_config["optimization_step"] == 4
    assert sorted(p.name for p in (checkpoint / "unet_ema").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    run = _interrupted_copy(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    result, _ = main(_argv(run, "--resume_from_checkpoint", "latest"))  # from checkpoint-2
    assert result.global_step == 4 and _steps(run) == [1, 2, 3, 4]
    assert _weights(run) == _weights(finished_run)  # the resumed run ends where the uninterrupted one did


def test_a_trusted_checkpoint_of_version_0_1_still_resumes(finished_run, tmp_path):
    """Checkpoints written before this change pickled EMA (custom_checkpoint_0) and sampler state (_1)."""
    run = _interrupted_copy(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    checkpoint = run / "checkpoints" / "checkpoint-2"
    # Version 0.1 layout: accelerate's flat model.safetensors, EMA state pickled, no unet/ or unet_ema/ folders.
    ema_config = json.loads((checkpoint / "unet_ema" / "config.json").read_text())
    averaged = load_file(checkpoint / "unet_ema" / "diffusion_pytorch_model.safetensors")
    names = list(load_file(checkpoint / "unet" / "diffusion_pytorch_model.safetensors"))
    order = [name for name, _ in UNet2DModel.from_pretrained(checkpoint / "unet").named_parameters()]
    assert set(order) <= set(names)
    ema_state = {key: ema_config[key] for key in EMA_CONFIG_KEYS} | {"shadow_params": [averaged[n] for n in order]}
    torch.save(ema_state, checkpoint / "custom_checkpoint_0.pkl")
    torch.save({}, checkpoint / "custom_checkpoint_1.pkl")
    os.replace(checkpoint / "unet" / "diffusion_pytorch_model.safetensors", checkpoint / "model.safetensors")
    shutil.rmtree(checkpoint / "unet")
    shutil.rmtree(checkpoint / "unet_ema")
    (checkpoint / "sampler_state.safetensors").unlink()
    with pytest.raises(UnsafeCheckpointError):
        main(_argv(run, "--resume_from_checkpoint", "latest"))
    result, _ = main(_argv(run, "--resume_from_checkpoint", "latest", "--trust_checkpoint_pickles"))
    assert result.global_step == 4 and _weights(run) == _weights(finished_run)


def test_a_truncated_checkpoint_names_the_file_and_the_previous_checkpoint(finished_run, tmp_path):
    run = _interrupted_copy(finished_run, tmp_path)
    model = run / "checkpoints" / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        main(_argv(run, "--resume_from_checkpoint", "latest", steps=6))
    message = str(info.value)
    assert str(model) in message and "checkpoint-2" in message and "--resume_from_checkpoint" in message


# ---- 4. all-or-nothing evaluation, disk full --------------------------------------------------------------------


def _report_state(run: Path) -> dict[str, bytes]:
    names = ["metrics.json", "samples.npz", *(f"plots/{p.name}" for p in sorted((run / "plots").glob("*.png")))]
    return {name: (run / name).read_bytes() for name in names}


def _hidden(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".") and p.name != LOCK_NAME)


@pytest.mark.parametrize("fail_in", ["plots", "samples"])
def test_disk_full_during_evaluation_keeps_the_previous_report_whole(finished_run, tmp_path, monkeypatch, fail_in):
    """The finding: metrics and samples of N = 50 kept, but three plots already replaced by the failed run's."""
    import matplotlib.figure

    run = _copy(finished_run, tmp_path)
    evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False)
    before = _report_state(run)
    assert len(before) >= 5  # metrics, samples and at least three plots

    calls = {"n": 0}
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig_until_full(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savefig(self, *args, **kwargs)

    def savez_on_full_disk(handle, **arrays):
        handle.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_in == "plots":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_until_full)
    else:
        monkeypatch.setattr(np, "savez_compressed", savez_on_full_disk)
    with pytest.raises(DiskFullError, match="no space left on device") as info:
        evaluate_run(run, num_samples=6, num_inference_steps=2, seed=1, progress=False)
    assert str(run) in str(info.value)
    assert _report_state(run) == before  # every file of the previous report, byte for byte
    assert _hidden(run) == []  # no temporary file, no staging folder


def test_a_new_report_replaces_every_file_of_the_old_one(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False)
    (run / "plots" / "samples_epoch_0001.png").write_bytes(b"a training preview is not part of the report")
    evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False, make_plots=False)
    assert not (run / "plots" / "pca_scatter.png").exists()  # a plot of the older report cannot pass for this one's
    assert (run / "plots" / "samples_epoch_0001.png").is_file()
    assert json.loads((run / "metrics.json").read_text())["num_samples"] == 4 and _hidden(run) == []


class _FullDisk(io.RawIOBase):
    """A file whose disk fills up after `limit` bytes: write() fails with ENOSPC, as on a full filesystem."""

    def __init__(self, limit: int):
        self.written, self.limit = 0, limit

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return len(data)


def test_torch_save_on_a_full_disk_is_reported_as_no_space_left(tmp_path):
    """torch.save swallows the ENOSPC and says only 'unexpected pos': the guard still names the disk and the path."""
    target = tmp_path / "optimizer.bin"
    with pytest.raises(DiskFullError, match=f"no space left on device while writing the checkpoint {target}"):
        with disk_full_guard(target, "checkpoint"):
            torch.save({"state": torch.zeros(10_000)}, _FullDisk(1000))


def test_disk_full_while_checkpointing_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """The finding: `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos`, no path."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            return real_save(obj, _FullDisk(100), *args, **kwargs)  # the real torch writer on a full disk
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    options = parse_training_options(_argv(run, steps=6))
    with pytest.raises(DiskFullError) as info:
        train(options)
    message = str(info.value)
    assert "no space left on device" in message and str(run / "checkpoints") in message and "checkpoint-4" in message
    assert "checkpoint-2 is kept" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]  # no partial checkpoint left


# ---- 5. validation before anything happens; one-line errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--resolution", "0"], "--resolution must be an integer >= 1, got 0"),
        (["--ci_lower", "900", "--ci_upper", "100", "--timestep_sampling", "ci_normal"], "--ci_lower must be smaller"),
        (["--timestep_sampling", "ci_normal", "--ci_lower", "0", "--ci_upper", "2000"], "--ci_upper must be <= "),
        (["--train_batch_size", "0"], "--train_batch_size must be an integer >= 1, got 0"),
        (["--eval_num_samples", "1"], "--eval_num_samples must be 0"),
        (["--lr_scheduler", "cosinus"], "--lr_scheduler 'cosinus'"),
        (["--num_inference_steps", "0"], "--num_inference_steps must be an integer >= 1"),
    ],
)
@pytest.mark.parametrize("dry_run", [False, True])
def test_every_flag_is_checked_before_data_or_folders_even_in_a_dry_run(
    tmp_path, monkeypatch, flags, message, dry_run
):
    import diffusers_memctl.data as data
    import diffusers_memctl.runner as runner

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    monkeypatch.setattr(data, "load_training_data", no_data)
    monkeypatch.setattr(runner, "load_training_data", no_data)  # the job's own reference to it
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        main(_argv(run, *flags, *(["--dry_run"] if dry_run else [])))
    assert "t_lower" not in str(info.value) and "t_upper" not in str(info.value)
    assert not run.exists()


def test_a_sampler_setting_without_its_sampler_is_not_silently_ignored(tmp_path, caplog):
    main(_argv(tmp_path / "run", "--ci_lower", "900", "--ci_upper", "1000", "--dry_run"))
    assert "--ci_lower, --ci_upper have no effect with --timestep_sampling uniform" in caplog.text


def test_a_malformed_config_file_is_named(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text('{"seed": 1,}')
    with pytest.raises(ValueError, match=f"--config {config} is not valid JSON"):
        parse_training_options(["--config", str(config)])


def test_a_non_utf8_ucr_file_is_named(tmp_path):
    from diffusers_memctl.data.ucr import load_ucr_file

    path = tmp_path / "ECG_TRAIN.txt"
    path.write_bytes("1 0.5 0.25\n2 0.1 0.2 \xb5\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path} is not UTF-8 text"):
        load_ucr_file(path)


@pytest.mark.slow
def test_a_user_error_on_the_command_line_is_one_line_and_debug_shows_the_traceback(finished_run):
    command = [sys.executable, str(TRAIN_SCRIPT), *_argv(finished_run, steps=2)]  # a folder holding a run
    plain = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=240)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [
        next(line for line in plain.stderr.splitlines() if line.startswith("error: --output_dir"))
    ]
    assert "already holds a run" in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run(command, env=_env(MEMCTL_DEBUG="1"), capture_output=True, text=True, timeout=240)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "already holds a run" in debug.stderr


# ---- 6. published files ----------------------------------------------------------------------------------------


def test_published_files_hold_no_absolute_path_and_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        run = tmp_path / "run"
        main(_argv(run, "--eval_num_samples", "4", steps=2))
    finally:
        os.umask(previous)
    for name in ("training_config.json", "metrics.json", "README.md"):
        text = (run / name).read_text()
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, name
    assert json.loads((run / "training_config.json").read_text())["args"]["output_dir"] == "."
    for name in (
        "README.md",
        "training_config.json",
        "metrics.json",
        "unet/diffusion_pytorch_model.safetensors",
        "checkpoints/checkpoint-2/unet/diffusion_pytorch_model.safetensors",
        "checkpoints/checkpoint-2/unet_ema/diffusion_pytorch_model.safetensors",
    ):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


# ==================================================================================================================
# Issue 20: each of the 13 findings of the second audit, reproduced with the real fault
# ==================================================================================================================

KILL_HOOK = """
import os, signal, sys
sys.argv = [sys.argv[0], *{argv!r}]
import {module} as target
real = getattr(target, {name!r})
def after_then_kill(*args, **kwargs):
    result = real(*args, **kwargs)
    if any(str(arg).endswith({suffix!r}) for arg in args):
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill, right after the named call returned
    return result
setattr(target, {name!r}, after_then_kill)
{call}
"""


def _run_killed_after(tmp_path: Path, module: str, name: str, suffix: str, call: str, argv: list[str]) -> None:
    """Run `call` in a fresh Python process that SIGKILLs itself right after ``module.name(..., *suffix)`` returns."""
    script = tmp_path / "killed.py"
    script.write_text(KILL_HOOK.format(argv=argv, module=module, name=name, suffix=suffix, call=call))
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**_env(), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


class _ShortWrite:
    """A file whose disk fills up on the next write: half the bytes reach the disk, then ENOSPC (as write(2) does)."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_1_a_partial_last_line_of_the_loss_history_never_blocks_resume(tmp_path, monkeypatch):
    """The finding: a full disk while appending left `{"step": 3, "epo`; resume failed with `Expecting ','`."""
    import builtins

    import diffusers_memctl.run_folder as run_folder

    def open_until_step_5(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)
        if str(path).endswith("loss_history.jsonl") and "a" in mode and len(_steps(path.parent)) == 4:
            return _ShortWrite(handle)
        return handle

    run = tmp_path / "run"
    # The loss history is appended by run_folder (RunFolder.append_loss_record).
    monkeypatch.setattr(run_folder, "open", open_until_step_5, raising=False)
    with pytest.raises(DiskFullError, match="loss history"):
        main(_argv(run, steps=6))
    monkeypatch.undo()
    text = (run / "loss_history.jsonl").read_text()
    assert not text.endswith("\n") and text.rsplit("\n", 1)[1].startswith('{"step": 5')  # the partial line is there
    result, _ = main(_argv(run, "--resume_from_checkpoint", "latest", steps=6))
    assert result.global_step == 6 and _steps(run) == [1, 2, 3, 4, 5, 6]  # every step once


def test_1_read_jsonl_drops_a_partial_last_line_and_repairs_the_file(tmp_path):
    from diffusers_memctl.run_folder import read_jsonl

    path = tmp_path / "metrics_history.jsonl"
    path.write_text('{"step": 10, "nn_l2": 1.5}\n{"step": 20, "nn_')
    assert read_jsonl(path) == [{"step": 10, "nn_l2": 1.5}]
    assert path.read_text().endswith('"nn_')  # reading alone changes nothing
    assert read_jsonl(path, repair=True) == [{"step": 10, "nn_l2": 1.5}]
    assert path.read_text() == '{"step": 10, "nn_l2": 1.5}\n'
    path.write_text('{"step": 10}\n{"step": 20}')  # a whole record whose newline was cut is kept
    assert read_jsonl(path, repair=True) == [{"step": 10}, {"step": 20}] and path.read_text().endswith("}\n")
    path.write_text('{"step": 10}\n{"ste\n{"step": 30}\n')  # damage inside the file is not silently skipped
    with pytest.raises(ValueError, match=f"{path} line 2 is not JSON"):
        read_jsonl(path)


@pytest.mark.parametrize("subset", [2, 8])
def test_2_evaluation_and_previews_work_with_fewer_training_samples_than_generated(tmp_path, subset):
    """The finding: `--train_subset_size 8` with 16 evaluation samples failed after training, no pipeline saved."""
    run = tmp_path / "run"
    flags = ["--train_subset_size", str(subset), "--train_batch_size", "2", "--eval_num_samples", "16"]
    main(_argv(run, *flags, "--save_images_epochs", "1", steps=2))
    report = json.loads((run / "metrics.json").read_text())
    assert report["num_samples"] == 16 and report["settings"]["num_training_samples"] == subset
    assert report["settings"]["pca_components"] == min(2, subset - 1)
    assert (run / "model_index.json").is_file() and (run / "plots" / "pca_scatter.png").is_file()
    assert (run / "plots" / "samples_epoch_0001.png").is_file()


def test_3_a_killed_overwrite_never_leaves_a_folder_mixing_two_runs(finished_run, tmp_path):
    """The finding: killed right after the new training_config.json, the folder kept the old unet/, card and metrics."""
    run = _copy(finished_run, tmp_path)
    evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False)
    old_unet = tmp_path / "old_unet"
    shutil.copytree(run / "unet", old_unet)
    argv = _argv(run, "--overwrite_output_dir", "--seed", "1")
    call = "from diffusers_memctl.cli.train import main; main(sys.argv[1:])"
    # The config is written by run_folder (RunFolder.write_training_config -> write_json_atomic).
    _run_killed_after(tmp_path, "diffusers_memctl.run_folder", "write_json_atomic", "training_config.json", call, argv)
    config = json.loads((run / "training_config.json").read_text())
    assert config["args"]["seed"] == 1  # killed with the new run's config in place ...
    left = {p.name for p in run.iterdir()} - {LOCK_NAME, "training_config.json"}
    assert left == set(), left  # ... and nothing of the old run beside it
    with pytest.raises(FileNotFoundError, match="holds no saved model"):
        evaluate_run(run, num_samples=4, num_inference_steps=2, progress=False)

    # Had the old weights and report survived (planted back here), the run ids tell them apart.
    shutil.copytree(old_unet, run / "unet")
    shutil.copy(finished_run / "model_index.json", run / "model_index.json")
    shutil.copytree(finished_run / "scheduler", run / "scheduler")
    with pytest.raises(RunFolderMismatchError, match="different runs"):
        evaluate_run(run, num_samples=4, num_inference_steps=2, progress=False)


def test_run_id_ties_config_weights_metrics_and_card_and_survives_resume(finished_run, tmp_path):
    from diffusers_memctl.run_folder import check_run_ids, run_ids

    run = _interrupted_copy(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")
    main(_argv(run, "--resume_from_checkpoint", "latest", "--eval_num_samples", "4"))
    ids = run_ids(run)
    assert set(ids) == {"training_config.json", "unet", "metrics.json", "README.md"}
    assert len(set(ids.values())) == 1 and ids["unet"] == run_ids(finished_run)["training_config.json"]
    assert check_run_ids(run, action="push") == ids["unet"]
    main(_argv(run, "--overwrite_output_dir", "--eval_num_samples", "4", steps=2))
    new_ids = run_ids(run)
    assert len(set(new_ids.values())) == 1 and new_ids["unet"] != ids["unet"]  # a new run, a new id


def test_3_sweeps_and_pushes_refuse_a_folder_whose_parts_disagree(finished_run, tmp_path):
    from diffusers_memctl.hub import push_to_hub
    from diffusers_memctl.sweep import is_run_evaluated

    run = _copy(finished_run, tmp_path)
    evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False)
    assert is_run_evaluated(run)
    other = tmp_path / "other"
    main(_argv(other, "--seed", "1", "--eval_num_samples", "4", steps=2))
    shutil.copy(other / "metrics.json", run / "metrics.json")  # another run's report planted
    assert not is_run_evaluated(run)  # a sweep trains and evaluates this cell again
    with pytest.raises(RunFolderMismatchError, match="metrics.json has"):
        push_to_hub(run, "me/mixed", endpoint="http://127.0.0.1:9")  # refused before any request


def _kill_inside_the_report_swap(run: Path, tmp_path: Path) -> None:
    call = (
        "from diffusers_memctl.evaluation import evaluate_run\n"
        f"evaluate_run({str(run)!r}, num_samples=6, num_inference_steps=2, seed=1, progress=False)"
    )
    # os.replace(<run>/metrics.json, <staging>/.old/metrics.json): the old report has just been moved aside.
    _run_killed_after(tmp_path, "os", "replace", "/.old/metrics.json", call, [])


def test_4_a_kill_inside_the_evaluation_swap_never_loses_metrics_json(finished_run, tmp_path, monkeypatch):
    """The finding: killed right after metrics.json was moved aside, the next evaluation deleted its only copy."""
    import matplotlib.figure

    from diffusers_memctl.sweep import is_run_evaluated

    run = _copy(finished_run, tmp_path)
    evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False)
    _kill_inside_the_report_swap(run, tmp_path)
    assert not (run / "metrics.json").exists()  # the state the kill left: the report only in the staging folder
    assert not is_run_evaluated(run)

    def savefig_on_full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig_on_full_disk)
    with pytest.raises(DiskFullError):  # the next evaluation fails too ...
        evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False)
    report = json.loads((run / "metrics.json").read_text())
    assert report["num_samples"] == 6  # ... yet completed the interrupted swap first: the killed run's whole report
    assert (run / "samples.npz").is_file() and _hidden(run) == []
    assert np.load(run / "samples.npz")["samples"].shape[0] == 6


def _short_safetensors_write(target_fragment: str):
    """`safetensors.torch.save_file` on a full disk: half the bytes reach the file, then the error safetensors raises."""
    import safetensors.torch
    from safetensors import SafetensorError
    from safetensors.torch import save

    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if target_fragment not in str(filename):
            return real(tensors, filename, metadata=metadata)
        payload = save(tensors, metadata=metadata)
        Path(filename).write_bytes(payload[: len(payload) // 2])
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    return save_file


@pytest.mark.parametrize("where", ["checkpoint", "final weights"])
def test_5_disk_full_inside_safetensors_saves_names_the_path_and_leaves_no_partial_file(tmp_path, monkeypatch, where):
    """The finding: `unexpected SafetensorError ... No space left on device`, no path, a partial checkpoint left."""
    import safetensors.torch

    run = tmp_path / "run"
    # Checkpoints hold unet/ (and unet_ema/) written by diffusers' save_pretrained, which calls safetensors'
    # save_file, like the final pipeline (built in a staging folder, then swapped in).
    fragment = "checkpoint-4" if where == "checkpoint" else "staging-pipeline"
    monkeypatch.setattr(safetensors.torch, "save_file", _short_safetensors_write(fragment))
    with pytest.raises(DiskFullError, match="no space left on device") as info:
        main(_argv(run, steps=4))
    message = str(info.value)
    if where == "checkpoint":
        assert "checkpoint-4" in message and "checkpoint-2 is kept" in message
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2"]
    else:
        assert str(run / "unet") in message and "no weights were saved" in message
        assert not (run / "unet").exists() and not (run / "model_index.json").exists()
        assert not list(run.glob(".staging-*"))
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("unet_ema/diffusion_pytorch_model.safetensors", "missing"),
        ("sampler_state.safetensors", "truncated"),
        ("scheduler.bin", "truncated"),
    ],
)
def test_6_an_unreadable_checkpoint_names_the_file_that_is_actually_bad(finished_run, tmp_path, name, damage):
    """The finding: every such error blamed the untouched random_states_0.pkl."""
    from diffusers_memctl.run_folder import find_unreadable_file

    run = _interrupted_copy(finished_run, tmp_path)
    checkpoint = run / "checkpoints" / "checkpoint-4"
    assert find_unreadable_file(checkpoint) is None  # an untouched checkpoint: nothing to blame
    path = checkpoint / name
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as info:
        main(_argv(run, "--resume_from_checkpoint", "latest", steps=6))
    message = str(info.value)
    assert str(path) in message and "random_states_0.pkl" not in message and "checkpoint-2" in message


@pytest.mark.parametrize("dry_run", [False, True])
def test_7_an_output_dir_that_is_a_file_is_one_clear_error(tmp_path, dry_run):
    target = tmp_path / "run"
    target.write_text("not a folder")
    with pytest.raises(ValueError, match=f"--output_dir {target} exists and is a file"):
        main(_argv(target, *(["--dry_run"] if dry_run else [])))
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        with run_lock(target):
            pass
    assert target.read_text() == "not a folder"


@pytest.mark.parametrize("dry_run", [False, True])
def test_8_a_resolution_too_large_for_memory_is_refused_before_any_allocation(tmp_path, monkeypatch, dry_run):
    """The finding: `unexpected MemoryError: Unable to allocate 49.0 TiB` during data loading; --dry_run accepted."""
    import diffusers_memctl.data as data
    import diffusers_memctl.runner as runner

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the size was checked")

    monkeypatch.setattr(data, "load_training_data", no_data)
    monkeypatch.setattr(runner, "load_training_data", no_data)  # the job's own reference to it
    with pytest.raises(ValueError, match=r"--resolution 100000 .* needs about .* TiB of memory, more than"):
        main(_argv(tmp_path / "run", "--resolution", "100000", *(["--dry_run"] if dry_run else [])))
    assert not (tmp_path / "run").exists()


def test_8_the_data_loader_checks_the_whole_data_set_before_allocating(monkeypatch):
    import diffusers_memctl.resources as resources
    from diffusers_memctl.data.images import load_digits_dataset, preprocess_images

    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 1 << 20)  # a machine with 1 MiB free
    needed = 1797 * 64 * 64 * 3 * (1 + 4 + 4) / 2**20  # uint8 pixels, float32 samples, one float32 copy
    with pytest.raises(ValueError, match=rf"preprocessing 1797 images at resolution 64 needs about {needed:.1f} MiB"):
        preprocess_images(load_digits_dataset(), "image", 64)


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["--num_epoch", "5"], "(did you mean --num_epochs?)"),
        (["--learnig_rate=1e-3"], "(did you mean --learning_rate?)"),
        (["--config", "{config}"], "(did you mean num_epochs?)"),
    ],
)
def test_9_12_an_unknown_flag_or_config_key_is_at_most_three_lines_with_a_suggestion(tmp_path, argv, hint):
    """The findings: 73 lines of usage before the error; `--num_epoch 5` silently taken as `--num_epochs`."""
    config = tmp_path / "settings.json"
    config.write_text('{"num_epoch": 5}')
    argv = [a.replace("{config}", str(config)) for a in argv]
    done = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), *argv, "--dry_run"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and 1 <= len(lines) <= 3, done.stderr
    assert lines[-1].endswith(hint) and "error:" in lines[-1]
    with pytest.raises(SystemExit):  # in-process too: no prefix matching
        parse_training_options(argv)


def test_10_checkpoints_hold_only_finite_weights_and_the_error_says_what_is_kept(tmp_path):
    """The finding: "the last good checkpoint is kept" when none existed; a kept checkpoint diverged at once."""
    from diffusers_memctl.training import NonFiniteLossError

    run = tmp_path / "run"
    lr = ["--learning_rate", "1e39", "--lr_warmup_steps", "0", "--checkpointing_steps", "1"]
    with pytest.raises(NonFiniteLossError, match="became non-finite at step 1") as info:
        main(_argv(run, *lr, steps=4))  # float32 weights overflow to inf in the first step
    assert "checkpoint-1 was not written; no checkpoint was written" in str(info.value)
    assert not (run / "checkpoints").exists() or not list((run / "checkpoints").iterdir())

    run = tmp_path / "run2"
    lr = ["--learning_rate", "1e6", "--lr_warmup_steps", "0", "--checkpointing_steps", "1"]
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 2") as info:
        main(_argv(run, *lr, steps=4))
    message = str(info.value)
    assert "checkpoint-1 is kept but holds the weights this loss was computed with" in message
    assert "no earlier checkpoint" in message
    assert "last good checkpoint is kept" not in message
    for checkpoint in (run / "checkpoints").iterdir():
        for folder in ("unet", "unet_ema"):
            weights = load_file(checkpoint / folder / "diffusion_pytorch_model.safetensors")
            assert all(torch.isfinite(t).all() for t in weights.values()), (checkpoint, folder)


def test_11_an_inverted_interval_is_refused_whatever_the_sampler_and_warnings_come_once(tmp_path, caplog):
    with pytest.raises(ValueError, match="--ci_lower must be smaller than --ci_upper"):
        main(_argv(tmp_path / "inverted", "--ci_lower", "900", "--ci_upper", "100"))  # uniform sampling
    assert not (tmp_path / "inverted").exists()
    main(_argv(tmp_path / "run", "--ci_lower", "900", "--ci_upper", "1000", steps=1))
    assert caplog.text.count("have no effect with --timestep_sampling uniform") == 1  # was printed 3 times


@pytest.mark.parametrize("dry_run", [False, True])
def test_12_an_empty_folder_as_pretrained_model_is_one_clear_line(tmp_path, dry_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"--pretrained_model_name_or_path {empty} holds no diffusers model"):
        main(_argv(tmp_path / "run", "--pretrained_model_name_or_path", str(empty), *(["--dry_run"] * dry_run)))
    assert not (tmp_path / "run").exists()


def test_13_pushing_a_finished_run_pushes_it_and_a_failed_push_gives_the_command(
    finished_run, tmp_path, hub, monkeypatch, caplog
):
    """The finding: `--push_to_hub --resume_from_checkpoint latest` on a finished run: "nothing to resume", no push."""
    run = _copy(finished_run, tmp_path)
    evaluate_run(run, num_samples=4, num_inference_steps=2, seed=0, progress=False)
    monkeypatch.setenv("HF_TOKEN", hub_fixtures.TOKEN)
    flags = ["--resume_from_checkpoint", "latest", "--push_to_hub"]
    result, _ = main(_argv(run, *flags, "--hub_model_id", "me/finished"))
    assert result.already_finished
    stored = hub.server.files("me/finished")
    weights = (run / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert stored["unet/diffusion_pytorch_model.safetensors"] == weights and "metrics.json" in stored

    caplog.clear()
    with pytest.raises(Exception, match="invalid Hub repo id"):  # noqa: B017 - wrapped by the after-training error
        main(_argv(run, *flags, "--hub_model_id", "bad id!"))
    assert "nothing was pushed (" in caplog.text
    assert "--resume_from_checkpoint latest --push_to_hub --hub_model_id bad id!" in caplog.text

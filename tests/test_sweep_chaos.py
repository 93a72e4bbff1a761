"""Chaos test of a sweep (issue 20): worker processes share one --sweep_dir while a driver SIGKILLs them at random.

Four sweep processes run the same sweep on the 2-core machine; every few seconds the driver kills a random one with
SIGKILL (in training, in a checkpoint save, in the evaluation's swap, in the analysis: wherever it happens to be) and
starts a new one, until every cell is evaluated. Only workers past their start-up (Python imports take seconds, far
more on a loaded machine) are killed, and after `MAX_KILLS` kills the sweep is left to finish, so the test ends on
any machine. Afterwards every cell is done exactly once in sweep_results.csv,
its config, weights, metrics and card carry one run id, its loss history holds every step once, and no temporary,
staging or partial file is left. The figures (cells, kills survived, rows lost) are printed for the README.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffusers_memctl.cli.train import main
from diffusers_memctl.experiments.sweep import is_run_evaluated
from diffusers_memctl.run_folder import LOCK_NAME, check_run_ids, run_ids

REPO = Path(__file__).resolve().parents[1]
SWEEP_SCRIPT = REPO / "training_scripts" / "sweep_ci_grid.py"
CELLS = ("0:500", "500:1000", "250:750", "0:1000", "750:1000", "0:250")
STEPS = 8
NUM_WORKERS = 4
KILL_EVERY_S = (2.0, 5.0)
MAX_KILLS = 10
TIME_LIMIT_S = 900
#: A worker logs this once it has parsed its flags and pinned the sweep settings: from then on it writes.
WORKING = "cells in the sweep"


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MEMCTL_DEBUG", None)
    return {**env, "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}


def _cell_name(cell: str) -> str:
    lo, hi = (int(v) for v in cell.split(":"))
    return f"ci-{lo:04d}-{hi:04d}-seed0"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("chaos") / "pretrained"
    main(
        [
            "--output_dir",
            str(run),
            "--model_preset",
            "tiny",
            "--max_train_samples",
            "32",
            "--train_batch_size",
            "16",
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "0",
            "--save_images_epochs",
            "0",
            "--eval_num_samples",
            "0",
            "--logger",
            "none",
        ]  # fmt: skip
    )
    return run


def _sweep_command(sweep_dir: Path, pretrained: Path) -> list[str]:
    return [
        sys.executable, str(SWEEP_SCRIPT),
        "--sweep_dir", str(sweep_dir), "--pretrained_run", str(pretrained),
        "--cells", ",".join(CELLS), "--include_uniform", "false", "--seeds", "0",
        "--model_preset", "tiny", "--max_train_samples", "32", "--train_batch_size", "16",
        "--max_train_steps", str(STEPS), "--checkpointing_steps", "2", "--save_images_epochs", "0",
        "--save_model_epochs", "0", "--eval_num_samples", "4", "--num_inference_steps", "2", "--logger", "none",
    ]  # fmt: skip


def _all_evaluated(sweep_dir: Path) -> bool:
    return all(is_run_evaluated(sweep_dir / "cells" / _cell_name(cell)) for cell in CELLS)


def _leftovers(sweep_dir: Path) -> list[str]:
    """Temporary, staging and partial files anywhere under the sweep folder (locks are not leftovers)."""
    bad = []
    for path in sweep_dir.rglob("*"):
        name = path.name
        if name == LOCK_NAME:
            continue
        if ".tmp" in name or name.startswith(".staging-") or name.endswith(".partial") or name == ".swap.json":
            bad.append(str(path.relative_to(sweep_dir)))
    return bad


@pytest.mark.slow
def test_a_sweep_survives_workers_killed_at_random(pretrained, tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = _sweep_command(sweep_dir, pretrained)
    rng = random.Random(20)
    logs = tmp_path / "logs"
    logs.mkdir()
    workers: list[subprocess.Popen] = []
    log_of: dict[int, Path] = {}
    started = kills = 0

    def start() -> None:
        nonlocal started
        started += 1
        log_of[started] = logs / f"worker-{started:03d}.log"
        with open(log_of[started], "w") as handle:
            workers.append(subprocess.Popen(command, env=_env(), stdout=handle, stderr=subprocess.STDOUT))
        workers[-1].number = started

    def working(worker: subprocess.Popen) -> bool:
        return worker.poll() is None and WORKING in log_of[worker.number].read_text(errors="replace")

    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        for _ in range(NUM_WORKERS):
            start()
        while not _all_evaluated(sweep_dir):
            assert time.monotonic() < deadline, f"the sweep did not finish: {kills} kills, {started} workers"
            time.sleep(rng.uniform(*KILL_EVERY_S))
            failed = [w for w in workers if w.poll() not in (None, 0, -signal.SIGKILL)]
            assert not failed, log_of[failed[0].number].read_text()[-3000:]
            candidates = [w for w in workers if working(w)]
            if candidates and kills < MAX_KILLS and not _all_evaluated(sweep_dir):
                victim = rng.choice(candidates)
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=60)
                kills += 1
            workers = [w for w in workers if w.poll() is None]
            while len(workers) < NUM_WORKERS:
                start()
        # Every cell is done: the workers still running finish (they only skip cells and analyse).
        for worker in workers:
            assert worker.wait(timeout=300) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=60)
    # One more sweep process after the last kill writes the final analysis (a worker may have died in it).
    final = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]

    with open(sweep_dir / "sweep_results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = sorted(Path(row["run_dir"]).name for row in rows)
    assert names == sorted(_cell_name(cell) for cell in CELLS)  # every cell exactly once: no row lost or doubled
    for cell in CELLS:
        run = sweep_dir / "cells" / _cell_name(cell)
        ids = run_ids(run)
        assert set(ids) == {"training_config.json", "unet", "metrics.json", "README.md"}, (cell, ids)
        assert check_run_ids(run, action="check") is not None  # one run id in config, weights, metrics and card
        steps = [json.loads(line)["step"] for line in (run / "loss_history.jsonl").read_text().splitlines()]
        assert steps == list(range(1, STEPS + 1)), (cell, steps)  # every step once, whatever was killed
        assert (run / "train_complete.json").is_file()
    assert _leftovers(sweep_dir) == []
    print(f"chaos sweep: {len(CELLS)} cells, {kills} kills survived, {started} workers started, rows lost = 0")
    assert kills >= 3  # the sweep was really interrupted

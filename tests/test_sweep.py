"""Tests of CI-grid sweeps (`diffusers_memctl.experiments.sweep`, `training_scripts/sweep_ci_grid.py`): grids, sharding, a tiny
end-to-end sweep, skipping and resuming cells, refusing bad input, and the analysis against scipy."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from huggingface_hub import metadata_load

import diffusers_memctl.experiments.sweep as sweep_module
from diffusers_memctl.args import SweepArguments
from diffusers_memctl.experiments.sweep import (
    SweepCell,
    build_cells,
    export_sweep_results,
    is_run_evaluated,
    parse_cells,
    report_from_results,
    shard_cells,
    triangular_grid,
)

# Tiny models run fastest on one thread; two spinning threads on a busy 2-core machine cost seconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "training_scripts" / "sweep_ci_grid.py"
# The script itself, not only the library function behind it.
sweep_script = runpy.run_path(str(SCRIPT))["main"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CELLS = "0:300,300:700,600:1000,0:1000"  # four intervals: the fewest with a Pearson r and a Fisher-z interval
RUN_NAMES = ["ci-0000-0300-seed0", "ci-0000-1000-seed0", "ci-0300-0700-seed0", "ci-0600-1000-seed0", "uniform-seed0"]


def sweep_flags(sweep_dir: Path, *extra: str) -> list[str]:
    """Flags of a tiny sweep (later flags win, so `extra` can override any of them)."""
    return [
        "--sweep_dir", str(sweep_dir),
        "--model_preset", "tiny",
        "--max_train_samples", "64",
        "--train_batch_size", "32",
        "--max_train_steps", "2",
        "--eval_num_samples", "6",
        "--num_inference_steps", "3",
        "--logger", "none",
        "--checkpointing_steps", "0",
        "--save_images_epochs", "0",
        "--save_model_epochs", "0",
        "--seeds", "0",
        *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def sweep_log():
    """Messages of the sweep's logger (pytest owns the root logger, so the CLI's basicConfig does not apply)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("diffusers_memctl.experiments.sweep")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def file_stamps(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def forbid_training(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the sweep trained a run it should have skipped")

    monkeypatch.setattr(sweep_module, "run_training_job", refuse)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """A finished tiny sweep: uniform pretraining, four CI cells and the uniform baseline, one seed."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "s"
    flags = sweep_flags(sweep_dir, "--pretrain_epochs", "1", "--cells", CELLS)
    with sweep_log() as messages:
        rows = sweep_script(flags)
    return {"dir": sweep_dir, "flags": flags, "rows": rows, "log": messages}


# ---- grids and shards (pure) ---------------------------------------------------------------------------------------
def test_paper_grid_has_55_cells():
    cells = triangular_grid(0, 1000, 100)
    assert len(cells) == 55 == len(set(cells))
    assert all(lo < hi and lo % 100 == 0 and hi % 100 == 0 and 0 <= lo and hi <= 1000 for lo, hi in cells)
    assert (0, 1000) in cells and (900, 1000) in cells and (0, 100) in cells
    assert len(triangular_grid(0, 1000, 250)) == 10  # 5 points -> C(5, 2)
    assert triangular_grid(200, 300, 100) == [(200, 300)]


@pytest.mark.parametrize(
    ("grid", "message"),
    [((0, 1000, 0), "grid_step must be > 0"), ((0, 1000, -5), "grid_step"), ((500, 500, 100), "grid_min < grid_max")],
)
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(ValueError, match=message):
        triangular_grid(*grid)


def test_parse_cells():
    assert parse_cells("0:300, 600:1000,") == [(0, 300), (600, 1000)]
    for text, message in [("", "no cells"), (" , ", "no cells"), ("0-300", "lo:hi"), ("a:b", "two integers")]:
        with pytest.raises(ValueError, match=message):
            parse_cells(text)


def test_build_cells_names_every_interval_and_seed():
    cells = build_cells(SweepArguments(cells="0:300,600:1000", seeds="0,2"), 1000)
    assert [c.run_name for c in cells] == [
        "ci-0000-0300-seed0",
        "ci-0000-0300-seed2",
        "ci-0600-1000-seed0",
        "ci-0600-1000-seed2",
        "uniform-seed0",
        "uniform-seed2",
    ]
    assert len(build_cells(SweepArguments(grid_step=100, include_uniform=False), 1000)) == 55
    assert len(build_cells(SweepArguments(grid_step=10, grid_max=50, include_uniform=False), 50)) == 15


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cells": "500:100"}, "invalid cell 500:100"),
        ({"cells": "0:2000"}, r"invalid cell 0:2000: need 0 <= t_lower < t_upper <= 1000"),
        ({"cells": "-100:300"}, "invalid cell"),
        ({"cells": ""}, "no cells"),
        ({"cells": "0:300,0:300"}, "duplicate"),
        ({"grid_step": 0}, "grid_step must be > 0"),
        ({"grid_max": 2000}, "invalid cell"),
        ({"cells": "0:300", "seeds": ""}, "at least one seed"),
        ({"cells": "0:300", "seeds": "0,x"}, "comma-separated integers"),
    ],
)
def test_build_cells_refuses_bad_sweeps(settings, message):
    with pytest.raises(ValueError, match=message):
        build_cells(SweepArguments(**settings), 1000)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 7, 12, 60])
def test_shards_cover_every_cell_exactly_once(num_shards):
    cells = build_cells(SweepArguments(grid_step=100, seeds="0,1"), 1000)  # 55 x 2 + 2 uniform = 112
    shards = [shard_cells(cells, num_shards, index) for index in range(num_shards)]
    flat = [cell for shard in shards for cell in shard]
    assert len(flat) == len(cells) == 112 and set(flat) == set(cells)
    sizes = [len(shard) for shard in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_shards_follow_slurm_array_variables(monkeypatch):
    cells = [SweepCell("ci_normal", lo, lo + 100, 0) for lo in range(0, 1000, 100)]
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(name, raising=False)
    assert shard_cells(cells) == cells

    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert shard_cells(cells) == cells[1::3]
    assert shard_cells(cells, 2, 0) == cells[0::2]  # explicit values win over the environment

    # `#SBATCH --array=1-3` numbers the tasks 1, 2, 3: together they must still run every cell once.
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    covered = []
    for task_id in (1, 2, 3):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task_id))
        covered += shard_cells(cells)
    assert sorted(covered, key=cells.index) == cells

    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "one")
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID"):
        shard_cells(cells)
    with pytest.raises(ValueError, match="shard_index"):
        shard_cells(cells, 3, 3)
    with pytest.raises(ValueError, match="num_shards"):
        shard_cells(cells, 0, 0)


# ---- bad input through the script: refused before any training --------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cells", "500:100"], "invalid cell 500:100"),
        (["--cells", "0:2000"], "invalid cell 0:2000"),
        (["--cells", ""], "no cells"),
        (["--grid_step", "0"], "grid_step must be > 0"),
        (["--cells", "0:300", "--num_shards", "2", "--shard_index", "2"], "shard_index < num_shards"),
    ],
)
def test_script_refuses_bad_grids_before_touching_the_folder(tmp_path, monkeypatch, extra, message):
    forbid_training(monkeypatch)  # `--cells ''` once silently trained the whole 55-cell grid
    sweep_dir = tmp_path / "s"
    with pytest.raises(ValueError, match=message):
        sweep_script(sweep_flags(sweep_dir, "--pretrain_epochs", "1", *extra))
    assert not sweep_dir.exists()


@pytest.mark.parametrize("kind", ["empty", "missing", "unfinished"])
def test_pretrained_folder_that_is_not_a_run_is_refused(tmp_path, monkeypatch, kind):
    forbid_training(monkeypatch)
    pretrained = tmp_path / "pretrained"
    if kind != "missing":
        pretrained.mkdir()
    if kind == "unfinished":
        (pretrained / "training_config.json").write_text("{}")  # no model_index.json
    with pytest.raises(FileNotFoundError, match="not a finished diffusers-memctl run"):
        sweep_script(sweep_flags(tmp_path / "s", "--pretrained_run", str(pretrained), "--cells", "0:300"))
    # Nothing written, so the corrected command is not refused as "other settings" of this folder.
    assert not (tmp_path / "s").exists()


# ---- a real sweep --------------------------------------------------------------------------------------------------
def test_sweep_writes_every_file(sweep):
    sweep_dir = sweep["dir"]
    assert sorted(p.name for p in (sweep_dir / "cells").iterdir()) == RUN_NAMES
    assert [m for m in sweep["log"] if m.endswith(": training")] != [] and "pretraining" in " ".join(sweep["log"])

    config = json.loads((sweep_dir / "sweep_config.json").read_text())
    assert config["sweep"]["cells"] == CELLS and config["training"]["max_train_steps"] == 2
    assert "output_dir" not in config["training"] and "seed" not in config["training"]  # per-cell settings

    for name in RUN_NAMES:
        run = sweep_dir / "cells" / name
        assert is_run_evaluated(run), name
        report = json.loads((run / "metrics.json").read_text())
        assert report["num_samples"] == 6 and report["settings"]["sampler"] == "ddim"
        args = json.loads((run / "training_config.json").read_text())["args"]
        assert args["pretrained_model_name_or_path"] == "../../pretrained"  # relative to the run folder
        assert args["timestep_sampling"] == ("uniform" if name.startswith("uniform") else "ci_normal")
        assert (run / "model_index.json").is_file() and (run / "README.md").is_file()
    assert json.loads((sweep_dir / "pretrained" / "training_config.json").read_text())["args"][
        "timestep_sampling"
    ] == ("uniform")

    with open(sweep_dir / "sweep_results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["cell"], r["seed"]) for r in rows) == sorted(
        [("ci-0000-0300", "0"), ("ci-0000-1000", "0"), ("ci-0300-0700", "0"), ("ci-0600-1000", "0"), ("uniform", "0")]
    )
    assert len(sweep["rows"]) == len(rows) == 5
    by_cell = {r["cell"]: r for r in rows}
    assert float(by_cell["ci-0300-0700"]["ci_mean"]) == 500.0 and float(by_cell["ci-0300-0700"]["ci_width"]) == 400
    assert by_cell["uniform"]["ci_mean"] == ""
    for row in rows:
        report = json.loads((sweep_dir / "cells" / f"{row['cell']}-seed0" / "metrics.json").read_text())
        for name, value in report["metrics"].items():
            assert float(row[name]) == pytest.approx(value, rel=1e-12), name

    analysis = json.loads((sweep_dir / "analysis.json").read_text())
    assert analysis["n_rows"] == 5 and analysis["n_ci_rows"] == 4 and analysis["baseline_cells"] == ["uniform"]
    # Loss on the same timesteps: every run's logged bins, pooled; a cell on [0, 300] draws almost only bins 0-2.
    bins = {entry["cell"]: entry for entry in analysis["timestep_bin_losses"]}
    assert set(bins) == {r["cell"] for r in rows} and all(e["n_runs"] == 1 for e in bins.values())
    low = bins["ci-0000-0300"]["bin_counts"]
    assert sum(low[:3]) > 0.9 * sum(low) and bins["uniform"]["bin_losses"][0] is not None

    figures = sorted((sweep_dir / "figures").glob("*.png"))
    assert {
        "sampling.png", "pca_vs_mean.png", "heatmap_mean_l2.png", "heatmap_nn_ratio_mean.png",
        "loss_curves_by_width.png", "timestep_bin_losses.png",
    } <= {p.name for p in figures}  # fmt: skip
    for path in figures:
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC, path
    report_md = (sweep_dir / "REPORT.md").read_text()
    linked = set(re.findall(r"\]\((figures/[^)]+\.png)\)", report_md))
    assert linked == {f"figures/{p.name}" for p in figures}
    assert "ci-0600-1000" in report_md and "uniform" in report_md
    assert "## Loss on the same timesteps" in report_md


def test_analysis_correlations_match_scipy_on_the_csv(sweep):
    with open(sweep["dir"] / "sweep_results.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["timestep_sampling"] == "ci_normal"]
    analysis = json.loads((sweep["dir"] / "analysis.json").read_text())
    z = scipy.stats.norm.ppf(0.975)
    checked = 0
    for metric in analysis["metrics"]:
        y = np.array([float(r[metric]) for r in rows])
        for variable in ("ci_mean", "ci_width"):
            x = np.array([float(r[variable]) for r in rows])
            pearson = analysis["correlations"][metric][variable]["pearson"]
            assert pearson["n"] == 4
            if np.ptp(y) == 0:
                assert pearson["r"] is None and "constant" in pearson["note"]
                continue
            expected = scipy.stats.pearsonr(x, y)
            assert pearson["r"] == pytest.approx(expected.statistic, abs=1e-12), (metric, variable)
            assert pearson["p_value"] == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12), (metric, variable)
            half = z / math.sqrt(len(rows) - 3)
            assert pearson["ci_low"] == pytest.approx(math.tanh(math.atanh(expected.statistic) - half), abs=1e-9)
            assert pearson["ci_high"] == pytest.approx(math.tanh(math.atanh(expected.statistic) + half), abs=1e-9)
            rho = analysis["correlations"][metric][variable]["spearman"]["rho"]
            assert rho == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
            checked += 1
    assert checked >= 10  # mean_l2, nn_l2_*, final_loss... vary between cells
    for metric in ("mean_l2", "final_loss"):
        assert analysis["correlations"][metric]["ci_mean"]["pearson"]["r"] is not None


def test_second_invocation_trains_nothing(sweep, monkeypatch):
    before = file_stamps(sweep["dir"] / "cells") | {
        f"pretrained/{k}": v for k, v in file_stamps(sweep["dir"] / "pretrained").items()
    }
    forbid_training(monkeypatch)
    monkeypatch.setattr(sweep_module, "evaluate_options", lambda *a, **k: pytest.fail("re-evaluated a finished cell"))
    with sweep_log() as messages:
        rows = sweep_script(sweep["flags"])
    assert len(rows) == 5
    assert sum(m.endswith("finished: skipped") for m in messages) == 5
    assert not any("pretraining" in m or m.endswith(": training") for m in messages)
    after = file_stamps(sweep["dir"] / "cells") | {
        f"pretrained/{k}": v for k, v in file_stamps(sweep["dir"] / "pretrained").items()
    }
    assert after == before


def test_slurm_shard_runs_only_its_cells(sweep, monkeypatch):
    forbid_training(monkeypatch)
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    with sweep_log() as messages:
        rows = sweep_script(sweep["flags"])
    assert "5 cells in the sweep, 2 in this shard" in messages
    skipped = [m.split()[1] for m in messages if m.endswith("finished: skipped")]
    assert skipped == ["ci-0300-0700-seed0", "ci-0000-1000-seed0"]  # cells 1 and 3 of the sweep's order
    assert len(rows) == 5  # the analysis still covers every finished cell


def test_other_settings_in_the_same_folder_are_refused(sweep, monkeypatch):
    before = file_stamps(sweep["dir"] / "cells")
    config = (sweep["dir"] / "sweep_config.json").read_bytes()
    forbid_training(monkeypatch)
    with pytest.raises(ValueError, match=r"training\.learning_rate: 0\.0001 -> 0\.0005.*finished cells are kept"):
        sweep_script([*sweep["flags"], "--learning_rate", "5e-4"])
    with pytest.raises(ValueError, match=r"sweep\.seeds"):
        sweep_script([*sweep["flags"], "--seeds", "0,1"])
    assert file_stamps(sweep["dir"] / "cells") == before
    assert (sweep["dir"] / "sweep_config.json").read_bytes() == config
    assert all(is_run_evaluated(sweep["dir"] / "cells" / name) for name in RUN_NAMES)


def test_trained_but_unevaluated_cell_is_only_evaluated(sweep, tmp_path, monkeypatch):
    sweep_dir = Path(shutil.copytree(sweep["dir"], tmp_path / "s"))
    cell = sweep_dir / "cells" / "ci-0600-1000-seed0"
    assert (cell / "train_complete.json").is_file()
    old_metrics = json.loads((cell / "metrics.json").read_text())
    for name in ("metrics.json", "samples.npz", "README.md"):  # killed after training, before evaluating
        (cell / name).unlink()
    weights = {name: stamp for name, stamp in file_stamps(cell).items() if not name.startswith(("plots/", "README"))}
    forbid_training(monkeypatch)

    flags = [sweep_dir.as_posix() if f == str(sweep["dir"]) else f for f in sweep["flags"]]
    with sweep_log() as messages:
        rows = sweep_script(flags)
    assert "[3/5] ci-0600-1000-seed0 trained: evaluating" in messages
    assert sum(m.endswith("finished: skipped") for m in messages) == 4
    assert is_run_evaluated(cell) and (cell / "samples.npz").is_file()
    assert "model-index" in metadata_load(cell / "README.md")  # the model card with the new metrics
    assert json.loads((cell / "metrics.json").read_text())["metrics"] == old_metrics["metrics"]  # same seed
    after = file_stamps(cell)
    assert {name: after[name] for name in weights} == weights  # unet, configs, loss history untouched
    assert len(rows) == 5


def test_exported_results_regenerate_the_same_analysis(sweep, tmp_path):
    original = json.loads((sweep["dir"] / "analysis.json").read_text())
    export = tmp_path / "export"
    exported = export_sweep_results(sweep["dir"], export)
    assert len(exported["rows"]) == 5
    assert sorted(p.name[: -len(".jsonl.gz")] for p in (export / "loss_histories").glob("*.jsonl.gz")) == RUN_NAMES
    exported_analysis = json.loads((export / "analysis.json").read_text())
    # Exported loss histories are rounded to 5 significant digits: only the per-bin losses computed from them move.
    bins = exported_analysis.pop("timestep_bin_losses")
    original_bins = original.pop("timestep_bin_losses")
    assert exported_analysis == original
    assert np.allclose(
        [v for e in bins for v in e["bin_losses"] if v is not None],
        [v for e in original_bins for v in e["bin_losses"] if v is not None],
        rtol=1e-4,
    )
    original = {**original, "timestep_bin_losses": bins}
    figures = sorted(p.name for p in (export / "figures").glob("*.png"))
    assert figures == sorted(p.name for p in (sweep["dir"] / "figures").glob("*.png"))

    # From the CSV alone (no run folders): analysis.json and every figure come back.
    shutil.rmtree(export / "figures")
    (export / "analysis.json").unlink()
    result = report_from_results(export, num_train_timesteps=1000)
    assert json.loads((export / "analysis.json").read_text()) == original == json.loads(json.dumps(result["analysis"]))
    assert sorted(p.name for p in (export / "figures").glob("*.png")) == figures
    assert (export / "REPORT.md").is_file()


@pytest.mark.slow
def test_cell_killed_mid_training_resumes_from_its_checkpoint(sweep, tmp_path):
    sweep_dir = tmp_path / "s"
    flags = sweep_flags(
        sweep_dir,
        "--pretrained_run", str(sweep["dir"] / "pretrained"),
        "--cells", "300:700",
        "--include_uniform", "false",
        "--max_train_steps", "40",
        "--checkpointing_steps", "20",
    )  # fmt: skip
    cell = sweep_dir / "cells" / "ci-0300-0700-seed0"
    first_checkpoint = cell / "checkpoints" / "checkpoint-20"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *flags], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 300
        # A checkpoint is written under a hidden name and renamed when complete.
        while not first_checkpoint.is_dir():
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (cell / "metrics.json").exists() and not (cell / "train_complete.json").exists()
    stamps = file_stamps(first_checkpoint)

    with sweep_log() as messages:
        rows = sweep_script(flags)
    assert "[1/1] ci-0300-0700-seed0: resuming from checkpoint-20" in messages
    assert file_stamps(first_checkpoint) == stamps  # resumed from it, not retrained from scratch
    assert json.loads((cell / "train_complete.json").read_text())["global_step"] == 40
    steps = [json.loads(line)["step"] for line in (cell / "loss_history.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))
    assert is_run_evaluated(cell) and len(rows) == 1


@pytest.mark.slow
def test_two_process_launch_runs_every_cell_of_the_sweep(sweep, tmp_path):
    """One `torchrun --nproc_per_node 2` launch trains several cells in turn: the process group must outlive a cell
    (train() once destroyed it at its end, so the second cell's first collective failed or hung)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sweep_dir = tmp_path / "s"
    flags = sweep_flags(sweep_dir, "--pretrained_run", str(sweep["dir"] / "pretrained"), "--cells", "0:500,500:1000")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(port), str(SCRIPT), *flags,
    ]  # fmt: skip
    # torchrun on a machine without GPUs: accelerate must be told to use the CPU (gloo) to honour WORLD_SIZE.
    env = {
        **os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }  # fmt: skip
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    names = ["ci-0000-0500-seed0", "ci-0500-1000-seed0", "uniform-seed0"]
    assert sorted(p.name for p in (sweep_dir / "cells").iterdir()) == names
    for name in names:
        run = sweep_dir / "cells" / name
        assert is_run_evaluated(run), name
        assert json.loads((run / "train_complete.json").read_text())["global_step"] == 2
        counts = [
            sum(json.loads(line)["bin_counts"]) for line in (run / "loss_history.jsonl").read_text().splitlines()
        ]
        assert counts == [64, 64], name  # each logged step holds both ranks' 32 timesteps
    with open(sweep_dir / "sweep_results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3


def test_sweep_files_publish_no_absolute_path(sweep):
    # sweep_config.json and sweep_results.csv are uploaded with the sweep: local paths are relative to the folder.
    sweep_dir = sweep["dir"]
    root = str(sweep_dir.resolve().parent)
    for name in ("sweep_config.json", "sweep_results.csv"):
        assert root not in (sweep_dir / name).read_text(), name
    rows = list(csv.DictReader((sweep_dir / "sweep_results.csv").open()))
    assert {row["run_dir"] for row in rows} == {f"cells/{name}" for name in RUN_NAMES}
    # Read back, the relative run folders resolve against the CSV's folder, whatever the working directory.
    from diffusers_memctl.experiments.results import read_results_csv

    assert {Path(row["run_dir"]) for row in read_results_csv(sweep_dir / "sweep_results.csv")} == {
        (sweep_dir / "cells" / name).resolve() for name in RUN_NAMES
    }


def test_shared_settings_publish_the_pretrained_run_relative(tmp_path):
    from diffusers_memctl.cli.train import parse_training_options
    from diffusers_memctl.experiments.sweep import _shared_settings

    (tmp_path / "pre").mkdir()
    options = parse_training_options(["--output_dir", str(tmp_path / "x"), "--train_data_dir", str(tmp_path / "pre")])
    sweep_args = SweepArguments(sweep_dir=str(tmp_path / "s"), pretrained_run=str(tmp_path / "pre"))
    settings = _shared_settings(options, sweep_args)
    assert settings["sweep"]["pretrained_run"] == "../pre"
    assert settings["training"]["train_data_dir"] == "../pre"
    assert str(tmp_path) not in json.dumps(settings)

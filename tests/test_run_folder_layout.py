"""One owner of the run folder: every file name is a constant of `run_folder`, read and written through `RunFolder`."""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import pytest
import torch

import diffusers_memctl.run_folder as run_folder
from diffusers_memctl import training
from diffusers_memctl.cli.train import main
from diffusers_memctl.run_folder import (
    LOCK_NAME,
    RunFolder,
    latest_checkpoint,
    read_json,
    write_csv_atomic,
)

PACKAGE = Path(run_folder.__file__).resolve().parent
#: Verbatim copies written into signal run folders as diffusers remote code: they import only torch and diffusers.
REMOTE_CODE_COPIES = (PACKAGE / "pipelines" / "pipeline_ddpm_1d.py", PACKAGE / "models" / "unet_1d_memctl.py")
#: Layout constants whose value is diffusers' own (imported from diffusers, never spelled in this package).
FROM_DIFFUSERS = ("MODEL_CONFIG_NAME", "MODEL_WEIGHTS_NAME", "SCHEDULER_CONFIG_NAME")


def _layout_constants() -> dict[str, str]:
    suffixes = ("_NAME", "_DIR", "_PLOT", "_PREFIX")
    return {
        name: getattr(run_folder, name)
        for name in run_folder.__all__
        if name.endswith(suffixes) and isinstance(getattr(run_folder, name), str)
    }


def _package_sources() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in REMOTE_CODE_COPIES
    }


def _mapping_keys(tree: ast.Module) -> set[int]:
    """ids of string constants used as mapping keys (``d["cells"]``, ``{"figures": ...}``, ``d.get("cells")``)."""
    keys: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            keys.add(id(node.slice))
        elif isinstance(node, ast.Dict):
            keys.update(id(key) for key in node.keys if key is not None)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            if node.func.attr in ("get", "pop", "setdefault"):
                keys.add(id(node.args[0]))
    return keys


def test_each_layout_name_is_spelled_once_in_the_package():
    constants = _layout_constants()
    assert {"TRAINING_CONFIG_NAME", "METRICS_NAME", "LOSS_HISTORY_NAME", "CHECKPOINTS_DIR"} <= set(constants)
    found: dict[str, list[str]] = {value: [] for value in constants.values()}
    for path, tree in _package_sources().items():
        keys = _mapping_keys(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in found and id(node) not in keys:
                found[node.value].append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    for name, value in constants.items():
        expected = [] if name in FROM_DIFFUSERS else [f"run_folder.py:{_definition_line(name)}"]
        assert found[value] == expected, f"{name} = {value!r} is spelled outside run_folder.py: {found[value]}"


def _definition_line(name: str) -> int:
    tree = ast.parse(Path(run_folder.__file__).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value.lineno
    raise AssertionError(f"{name} is not assigned in run_folder.py")


def test_no_hand_written_atomic_write_outside_run_folder():
    for path, tree in _package_sources().items():
        if path.name == "run_folder.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
                assert node.attr not in ("replace", "rename"), f"{path}:{node.lineno}: rename through run_folder"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert ".tmp" not in node.value, f"{path}:{node.lineno}: temporary names belong to run_folder"


@pytest.mark.parametrize("path", REMOTE_CODE_COPIES, ids=lambda p: p.name)
def test_remote_code_copies_stay_standalone(path):
    """Copied verbatim into run folders: importing the package (e.g. for its file names) would break them there."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("diffusers_memctl"), path
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("diffusers_memctl") for alias in node.names), path


# --------------------------------------------------------------------------------------------------------------
# RunFolder on a real tiny run
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("layout") / "run"
    try:
        main(
            [
                "--output_dir",
                str(run),
                "--model_preset",
                "tiny",
                "--max_train_steps",
                "4",
                "--train_batch_size",
                "8",
                "--checkpointing_steps",
                "2",
                "--save_images_epochs",
                "0",
                "--save_model_epochs",
                "0",
                "--num_inference_steps",
                "4",
                "--eval_batch_size",
                "16",
                "--eval_num_samples",
                "8",
                "--eval_every_steps",
                "2",
                "--logger",
                "none",
                "--dataset_name",
                "digits",
                "--resolution",
                "8",
                "--train_subset_size",
                "16",
                "--learning_rate",
                "1e-3",
                "--lr_warmup_steps",
                "1",
            ]  # fmt: skip
        )
    finally:
        torch.set_num_threads(previous)
    return run


def test_run_folder_states_and_paths(tiny_run):
    run = RunFolder(tiny_run)
    assert run.is_trained and run.is_evaluated and run.has_pipeline and run.has_card and run.has_training_config
    assert run.training_config == tiny_run / "training_config.json"
    assert run.scheduler_config == tiny_run / "scheduler" / "scheduler_config.json"
    assert run.read_scheduler_config()["num_train_timesteps"] > 0
    # Everything a run leaves is named by a constant of run_folder.
    names = set(_layout_constants().values())
    assert {p.name for p in tiny_run.iterdir()} <= names | {LOCK_NAME}
    assert {p.name for p in run.plots.iterdir()} <= names
    assert {p.name for p in run.checkpoint(4).iterdir()} >= {run_folder.UNET_DIR, run_folder.SAMPLER_STATE_NAME}
    empty = RunFolder(tiny_run.parent / "nothing-here")
    assert not (empty.is_trained or empty.is_evaluated or empty.has_pipeline or empty.has_training_config)


def test_training_config_round_trip(tiny_run, tmp_path):
    run = RunFolder(tiny_run)
    config = run.read_training_config()
    assert config == json.loads((tiny_run / "training_config.json").read_text())
    assert config["args"]["max_train_steps"] == 4 and config["args"]["output_dir"] == "."
    # Published paths come back resolved against the run folder, whatever the working directory.
    assert Path(run.read_args()["output_dir"]) == tiny_run.resolve()
    copy = RunFolder(tmp_path / "copy")
    copy.write_training_config(config)
    assert copy.read_training_config() == config
    assert sorted(p.name for p in copy.path.iterdir()) == ["training_config.json"]  # no temporary file left
    with pytest.raises(FileNotFoundError):
        RunFolder(tmp_path / "missing").read_training_config()
    assert RunFolder(tmp_path / "missing").read_training_config(missing_ok=True) == {}


def test_metrics_round_trip(tiny_run, tmp_path):
    report = RunFolder(tiny_run).read_metrics()
    assert report["metrics"] and report["run_id"] == RunFolder(tiny_run).read_training_config()["run_id"]
    copy = RunFolder(tmp_path)
    copy.write_metrics(report)
    assert copy.read_metrics() == report
    copy.metrics.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        copy.read_metrics()
    copy.metrics.write_text('{"metrics": ')
    with pytest.raises(ValueError, match="metrics.json is not valid JSON"):
        read_json(copy.metrics)


def test_loss_history_tolerates_a_partial_last_line(tiny_run, tmp_path):
    records = RunFolder(tiny_run).read_loss_history()
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(set(r) >= {"loss", "lr", "bin_losses"} for r in records)
    copy = RunFolder(tmp_path)
    copy.loss_history.write_bytes(RunFolder(tiny_run).loss_history.read_bytes() + b'{"step": 5, "lo')
    assert copy.read_loss_history() == records  # the line a kill cut short is dropped
    assert copy.read_loss_history(repair=True) == records
    assert copy.loss_history.read_bytes() == RunFolder(tiny_run).loss_history.read_bytes()
    copy.append_loss_record({"step": 5, "loss": 0.5})
    assert [r["step"] for r in copy.read_loss_history()] == [1, 2, 3, 4, 5]
    copy.loss_history.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match="loss_history.jsonl line 2 is not JSON"):
        copy.read_loss_history()


def test_metrics_history_round_trip(tiny_run, tmp_path):
    rows = RunFolder(tiny_run).read_metrics_history()
    assert [(r["step"], bool(r.get("final"))) for r in rows] == [(2, False), (4, True)]
    copy = RunFolder(tmp_path)
    copy.write_metrics_history(rows)
    assert copy.read_metrics_history() == rows


def test_checkpoints_and_latest(tiny_run):
    run = RunFolder(tiny_run)
    assert [p.name for p in run.list_checkpoints()] == ["checkpoint-2", "checkpoint-4"]
    assert run.latest_checkpoint() == run.checkpoint(4) == tiny_run / "checkpoints" / "checkpoint-4"
    assert latest_checkpoint(tiny_run) == run.checkpoint(4)
    assert training._latest_checkpoint is latest_checkpoint  # the former private name, kept as an alias
    assert RunFolder(tiny_run / "unet").latest_checkpoint() is None


def test_locks_delegate_to_run_lock(tmp_path):
    run = RunFolder(tmp_path / "locked")
    with run.lock():
        assert (run.path / LOCK_NAME).is_file()
        with run.try_lock() as free:  # re-entrant within one process (a sweep cell's lock is the run's lock)
            assert free
    assert not run.path.exists()  # a folder the lock created and nothing wrote to is not left behind


def test_write_csv_atomic_matches_csv_dictwriter(tmp_path):
    rows = [{"a": 1, "b": "x,y"}, {"a": 2}]
    with open(tmp_path / "expected.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["a", "b"])
        writer.writeheader()
        writer.writerows(rows)
    write_csv_atomic(tmp_path / "out" / "rows.csv", rows, ["a", "b"])
    assert (tmp_path / "out" / "rows.csv").read_bytes() == (tmp_path / "expected.csv").read_bytes()

"""The rerun the after-training error names completes the run, and preview grids show real nearest neighbours."""

from __future__ import annotations

import json

import torch

from diffusers_memctl import training as training_module
from diffusers_memctl.cli.evaluate import main as evaluate_main
from diffusers_memctl.cli.train import main as train_main
from diffusers_memctl.cli.train import parse_training_options
from diffusers_memctl.data import load_training_data
from diffusers_memctl.reports import runs as run_figures


def _flags(run, *extra: str) -> list[str]:
    flags = ["--output_dir", str(run), "--model_preset", "tiny", "--resolution", "8", "--max_train_samples", "48"]
    flags += ["--max_train_steps", "3", "--train_batch_size", "16", "--checkpointing_steps", "0"]
    return [*flags, "--num_inference_steps", "3", "--logger", "none", *extra]


def test_memctl_evaluate_writes_the_card_a_failed_evaluation_left_out(tmp_path):
    run = tmp_path / "run"
    train_main(_flags(run, "--eval_num_samples", "0", "--save_images_epochs", "0"))
    (run / "README.md").unlink()  # what a failed evaluation after training leaves: no metrics, no card
    report = evaluate_main([str(run), "--eval_num_samples", "16", "--num_inference_steps", "3", "--no_plots"])
    card = (run / "README.md").read_text()
    assert json.loads((run / "metrics.json").read_text())["metrics"] == report["metrics"]
    assert "nn_l2_mean" in card  # the card carries the new metrics


def test_preview_grid_bottom_row_is_each_samples_nearest_training_sample(tmp_path, monkeypatch):
    calls = []
    real = run_figures.plot_image_nn_grid

    def spy(generated, nearest, **kwargs):
        calls.append((torch.as_tensor(generated), torch.as_tensor(nearest)))
        return real(generated, nearest, **kwargs)

    monkeypatch.setattr(training_module, "plot_image_nn_grid", spy)
    flags = _flags(tmp_path / "run", "--eval_num_samples", "0", "--save_images_epochs", "1")
    train_main(flags)
    assert calls, "no preview grid was drawn"
    training = load_training_data(parse_training_options(flags).data).samples.flatten(1).double()
    for generated, nearest in calls:
        distances = torch.cdist(generated.flatten(1).double(), training)
        expected = training[distances.argmin(dim=1)]
        torch.testing.assert_close(nearest.flatten(1).double(), expected)
        # ...and not the first training samples in order, which the grid showed before.
        assert not torch.equal(nearest.flatten(1).double(), training[: len(nearest)])

"""Nothing absolute is published: every file a push would upload names local things relative to the run folder."""

from pathlib import Path

from diffusers_memctl.cli import train as train_cli
from diffusers_memctl.hub import plan_hub_commit

FLAGS = ["--model_preset", "tiny", "--max_train_samples", "32", "--train_batch_size", "16", "--num_inference_steps", "3",
         "--eval_num_samples", "8", "--save_images_epochs", "0", "--logger", "none", "--checkpointing_steps", "2"]  # fmt: skip


def _published_text(folder: Path, include_checkpoints: bool = True) -> dict[str, str]:
    texts = {}
    for operation in plan_hub_commit(folder, include_checkpoints=include_checkpoints):
        payload = operation.path_or_fileobj
        data = payload.read() if hasattr(payload, "read") else Path(payload).read_bytes()
        if hasattr(payload, "seek"):
            payload.seek(0)
        texts[operation.path_in_repo] = data.decode("utf-8", errors="replace")
    return texts


def test_fine_tuning_from_an_absolute_path_publishes_no_local_path(tmp_path):
    root = tmp_path.resolve()
    pretrained, tuned = root / "pretrained", root / "tuned"
    train_cli.main([*FLAGS, "--max_train_steps", "2", "--output_dir", str(pretrained)])
    train_cli.main(
        [*FLAGS, "--max_train_steps", "2", "--output_dir", str(tuned), "--pretrained_model_name_or_path", str(pretrained),
         "--timestep_sampling", "ci_normal", "--ci_lower", "750", "--ci_upper", "1000",
         "--feature_cache_dir", str(root / "feature-cache")]
    )  # fmt: skip
    texts = _published_text(tuned)
    assert "unet/config.json" in texts and "training_config.json" in texts and "README.md" in texts
    leaks = {name: text.count(str(root)) for name, text in texts.items() if str(root) in text}
    assert not leaks, f"absolute local paths published in {leaks}"

"""bf16 against float32 through the training script a user runs (`training_scripts/train_memctl.py`).

`bench_training.py --precision` times bare training steps of one model; this benchmark times what a user gets from
`train_memctl.py --mixed_precision bf16`: the whole script (data, accelerate, EMA, loss bins, logging) runs as a
subprocess, float32 and bf16 runs alternate, and each run's steady-state seconds per step are read from the wall
times TensorBoard records for every logged step (`--logging_steps 1`), after `--warmup_steps` steps are left out.
Prints seconds per step per run and the float32 / bf16 ratio per pair (> 1: bf16 is faster) and its median.

    python benchmarks/bench_train_precision.py --train_data_dir ../shared/data/pokemon-artwork \
        --resolution 32 --batch_sizes 32,64 --steps 70 --warmup_steps 10 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]


def train_command(args: argparse.Namespace, batch_size: int, precision: str, output_dir: Path) -> list[str]:
    data = ["--train_data_dir", args.train_data_dir] if args.train_data_dir else ["--dataset_name", args.dataset_name]
    return [
        sys.executable,
        str(ROOT / "training_scripts" / "train_memctl.py"),
        *data,
        "--resolution", str(args.resolution),
        "--model_preset", args.model_preset,
        "--train_batch_size", str(batch_size),
        "--max_train_steps", str(args.steps),
        "--mixed_precision", precision,
        "--eval_num_samples", "0",
        "--checkpointing_steps", "0",
        "--save_images_epochs", "0",
        "--logger", "tensorboard",
        "--logging_steps", "1",
        "--output_dir", str(output_dir),
    ]  # fmt: skip


def seconds_per_step(output_dir: Path, warmup_steps: int) -> float:
    """Median wall-clock seconds between consecutive logged steps after the warm-up (TensorBoard's wall times)."""
    event_files = sorted((output_dir / "logs").rglob("events.out.tfevents.*"))
    if not event_files:
        raise RuntimeError(f"no TensorBoard events under {output_dir / 'logs'}")
    times: dict[int, float] = {}
    for path in event_files:
        accumulator = EventAccumulator(str(path.parent))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.endswith("loss"):
                times.update({event.step: event.wall_time for event in accumulator.Scalars(tag)})
    steps = sorted(step for step in times if step > warmup_steps)
    gaps = [times[b] - times[a] for a, b in zip(steps, steps[1:]) if b == a + 1]
    if not gaps:
        raise RuntimeError(f"fewer than two logged steps after {warmup_steps} in {output_dir}")
    return statistics.median(gaps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", default="digits")
    parser.add_argument("--train_data_dir", default=None, help="Local image folder (instead of --dataset_name).")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--model_preset", default="small")
    parser.add_argument("--batch_sizes", default="32,64", help="Comma-separated per-process batch sizes.")
    parser.add_argument("--steps", type=int, default=70, help="Optimizer steps per run.")
    parser.add_argument("--warmup_steps", type=int, default=10, help="Steps left out of the steady-state figure.")
    parser.add_argument("--repeats", type=int, default=2, help="float32/bf16 pairs per batch size (alternating).")
    args = parser.parse_args(argv)
    print(
        f"torch threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_train_precision_") as scratch:
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            ratios = []
            for repeat in range(args.repeats):
                per_step = {}
                for precision in ("no", "bf16"):
                    output_dir = Path(scratch) / f"b{batch_size}-{precision}-{repeat}"
                    command = train_command(args, batch_size, precision, output_dir)
                    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    per_step[precision] = seconds_per_step(output_dir, args.warmup_steps)
                ratios.append(per_step["no"] / per_step["bf16"])
                print(
                    f"batch {batch_size} pair {repeat}: float32 {per_step['no']:.3f} s/step, "
                    f"bf16 {per_step['bf16']:.3f} s/step, float32/bf16 {ratios[-1]:.2f}x "
                    f"(load average {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
            print(f"batch {batch_size}: float32/bf16 median {statistics.median(ratios):.2f}x over {len(ratios)} pairs")


if __name__ == "__main__":
    main()

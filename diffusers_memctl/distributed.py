"""The launch's process layout: how many processes, on which device, and the launch that gives N CPU processes.

accelerate has no CPU launch of several processes without MPI: ``accelerate launch --cpu --num_processes 2`` runs
accelerate's simple launcher, which starts ONE process (more need ``--mpirun_hostfile``). Two launches do start N
processes, both through torch's elastic launcher:

- ``torchrun --nproc_per_node N script.py ...``
- ``accelerate launch --multi_gpu --num_processes N script.py ...`` (torchrun underneath, despite the flag's name)

Under either, accelerate itself would leave every process alone on a machine without GPUs (it reads
``WORLD_SIZE`` for CPU processes only when told to use the CPU). :func:`use_cpu` tells it: several processes and no
accelerator device means CPU processes over gloo. ``ACCELERATE_USE_CPU=1`` forces CPU processes on a GPU machine.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

__all__ = [
    "CPU_LAUNCH_ADVICE",
    "check_launch",
    "describe_extensions",
    "describe_layout",
    "launched_world_size",
    "process_layout",
    "process_state",
    "use_cpu",
]

#: The launches that run N CPU processes (named by every error about the process layout).
CPU_LAUNCH_ADVICE = (
    "for N processes on CPU use `torchrun --nproc_per_node N training_scripts/train_memctl.py ...` or "
    "`accelerate launch --multi_gpu --num_processes N training_scripts/train_memctl.py ...` (on a machine without "
    "GPUs both run N CPU processes over gloo; add ACCELERATE_USE_CPU=1 on a machine with GPUs)"
)

_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_world_size() -> int:
    """Processes the launcher started (torchrun's ``WORLD_SIZE``, or MPI's), 1 when not launched by one."""
    for name in _WORLD_SIZE_VARIABLES:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    return 1


def _has_accelerator_device() -> bool:
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None and hasattr(accelerator_api, "is_available"):
        return bool(accelerator_api.is_available())
    return torch.cuda.is_available()


def use_cpu() -> bool:
    """Whether this launch's processes run on the CPU: ``ACCELERATE_USE_CPU``, or several processes and no GPU."""
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    return launched_world_size() > 1 and not _has_accelerator_device()


def process_state() -> Any:
    """The [`accelerate.PartialState`] of this launch, on the CPU when [`use_cpu`] says so.

    The first state created fixes the process layout of the whole launch (a singleton), so library code asks here
    rather than building a bare `PartialState()`, which would ignore `ACCELERATE_USE_CPU` and run every CPU process
    alone.

    Returns:
        `accelerate.PartialState`: The shared state (every call returns the same layout).
    """
    return PartialState(cpu=use_cpu())


def check_launch(num_processes: int) -> None:
    """Refuse a launch whose processes would not train together; the message names the launch that works.

    Args:
        num_processes (`int`): Processes accelerate runs (``accelerator.num_processes``).

    Raises:
        `RuntimeError`: The launcher started a different number of processes than accelerate joined, or
            ``accelerate launch --cpu --num_processes N`` (N > 1) started one process.
    """
    world_size = launched_world_size()
    if num_processes != world_size:
        raise RuntimeError(
            f"launched as {world_size} processes (WORLD_SIZE) but accelerate runs {num_processes}, so each would "
            f"train alone; {CPU_LAUNCH_ADVICE}"
        )
    # accelerate's simple launcher sets MASTER_ADDR/MASTER_PORT only when asked for more than one process, then
    # starts one process without WORLD_SIZE.
    if world_size == 1 and parse_flag_from_env("ACCELERATE_USE_CPU") and os.environ.get("MASTER_PORT"):
        raise RuntimeError(
            "`accelerate launch --cpu --num_processes N` with N > 1 starts ONE process (accelerate's simple launcher "
            f"needs MPI for more); {CPU_LAUNCH_ADVICE}. For one process drop --num_processes (or unset MASTER_PORT)"
        )


def process_layout(accelerator: Any, *, train_batch_size: int, gradient_accumulation_steps: int) -> dict[str, Any]:
    """How a run was laid out over processes, as recorded in ``training_config.json`` and the model card.

    Args:
        accelerator (`accelerate.Accelerator`): The run's accelerator.
        train_batch_size (`int`): Samples per process and micro-batch (``--train_batch_size``).
        gradient_accumulation_steps (`int`): Micro-batches per optimizer step.

    Returns:
        `dict`: ``num_processes``, ``distributed_type``, ``backend``, ``device``, ``mixed_precision`` (what
        accelerate uses), the per-process batch and the global batch of one optimizer step.
    """
    num_processes = accelerator.num_processes
    return {
        "num_processes": num_processes,
        "distributed_type": str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type)),
        "backend": getattr(accelerator.state, "backend", None),
        "device": accelerator.device.type,
        "mixed_precision": str(accelerator.mixed_precision),
        "train_batch_size_per_process": train_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "global_batch_size": train_batch_size * num_processes * gradient_accumulation_steps,
    }


def describe_layout(layout: dict[str, Any] | None) -> str:
    """One sentence on a recorded process layout (for the model card); empty for runs that recorded none."""
    if not layout:
        return ""
    n = layout["num_processes"]
    backend = f", {layout['backend']}" if layout.get("backend") else ""
    accumulation = layout.get("gradient_accumulation_steps", 1)
    per_step = f" x {accumulation} accumulated micro-batches" if accumulation > 1 else ""
    text = (
        f"{n} process{'es' if n > 1 else ''} on {layout['device']} ({layout['distributed_type']}{backend}), "
        f"{layout['train_batch_size_per_process']} samples per process{per_step} = global batch "
        f"{layout['global_batch_size']} per optimizer step; mixed precision `{layout['mixed_precision']}`"
    )
    if layout.get("max_train_steps"):
        text += f"; {layout['max_train_steps']} optimizer steps ({layout.get('steps_per_epoch')} per epoch)"
    return text + "."


def describe_extensions(extensions: list[dict[str, Any]] | None) -> str:
    """One sentence on the extensions of a finished run (``--resume_from_checkpoint`` with more steps)."""
    if not extensions:
        return ""
    parts = [f"from step {e['from_step']} to {e['to_step']} (resumed from `{e['resumed_from']}`)" for e in extensions]
    return "; ".join(parts) + "."

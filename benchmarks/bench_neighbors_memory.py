"""Benchmark: peak extra memory of the pruned nearest-neighbour search, each step in a fresh process.

`bench_metrics.py` times every side in one process, where freed heap memory is reused and later peaks look smaller
than they are. Here each scenario runs in its own child process: load the data, `malloc_trim`, then measure the rise
of the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) over the resident set before the call,
first for the index build (`NeighborIndex(training)`), then, after another `malloc_trim`, for one cached search.
Linux only (it reads /proc and calls glibc's `malloc_trim`).

    python benchmarks/bench_neighbors_memory.py                  # scenarios b and c of bench_metrics.py
    python benchmarks/bench_neighbors_memory.py --scenarios c --threads 1
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import measure_peak, scenario_data  # noqa: E402

from diffusers_memctl.metrics.neighbors import NeighborIndex  # noqa: E402


def _trim() -> None:
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peak_mib(fn) -> tuple[object, float]:
    """(result, peak extra MiB of `fn`) measured by `bench_metrics.measure_peak` after returning freed heap to the OS."""
    _trim()
    out, _, mib, _ = measure_peak(fn, torch.device("cpu"))
    return out, mib


def child(name: str, k: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    gen, train, _ = scenario_data(name, quick=False, seed=0)
    index, build = _peak_mib(lambda: NeighborIndex(train))
    _, search = _peak_mib(lambda: index.search(gen, k=k))
    return {"build_mib": round(build, 1), "search_mib": round(search, 1), "pruning": index.pruning}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.k, args.threads)))
        return
    print(f"torch threads {args.threads}, k {args.k}; peak extra memory (VmHWM rise, fresh process per scenario)")
    for name in args.scenarios:
        cmd = [sys.executable, __file__, "--child", name, "--k", str(args.k), "--threads", str(args.threads)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(
            f"scenario ({name}): build {result['build_mib']} MiB, search {result['search_mib']} MiB, "
            f"pruning {result['pruning']}"
        )


if __name__ == "__main__":
    main()

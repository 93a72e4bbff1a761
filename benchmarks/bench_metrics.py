"""Benchmark: exact nearest neighbours of `diffusers_memctl` against faiss `IndexFlatL2` and scikit-learn's brute force.

Three scenarios, each timed side by side in one run (best of `--repeats`, the sides alternating so that load from other
processes hits all alike), printing speed ratios, whether the results agree, and peak extra memory:

- (a) random: 1,000 x 7,357 uniform samples of 3 x 64 x 64 (D = 12,288), the paper's image size. High-rank data, where
  no bound prunes: the default path must detect that and cost no more than the brute force ("no regression").
- (b) artworks: the 919 Pokemon artworks of ../shared/data at 64 x 64, with flips and 1-2 px shifts: 7,357 training
  samples (the size of `huggan/pokemon`); 1,000 queries, half noisy copies of training samples (sigma 0.1), half
  blends of two artworks. Searched with the training side cached (`NeighborIndex`), its one-off cost stated apart.
- (c) scale: the artworks at 32 x 32 (D = 3,072) with flips, shifts of up to 2 px and brightness changes: 50,000
  training samples; 10,000 queries built as in (b).

Sides: "brute" is `nearest_neighbors(..., pruning="off")` (the search before the index existed), "default" is
`nearest_neighbors` as every metric calls it (index cached per training-set fingerprint, hashing included), "index" is
`NeighborIndex(training).search` (the caller holds the index), faiss `IndexFlatL2` (float32, not exact under ties and
rounding) and scikit-learn `NearestNeighbors(algorithm="brute")`. "identical" compares indices and distances bit for
bit with our brute force (exact float64); "faiss agree" counts rows whose faiss indices equal ours.

Peak memory on CPU is the rise of the process's resident-set high-water mark (VmHWM, reset through
/proc/self/clear_refs just before the call) over the resident set before it; where that reset is not allowed it falls
back to the ru_maxrss delta (a lower bound). On CUDA it is `torch.cuda.max_memory_allocated` minus the memory allocated
before the call.

    python benchmarks/bench_metrics.py                 # all three scenarios, full size (about 10-20 min on 2 cores)
    python benchmarks/bench_metrics.py --scenarios b   # one scenario
    python benchmarks/bench_metrics.py --quick         # small sizes, a smoke run
    python benchmarks/bench_metrics.py --threads 1     # every side on one thread (a machine busier than its cores)
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from diffusers_memctl.metrics.neighbors import NeighborIndex, clear_neighbor_cache, nearest_neighbors

try:  # optional oracle and competitor: `pip install faiss-cpu`
    import faiss
except ImportError:  # pragma: no cover - depends on the environment
    faiss = None

ARTWORKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pokemon-artwork"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float, str]:
    """Runs `fn` once; returns (result, seconds, peak extra MiB, method)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        return out, seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20, "cuda max_memory_allocated"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before, method = _status_kib("VmRSS"), "VmHWM after clear_refs reset"
    except OSError:
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss delta (lower bound)"
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    after = _status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, seconds, max(after - before, 0) / 1024, method


def load_artworks(size: int) -> torch.Tensor:
    """The 919 artworks as a float32 tensor `(919, 3, size, size)` in [-1, 1] (bilinear resize with PIL)."""
    files = sorted(ARTWORKS.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no artworks in {ARTWORKS}; scenarios b and c need ../shared/data/pokemon-artwork")
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()


def augmented(x: torch.Tensor, total: int, max_shift: int, brightness: bool) -> torch.Tensor:
    """`total` training samples: originals, flips and shifts (then brightness changes) of the artworks `x`."""
    variants = [x, x.flip(-1)]
    shifts = [(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)]
    shifts = sorted((s for s in shifts if s != (0, 0)), key=lambda s: (abs(s[0]) + abs(s[1]), s))
    for dy, dx in shifts:
        for base in (x, x.flip(-1)) if max_shift > 2 or brightness else (x,):
            variants.append(torch.roll(base, (dy, dx), dims=(-2, -1)))
    if brightness:
        for scale in (0.9, 1.1, 0.8, 1.2):
            variants.append(((x + 1) * scale - 1).clamp_(-1, 1))
    out = torch.cat(variants)
    while out.shape[0] < total:  # top up with diagonal 2 px shifts
        out = torch.cat([out, torch.roll(x, (2, 2), dims=(-2, -1))])
    return out[:total].contiguous()


def queries(train: torch.Tensor, x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Half noisy copies of training samples (sigma 0.1), half blends of two artworks (weight in [0.3, 0.7])."""
    generator = torch.Generator().manual_seed(seed)
    half = n // 2
    pick = torch.randint(0, train.shape[0], (half,), generator=generator)
    noisy = train[pick] + 0.1 * torch.randn((half, *train.shape[1:]), generator=generator)
    a, b = torch.randint(0, x.shape[0], (2, n - half), generator=generator)
    weight = torch.rand((n - half, 1, 1, 1), generator=generator) * 0.4 + 0.3
    return torch.cat([noisy, weight * x[a] + (1 - weight) * x[b]]).contiguous()


def scenario_data(name: str, quick: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    if name == "a":
        n, m, shape = (200, 1000, (3, 32, 32)) if quick else (1000, 7357, (3, 64, 64))
        rng = np.random.default_rng(seed)
        gen = torch.from_numpy(rng.uniform(-1, 1, (n, *shape)).astype(np.float32))
        train = torch.from_numpy(rng.uniform(-1, 1, (m, *shape)).astype(np.float32))
        return gen, train, "uniform random"
    if name == "b":
        size, m, n = (32, 2000, 300) if quick else (64, 7357, 1000)
        x = load_artworks(size)
        train = augmented(x, m, max_shift=2, brightness=False)
        return queries(train, x, n, seed), train, f"artworks {size}x{size}, flips + 1-2 px shifts"
    size, m, n = (32, 10_000, 2_000) if quick else (32, 50_000, 10_000)
    x = load_artworks(size)
    train = augmented(x, m, max_shift=2, brightness=True)
    return queries(train, x, n, seed), train, f"artworks {size}x{size}, flips, shifts <= 2 px, brightness"


def run_scenario(name: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    gen, train, what = scenario_data(name, args.quick, args.seed)
    gen, train = gen.to(device), train.to(device)
    gen_np = np.ascontiguousarray(gen.reshape(gen.shape[0], -1).cpu().numpy())
    train_np = np.ascontiguousarray(train.reshape(train.shape[0], -1).cpu().numpy())
    k = args.k
    # Warm-up on slices (allocator, thread pools, kernels) so that no side pays one-time costs in its timing.
    nearest_neighbors(gen[:20], train[:200], k=k, pruning="off")
    NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train_np[:200]).kneighbors(gen_np[:20])

    clear_neighbor_cache()
    index, build_s, build_mib, method = measure_peak(lambda: NeighborIndex(train), device)
    times: dict[str, list[float]] = {"brute": [], "default": [], "index": [], "faiss": [], "sklearn": []}
    mib: dict[str, float] = dict.fromkeys(times, 0.0)
    results: dict[str, Any] = {}
    flat = None
    if faiss is not None:
        flat = faiss.IndexFlatL2(train_np.shape[1])
        flat.add(train_np)
    sides: dict[str, Callable[[], Any]] = {
        "brute": lambda: nearest_neighbors(gen, train, k=k, pruning="off"),
        "default": lambda: nearest_neighbors(gen, train, k=k),
        "index": lambda: index.search(gen, k),
        "faiss": (lambda: flat.search(gen_np, k)) if flat is not None else None,
        "sklearn": (
            None
            if args.skip_sklearn
            else lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(train_np).kneighbors(gen_np)
        ),
    }
    clear_neighbor_cache()
    _, default_first_s, _, _ = measure_peak(sides["default"], device)  # includes the one-off cache build
    for _ in range(max(1, args.repeats)):
        for side, fn in sides.items():
            if fn is None:
                continue
            results[side], seconds, peak, _ = measure_peak(fn, device)
            times[side].append(seconds)
            mib[side] = max(mib[side], peak)
    best = {side: min(t) for side, t in times.items() if t}
    ref_d, ref_i = (t.cpu().numpy() for t in results["brute"])
    out = {
        "scenario": name,
        "data": what,
        "sizes": f"{gen.shape[0]} x {train.shape[0]}, D={train_np.shape[1]}, k={k}",
        "best_s": best,
        "times": times,
        "peak_mib": mib,
        "memory_method": method,
        "index_build_s": build_s,
        "index_build_mib": build_mib,
        "default_first_call_s": default_first_s,
        "index_pruning": index.pruning,
        "index_components": index.n_components,
        "identical_default": all(
            np.array_equal(t.cpu().numpy(), r) for t, r in zip(results["default"], (ref_d, ref_i))
        ),
        "identical_index": all(np.array_equal(t.cpu().numpy(), r) for t, r in zip(results["index"], (ref_d, ref_i))),
    }
    if "faiss" in results:
        out["faiss_agree_rows"] = float(np.mean(np.all(results["faiss"][1] == ref_i, axis=1)))
    if "sklearn" in results:
        out["sklearn_agree_rows"] = float(np.mean(np.all(results["sklearn"][1] == ref_i, axis=1)))
    return out


def print_scenario(r: dict[str, Any]) -> None:
    best = r["best_s"]
    rows = [("data", r["data"]), ("sizes", r["sizes"])]
    for side in ("brute", "default", "index", "faiss", "sklearn"):
        if side in best:
            runs = ", ".join(f"{t:.2f}" for t in r["times"][side])
            rows.append(
                (f"{side} (s, best of runs)", f"{best[side]:.3f}  (all: {runs}; peak {r['peak_mib'][side]:.0f} MiB)")
            )
    rows.append(("index build, one-off (s / peak MiB)", f"{r['index_build_s']:.2f} / {r['index_build_mib']:.0f}"))
    rows.append(("default, first call incl. build (s)", f"{r['default_first_call_s']:.2f}"))
    rows.append(("index prunes / components", f"{r['index_pruning']} / {r['index_components']}"))
    for side in ("default", "index"):
        rows.append((f"ratio brute / {side}", f"{best['brute'] / best[side]:.2f}x"))
        for other in ("faiss", "sklearn"):
            if other in best:
                rows.append((f"ratio {other} / {side}", f"{best[other] / best[side]:.2f}x"))
    rows.append(("identical to brute force (default / index)", f"{r['identical_default']} / {r['identical_index']}"))
    for other in ("faiss", "sklearn"):
        if f"{other}_agree_rows" in r:
            rows.append((f"rows whose {other} indices equal ours", f"{r[f'{other}_agree_rows']:.4f}"))
    rows.append(("memory method", r["memory_method"]))
    width = max(len(name) for name, _ in rows)
    print(f"\n### scenario ({r['scenario']})\n")
    print("| " + "metric".ljust(width) + " | value |")
    print("|" + "-" * (width + 2) + "|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--scenarios", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--k", type=int, default=2, help="neighbours per sample (2: the distance ratio)")
    parser.add_argument("--device", default="cpu", help="device of our computation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side; the best time is reported")
    parser.add_argument("--skip-sklearn", action="store_true", help="leave scikit-learn out (the slowest side)")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of torch and faiss alike (default: each library's own)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        if faiss is not None:
            faiss.omp_set_num_threads(args.threads)
    faiss_threads = faiss.omp_get_max_threads() if faiss is not None else None
    print(f"torch threads {torch.get_num_threads()}, faiss threads {faiss_threads}, load average {os.getloadavg()}")
    if faiss is None:
        print("faiss not installed (pip install faiss-cpu): its column is left out")
    out = []
    for name in args.scenarios:
        out.append(run_scenario(name, args))
        print_scenario(out[-1])
        print(f"load average after scenario ({name}): {os.getloadavg()}")
    print(f"\nload average at end {os.getloadavg()}")
    return out


if __name__ == "__main__":
    main()

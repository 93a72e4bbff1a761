"""Exact nearest neighbours by brute force: bounded-precision candidate search, then float64 re-ranking.

The engine under [`~diffusers_memctl.metrics.neighbors.nearest_neighbors`] when no training-side index pays (and the fallback
of [`~diffusers_memctl.metrics.neighbors.NeighborIndex`]): candidates are pre-selected with the matmul expansion
`||a||^2 - 2 a.b + ||b||^2` in bf16 or float32, a candidate set is accepted only when a rigorous rounding-error bound
proves it holds the k nearest, and the final distances come from explicit float64 differences. Ties go to the lower
training index.
"""

from __future__ import annotations

import torch

__all__ = ["brute_force_neighbors"]

# Element budgets of temporary blocks: distance chunk (float64, 64 MiB), gathers (float64, 32 MiB), norms (16 MiB).
# Few large blocks keep the number of parallel regions (each a potential stall on a busy machine) small.
_DISTANCE_CHUNK_ELEMENTS = 1 << 23
_GATHER_BLOCK_ELEMENTS = 1 << 22
_NORM_BLOCK_ELEMENTS = 1 << 21
# Blocks of the bf16 path (rounding the training set, gathering candidates): few large ones, since each parallel
# region can stall on an oversubscribed machine (measured: the bf16 path is the most sensitive to load).
_BF16_BLOCK_ELEMENTS = 1 << 24
# Features per float32 matmul block; shorter blocks give a tighter rounding bound (gamma_B) on each dot product.
_MATMUL_K_BLOCK = 2048
# Extra float32 candidates kept per row beyond k before the exact float64 re-ranking.
_CANDIDATE_MARGIN = 16
# Rows whose bf16 candidate set holds more than 1/16 of the training set are searched again in float32.
_BF16_MAX_CANDIDATE_SHARE = 16


def _candidate_precision(device: torch.device) -> tuple[torch.dtype, float]:
    """Returns the dtype used to pre-select neighbour candidates and the unit roundoff of its matmul."""
    backend = torch.backends.cuda.matmul if device.type == "cuda" else getattr(torch.backends.mkldnn, "matmul", None)
    settings = [getattr(backend, "fp32_precision", None), getattr(torch.backends, "fp32_precision", None)]
    reduced = any(setting not in (None, "none", "ieee") for setting in settings)
    try:
        reduced |= torch.get_float32_matmul_precision() != "highest"
        reduced |= device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    except RuntimeError:  # legacy and per-backend precision APIs mixed: assume the worst
        reduced = True
    # TF32/bf16 matmuls make the float32 error bound useless; float64 keeps the bound tight (and is fast on GPUs).
    return (torch.float64, 2.0**-53) if reduced else (torch.float32, 2.0**-24)


def _bf16_matmul_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls on `device` accumulate in float32 and round once, the premise of the bf16 error bound.

    On CPUs that is oneDNN's bf16 GEMM (AVX512-BF16 or AMX, emulated with float32 FMAs on plain AVX-512). On CUDA,
    cuBLAS may round split-K partial sums to bf16 unless `allow_bf16_reduced_precision_reduction` is off; then the
    premise fails and the float32 path is used.
    """
    if device.type == "cpu":
        is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return bool(torch.backends.mkldnn.is_available() and is_supported is not None and is_supported())
        except RuntimeError:
            return False
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported() and not torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    return False


def _bf16_candidates_by_default(device: torch.device) -> bool:
    """`candidates="auto"`: bf16 on CPUs with AMX tiles and on GPUs whose bf16 GEMM reduces in float32.

    Measured on a 2-core AMD EPYC with AVX512-BF16 but no AMX (benchmarks/bench_metrics.py): the bf16 path ran at 1.6x
    the float32 path once at load ~1, but at 0.55-0.76x in three runs at load 2.5-14 (its extra passes over the
    training set and its candidate gathers suffer most from contention), while the float32 path held 1.0-1.7x
    scikit-learn. Such CPUs keep the steadier float32 path; `candidates="bfloat16"` still selects bf16 there.
    """
    if not _bf16_matmul_supported(device):
        return False
    if device.type == "cuda":
        return True
    init_amx = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    return bool(device.type == "cpu" and init_amx is not None and init_amx())


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norms accumulated in float64, in row blocks (no full-size float64 copy)."""
    rows = max(1, _NORM_BLOCK_ELEMENTS // x.shape[1])
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        out[start : start + rows] = torch.linalg.vector_norm(block, dim=1, dtype=torch.float64).square_()
    return out


def _bf16_split(x: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`x` rounded to bf16, upper bounds of that copy's norms, and the norms of the residual `x - bf16(x)`.

    The residual is exact in `x`'s own dtype (Sterbenz: `bf16(x)` lies within a factor 2 of `x`), and its norm is
    accumulated in float64. `||bf16(x)|| <= ||x|| + ||x - bf16(x)||` (triangle inequality) spares one pass; `norms`
    are the float64 norms of `x`.
    """
    rows = max(1, _BF16_BLOCK_ELEMENTS // x.shape[1])
    rounded = torch.empty(x.shape, dtype=torch.bfloat16, device=x.device)
    residual_norms = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows]
        low = rounded[start : start + rows]
        low.copy_(block)
        residual = block - low.to(block.dtype)
        residual_norms[start : start + rows] = torch.linalg.vector_norm(residual, dim=1, dtype=torch.float64)
    residual_norms.mul_(1.0 + 2.0**-40)
    return rounded, (norms + residual_norms).mul_(1.0 + 2.0**-40), residual_norms


def _exact_distances(queries: torch.Tensor, training: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Distances `||q_i - t_{index[i, j]}||_2` from explicit float64 differences (no cancellation)."""
    rows, cols = index.shape
    out = torch.empty(rows, cols, dtype=torch.float64, device=queries.device)
    if cols == 0:
        return out
    step = max(1, _GATHER_BLOCK_ELEMENTS // (cols * queries.shape[1]))
    for start in range(0, rows, step):
        stop = start + step
        diff = training[index[start:stop]].to(torch.float64) - queries[start:stop, None, :].to(torch.float64)
        out[start:stop] = torch.linalg.vector_norm(diff, dim=-1)
    return out


def _select_k(dist: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest distances per row; ties go to the lower training index (stable sort after sorting indices)."""
    by_index = torch.argsort(index, dim=1)
    index = torch.gather(index, 1, by_index)
    dist = torch.gather(dist, 1, by_index)
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return torch.gather(dist, 1, order), torch.gather(index, 1, order)


def _approx_squared_distances(
    gen: torch.Tensor, train: torch.Tensor, gen_sq: torch.Tensor, train_sq: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """`||a||^2 - 2 a.b + ||b||^2` (float64 result) with dot products in `dtype` over blocks of features."""
    dim = gen.shape[1]
    block = dim if dtype == torch.float64 else _MATMUL_K_BLOCK
    dots = None
    for start in range(0, dim, block):
        part = gen[:, start : start + block].to(dtype) @ train[:, start : start + block].to(dtype).T
        dots = part.to(torch.float64) if dots is None else dots.add_(part)
    return dots.mul_(-2.0).add_(gen_sq[:, None]).add_(train_sq[None, :])


def brute_force_neighbors(
    gen: torch.Tensor, train: torch.Tensor, k: int, chunk_size: int | None, candidates: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of validated `(N, D)` queries in `(M, D)` training samples on one device.

    `candidates` (`"auto"`, `"bfloat16"` or `"float32"`) picks the precision of the candidate search; the result is
    the same with each (see [`~diffusers_memctl.metrics.neighbors.nearest_neighbors`]).
    """
    gen_sq, train_sq = _squared_norms(gen), _squared_norms(train)
    # Squared norms above 1e30 would overflow float32 accumulators (and bf16 has float32's range).
    fits = max(float(gen_sq.max()), float(train_sq.max())) <= 1e30
    supported = candidates != "float32" and _bf16_matmul_supported(gen.device)
    if candidates == "auto":
        supported = supported and _bf16_candidates_by_default(gen.device)
    if candidates == "bfloat16" and not supported:
        raise ValueError(
            f"candidates='bfloat16' needs bf16 matmuls with float32 accumulation on {gen.device}: unavailable here "
            "(on CUDA, torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction must be False); use 'auto'"
        )
    use_bf16 = fits and supported
    if use_bf16:
        return _nearest_neighbors_bf16(gen, train, k, chunk_size, gen_sq, train_sq)
    return _nearest_neighbors_matmul(gen, train, k, chunk_size, gen_sq, train_sq)


def _nearest_neighbors_matmul(
    gen: torch.Tensor,
    train: torch.Tensor,
    k: int,
    chunk_size: int | None,
    gen_sq: torch.Tensor,
    train_sq: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 (or float64) candidate path of [`nearest_neighbors`]."""
    n, dim = gen.shape
    m = train.shape[0]
    if chunk_size is None:
        chunk_size = max(1, min(n, _DISTANCE_CHUNK_ELEMENTS // m))
    cand_dtype, unit = _candidate_precision(gen.device)
    if cand_dtype == torch.float32 and max(float(gen_sq.max()), float(train_sq.max())) > 1e30:
        cand_dtype, unit = torch.float64, 2.0**-53  # float32 products would overflow
    # |approximate - true squared distance| <= (gamma_B + 3u + small float64 terms) * (||a||^2 + ||b||^2), where
    # gamma_B = B u / (1 - B u) bounds one length-B block's dot product and 3u the rounding of float64 inputs to
    # float32; a factor 2 is kept as a safety margin.
    block = dim if cand_dtype == torch.float64 else min(dim, _MATMUL_K_BLOCK)
    gamma = block * unit / (1.0 - block * unit)
    tol = 2.0 * (gamma + 3.0 * unit + 4.0 * (dim + 8) * 2.0**-53) * (gen_sq + float(train_sq.max()))
    n_cand = min(m, k + _CANDIDATE_MARGIN)

    distances = torch.empty(n, k, dtype=torch.float64, device=gen.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=gen.device)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        sq = _approx_squared_distances(gen[start:stop], train, gen_sq[start:stop], train_sq, cand_dtype)
        cand_sq, cand_idx = torch.topk(sq, n_cand, dim=1, largest=False, sorted=True)
        limit = cand_sq[:, k - 1] + 2.0 * tol[start:stop]
        inside = cand_sq <= limit[:, None]  # a prefix of each row: candidates are sorted
        if n_cand < m:
            complete = ~inside[:, -1]
        else:
            complete = torch.ones_like(limit, dtype=torch.bool)

        counts = inside.sum(dim=1)  # >= k: the first k candidates are inside by construction
        for width in torch.unique(counts[complete]).tolist():
            # Rows grouped by their number of candidates: most need only about k exact distances.
            rows = torch.nonzero(complete & (counts == width)).flatten()
            idx = cand_idx[rows, :width]
            d, i = _select_k(_exact_distances(gen[start:stop][rows], train, idx), idx, k)
            distances[start + rows], indices[start + rows] = d, i
        for row in torch.nonzero(~complete).flatten().tolist():
            # More near-ties than kept candidates: re-rank every training sample inside the error bound.
            idx = torch.nonzero(sq[row] <= limit[row]).flatten()[None, :]
            d, i = _select_k(_exact_distances(gen[start + row : start + row + 1], train, idx), idx, k)
            distances[start + row], indices[start + row] = d[0], i[0]
    return distances, indices


def _bf16_bounds(
    dots: torch.Tensor,
    gen_stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    train_stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate squared distances and their rigorous error bounds from one bf16 GEMM's dot products.

    With `a = bf16(a) + r_a` exactly, `a.b - bf16(a).bf16(b) = bf16(a).r_b + r_a.b`, bounded by Cauchy-Schwarz. The
    GEMM multiplies bf16 values exactly in float32, sums `dim` products in float32 (error <= gamma_dim times the sum
    of absolute products <= gamma_dim ||bf16(a)|| ||bf16(b)||, any summation order), rounds the sum once to bf16
    (at most 2 u_bf16 / (1 - 2 u_bf16) of the result, by truncation or to nearest) and may flush subnormals (an
    absolute term). The float64
    assembly of `||a||^2 + ||b||^2 - 2 a.b` adds a relative `(dim + 16) 2^-50`. Bounds are widened by 2^-20 for
    the float64 rounding of the bound itself.

    Args:
        dots (`torch.Tensor`): bf16 GEMM result `(n, m)`.
        gen_stats, train_stats (`tuple`): squared norms, norms of the bf16 copies, residual norms (float64).
        dim (`int`): feature dimension D.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: approximate squared distances and bounds, float64 `(n, m)`.
    """
    gen_sq, gen_low, gen_res = gen_stats
    train_sq, train_low, train_res = train_stats
    gamma = dim * 2.0**-24 / (1.0 - dim * 2.0**-24)
    u_bf16 = 2.0**-8
    flush = dim * 2.0**-124
    sq = dots.to(torch.float64)
    # 2 u / (1 - 2 u) of the result covers a final rounding by truncation as well as to nearest.
    bound = sq.abs().mul_(2.0 * (2.0 * u_bf16) / (1.0 - 2.0 * u_bf16))
    sq.mul_(-2.0).add_(gen_sq[:, None]).add_(train_sq[None, :])
    bound.addr_(gen_low, train_res, alpha=2.0)
    bound.addr_(gen_res, train_sq.sqrt() * (1.0 + 2.0**-40), alpha=2.0)
    bound.addr_(gen_low + 1.0, train_low + 1.0, alpha=2.0 * gamma + 2.0 * flush)
    bound.add_(gen_sq[:, None] * ((dim + 16) * 2.0**-50)).add_(train_sq[None, :] * ((dim + 16) * 2.0**-50))
    return sq, bound.mul_(1.0 + 2.0**-20)


def _refine_candidates(
    queries: torch.Tensor,
    train: torch.Tensor,
    index: torch.Tensor,
    queries_sq: torch.Tensor,
    train_sq: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact k nearest among candidates `index` `(r, w)`: a bounded float32 filter, then float64 re-ranking.

    The filter's dot products run in the inputs' dtype (float64 under reduced float32-matmul settings), with
    `|error| <= gamma_D ||a|| ||b||` (Higham 2002, Sec. 3.1), so only candidates within that bound of the k-th are
    recomputed from explicit float64 differences; the result equals a float64 brute force over the candidates.
    """
    rows, width = index.shape
    dim = queries.shape[1]
    if width <= k:
        return _select_k(_exact_distances(queries, train, index), index, k)
    dtype = torch.promote_types(queries.dtype, train.dtype)  # no input is rounded
    if dtype == torch.float32 and _candidate_precision(queries.device)[0] == torch.float64:
        dtype = torch.float64
    unit = 2.0**-24 if dtype == torch.float32 else 2.0**-53
    gamma = dim * unit / (1.0 - dim * unit)
    dots = torch.empty(rows, width, dtype=torch.float64, device=queries.device)
    step = max(1, _BF16_BLOCK_ELEMENTS // (width * dim))
    for start in range(0, rows, step):
        block = train[index[start : start + step]].to(dtype)
        dots[start : start + step] = torch.bmm(block, queries[start : start + step, :, None].to(dtype))[..., 0]
    cand_sq = train_sq[index]
    sq = dots.mul(-2.0).add_(queries_sq[:, None]).add_(cand_sq)
    bound = (cand_sq.sqrt() * queries_sq.sqrt()[:, None]).mul_(2.0 * gamma)
    bound.add_((cand_sq + queries_sq[:, None]).mul_((dim + 16) * 2.0**-50)).mul_(1.0 + 2.0**-20)
    cap = torch.kthvalue(sq + bound, k, dim=1).values
    lower = sq.sub_(bound)
    keep = int((lower <= cap[:, None]).sum(dim=1).max())
    order = torch.topk(lower, keep, dim=1, largest=False, sorted=False).indices
    index = torch.gather(index, 1, order)
    return _select_k(_exact_distances(queries, train, index), index, k)


def _nearest_neighbors_bf16(
    gen: torch.Tensor,
    train: torch.Tensor,
    k: int,
    chunk_size: int | None,
    gen_sq: torch.Tensor,
    train_sq: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bf16 candidate path of [`nearest_neighbors`] (see its docstring for the bound)."""
    n, dim = gen.shape
    m = train.shape[0]
    if chunk_size is None:
        # A few float64 (chunk x m) matrices live at once: about 4M entries each keeps them near 32 MiB.
        chunk_size = max(1, min(n, (_DISTANCE_CHUNK_ELEMENTS // 2) // m))
    train_low, train_low_norms, train_res_norms = _bf16_split(train, train_sq.sqrt())
    train_stats = (train_sq, train_low_norms, train_res_norms)
    max_width = max(k, m // _BF16_MAX_CANDIDATE_SHARE)

    distances = torch.empty(n, k, dtype=torch.float64, device=gen.device)
    indices = torch.empty(n, k, dtype=torch.int64, device=gen.device)
    fallback: list[torch.Tensor] = []
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        gen_low, gen_low_norms, gen_res_norms = _bf16_split(gen[start:stop], gen_sq[start:stop].sqrt())
        sq, bound = _bf16_bounds(
            gen_low @ train_low.T, (gen_sq[start:stop], gen_low_norms, gen_res_norms), train_stats, dim
        )
        del gen_low
        # At least k samples lie within their upper bounds, so the k-th smallest upper bound caps the k-th distance.
        cap = torch.kthvalue(sq + bound, k, dim=1).values
        lower = sq.sub_(bound)
        del bound
        counts = (lower <= cap[:, None]).sum(dim=1)
        too_wide = counts > max_width
        if bool(too_wide.any()):
            fallback.append(start + torch.nonzero(too_wide).flatten())
        # Widths rounded up to multiples of 4: few groups, and extra candidates are harmless (re-ranked exactly).
        widths = torch.clamp((counts + 3) // 4 * 4, max=m)
        for width in torch.unique(widths[~too_wide]).tolist():
            rows = torch.nonzero(~too_wide & (widths == width)).flatten()
            idx = torch.topk(lower[rows], width, dim=1, largest=False, sorted=False).indices
            d, i = _refine_candidates(gen[start + rows], train, idx, gen_sq[start + rows], train_sq, k)
            distances[start + rows], indices[start + rows] = d, i
        del lower
    if fallback:
        rows = torch.cat(fallback)
        del train_low
        d, i = _nearest_neighbors_matmul(gen[rows], train, k, chunk_size, gen_sq[rows], train_sq)
        distances[rows], indices[rows] = d, i
    return distances, indices

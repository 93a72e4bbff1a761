"""Exact k nearest neighbours with a cached training-side index: provable lower bounds skip most distance work.

Every evaluation searches the nearest training samples of its generated samples, and a sweep or study searches the same
training set again for every run. The training side of the search below is computed once per training set (cached in
memory under `data.samples_fingerprint`), and per chunk of queries a cheap lower bound on every distance rules out all
but a handful of training samples before any exact distance is computed:

1. Index (once per training set): a centre `mu`, an orthonormal basis `Q` (`D x p`, principal directions of a
   subsample), and per training sample `x` its coordinates `c_x = Q^T (x - mu)` and residual norm
   `r_x = ||(I - Q Q^T)(x - mu)||`.
2. Per chunk of queries `g`: the same `c_g`, `r_g`, then the bound `||g - x||^2 >= ||c_g - c_x||^2 + (r_g - r_x)^2`
   for all pairs at once, as one GEMM of width `p + 1` (see [`_PrunedIndex`] for the proof, rounding included).
3. Seeds: per query the `w = k + 2` training samples with the smallest bounds (minima of the `w` best 64-column
   blocks); rigorous intervals of their distances (float32 dot products with their `gamma_D` bound) give `tau`, an
   upper bound of the k-th distance. Every training sample whose bound exceeds `tau` (with a rounding margin) is
   provably not among the k nearest.
4. Survivors: the (query, training sample) pairs left form one ragged list sorted by query; their intervals come from
   one sampled dense-dense product (`torch.sparse.sampled_addmm`, each training row read once, no gathered copy), the
   k-th smallest upper bound per query caps its k-th distance, and exact float64 distances (explicit differences, the
   brute force's arithmetic) are computed only for pairs whose interval reaches under that cap, in bounded-memory
   blocks. The k smallest per query are selected by one sort on (query, distance, index): ties go to the lower
   training index, and the result equals [`brute_force_neighbors`] bit for bit. No step loops over queries.

Where pruning does not pay (high-rank data such as uniform noise, where every bound is far below the distances; tiny
problems), the brute-force search runs instead: a cheap check on a subsample decides before any index is built, and a
chunk whose survivors are too many hands the remaining queries over to brute force.
"""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Literal

import numpy as np
import torch

from ..data import samples_fingerprint
from .arrays import _as_pair, _as_samples, _check_chunk, _check_int
from .brute_force import _candidate_precision, brute_force_neighbors

__all__ = ["NeighborIndex", "clear_neighbor_cache", "nearest_neighbors"]

ArrayLike = torch.Tensor | np.ndarray

# Rank of the basis: at most 256 and D / 24 (the bound GEMM then costs ~1/24 of a brute-force GEMM), at least 8.
_MAX_COMPONENTS = 256
_FEATURES_PER_COMPONENT = 24
_MIN_COMPONENTS = 8
# Rows of the subsample the basis is fitted on (its Gram matrix is `s x s`), and of the cheap pre-check.
_BASIS_ROWS = 512
_CHECK_ROWS = 256
# Share of held-out variance the pre-check basis must capture for an index to be built (uniform noise: ~p / D).
_MIN_CAPTURED_VARIANCE = 0.5
# Below this training-set size (M x D values) brute force is fast enough that no index is built implicitly.
_MIN_INDEXED_ELEMENTS = 1 << 22
# Features per float32 projection block: the error bound grows with the block length (gamma_B).
_PROJECTION_K_BLOCK = 1024
# Element budgets of temporaries: row blocks of the index build (work dtype); the bound matrix of one chunk of queries
# (work dtype: 128 MiB in float32, so few chunks and few large ops per search, which matters on a loaded machine where
# every parallel region can wait for a descheduled thread); gathered rows of candidate pairs (work dtype); rows of one
# projection block (8 MiB in float32) and of one block of exact differences (1 MiB in float64), both small enough to
# stay in cache between the steps that read them. Buffers are allocated once per pass and reused for every block.
_BOUND_CHUNK_ELEMENTS = 1 << 22
_SEARCH_CHUNK_ELEMENTS = 1 << 25
_GATHER_ELEMENTS = 1 << 23
_PROJECT_ELEMENTS = 1 << 21
_EXACT_ELEMENTS = 1 << 17
# t of the bound's error split (A - B)^2 >= (1 - t) A^2 - (1/t - 1) B^2.
_SPLIT_T = 1.0 / 32.0
# A chunk hands its remaining queries to brute force when the mean exact work per query exceeds M / 64 distances
# (a gathered distance costs tens of times a GEMM entry); a single query when it exceeds M / 4.
_MAX_MEAN_SHARE = 64
_MAX_ROW_SHARE = 4
_CACHE_SIZE = 4
# Queries of the first chunk, which decides whether pruning pays for the rest.
_PROBE_ROWS = 64
# Columns per block of the seed selection (`_seed_columns`).
_SEED_BLOCK = 64

_CACHE: OrderedDict[tuple, _PrunedIndex | None] = OrderedDict()
_FINGERPRINTS: dict[int, tuple] = {}
_LOCK = threading.Lock()


def _unit_roundoff(dtype: torch.dtype) -> float:
    return 2.0**-24 if dtype == torch.float32 else 2.0**-53


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term dot product."""
    return n * u / (1.0 - n * u)


def _auto_components(m: int, dim: int) -> int:
    """Rank p of the basis: `min(256, D / 24, M / 8)` rounded down to a multiple of 8; 0 when below 8."""
    p = min(_MAX_COMPONENTS, dim // _FEATURES_PER_COMPONENT, m // 8) // 8 * 8
    return p if p >= _MIN_COMPONENTS else 0


def _work_dtype(train: torch.Tensor) -> torch.dtype:
    """float32 for float32 data under IEEE float32 matmuls; float64 for float64 data or reduced matmul precision."""
    if train.dtype == torch.float32 and _candidate_precision(train.device)[0] == torch.float32:
        return torch.float32
    return torch.float64


def _spread_rows(m: int, count: int, offset: float = 0.0, device: torch.device | None = None) -> torch.Tensor:
    """`count` distinct row indices spread evenly over `range(m)` (deterministic: no random draw)."""
    count = min(m, count)
    return torch.unique(
        ((torch.arange(count, dtype=torch.float64) + offset) * (m / count)).long().clamp_(0, m - 1)
    ).to(device)


def _fit_basis(train: torch.Tensor, p: int, rows: torch.Tensor, work: torch.dtype) -> torch.Tensor | None:
    """An orthonormal basis (`D x p`, float64) of the top principal directions of the subsample `train[rows]`.

    The Gram matrix of the centred subsample is diagonalised (`s x s`, cheap for `s << D`); its eigenvectors mapped back
    to feature space are orthonormalised by QR. Only the bound's tightness depends on how well these directions
    capture the data, never its validity. Returns None when the subsample has no spread.
    """
    sub = train[rows].to(work)
    sub = sub - sub.mean(dim=0, dtype=torch.float64).to(work)
    gram = (sub @ sub.T).to(torch.float64)
    evals, evecs = torch.linalg.eigh((gram + gram.T) / 2)
    keep = min(p, int((evals > evals[-1] * 1e-10).sum()))
    if keep < 1 or not bool(evals[-1] > 0):
        return None
    directions = sub.to(torch.float64).T @ (evecs[:, -keep:] / evals[-keep:].sqrt())
    basis = torch.linalg.qr(directions).Q
    if keep < p:  # pad with further orthonormal directions (any orthonormal basis keeps the bound valid)
        extra = torch.eye(basis.shape[0], p - keep, dtype=torch.float64, device=basis.device)
        basis = torch.linalg.qr(torch.cat([basis, extra], dim=1)).Q
    return basis if bool(torch.isfinite(basis).all()) else None


def _column_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows accumulated in float64, in row blocks (no full-size float64 copy)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    step = max(1, _BOUND_CHUNK_ELEMENTS // x.shape[1])
    for start in range(0, x.shape[0], step):
        total += x[start : start + step].sum(dim=0, dtype=torch.float64)
    return total / x.shape[0]


def _refine_basis(train: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """One step of subspace iteration over the whole training set: `orth((X - mu)^T (X - mu) Q)`.

    The subsample's directions move toward the principal directions of all samples (tighter bounds, fewer survivors);
    correctness does not depend on it. Returns the input basis when the step degenerates.
    """
    m, dim = train.shape
    product = torch.zeros(dim, basis.shape[1], dtype=torch.float64, device=train.device)
    step = max(1, _BOUND_CHUNK_ELEMENTS // dim)
    for start in range(0, m, step):
        y = train[start : start + step].to(basis.dtype) - mean
        product += (y.T @ (y @ basis)).to(torch.float64)
    if not bool(torch.isfinite(product).all()):
        return basis
    refined = torch.linalg.qr(product).Q
    return refined.to(basis.dtype) if bool(torch.isfinite(refined).all()) else basis


def _captured_variance(train: torch.Tensor, p: int, work: torch.dtype) -> float:
    """Share of the variance of held-out training rows in the top-p directions of another small subsample."""
    m = train.shape[0]
    fit = _spread_rows(m, _CHECK_ROWS, device=train.device)
    held = _spread_rows(m, _CHECK_ROWS, offset=0.5, device=train.device)
    held = held[~torch.isin(held, fit)]
    if held.numel() == 0:
        return 1.0
    basis = _fit_basis(train, min(p, fit.numel() // 2), fit, work)
    if basis is None:
        return 1.0
    centre = train[fit].mean(dim=0, dtype=torch.float64)
    y = train[held].to(torch.float64) - centre
    total = float(y.square().sum())
    return float((y @ basis).square().sum()) / total if total > 0 else 1.0


class _PrunedIndex:
    r"""Training-side quantities of the pruned search and the bound with its rounding errors.

    **The bound.** Let `Q` (`D x p`) have `||Q^T Q - I||_2 <= delta < 1` (it is orthonormal up to rounding; `delta` is
    measured in float64 as the Frobenius norm of `Q^T Q - I`, an upper bound of the spectral norm, plus a margin for the
    rounding of that computation). For a centre `mu` and any sample `z` let `z' = z - mu`, `c_z = Q^T z'`,
    `e_z = z' - Q c_z` and `r_z = ||e_z||`. For `y = g - x`: `a = Q^T y = c_g - c_x`, `e = y - Q a = e_g - e_x`, and

        ||y||^2 = ||Q a + e||^2 = a^T Q^T Q a + 2 a^T Q^T e + ||e||^2 = ||a||^2 - a^T (Q^T Q - I) a + ||e||^2

    because `Q^T e = a - Q^T Q a`. Hence `||g - x||^2 >= (1 - delta) ||c_g - c_x||^2 + ||e_g - e_x||^2`, and the
    triangle inequality gives `||e_g - e_x|| >= |r_g - r_x|`:

        ||g - x||^2 >= (1 - delta) (||c_g - c_x||^2 + (r_g - r_x)^2) = (1 - delta) ||s_g - s_x||^2,   s_z = [c_z, r_z].

    For an exactly orthonormal `Q` (delta = 0) this is `||P(g - x)||^2 + (r_g - r_x)^2`.

    **Rounding.** What is stored are computed `s'_z` with an error radius `E_z >= ||s'_z - s_z||` (from
    [`_project`]). With `A = ||s'_g - s'_x||`, `B = E_g + E_x` and `||s_g - s_x|| >= A - B`, the inequality
    `(A - B)^2 >= (1 - t) A^2 - (1/t - 1) B^2` (it is `(sqrt(t) A - B / sqrt(t))^2 >= 0`) and `B^2 <= 2 E_g^2 + 2 E_x^2`
    give a bound that separates into a GEMM plus row and column terms:

        ||g - x||^2 >= alpha (||s'_g||^2 + ||s'_x||^2 - 2 s'_g . s'_x) - beta (E_g^2 + E_x^2),
        alpha = (1 - delta)(1 - t),  beta = 2 (1 - delta)(1/t - 1).

    The GEMM `Y = col_x - 2 alpha s'_g . s'_x` runs in the work dtype (unit roundoff u, `K = p + 1` terms): its error is
    at most `gamma2 (|col_x| + alpha ||s'_g||^2 + alpha ||s'_x||^2)` with `gamma2 = 2 gamma_{p+4} + 8u` (the dot
    product, the scaling by alpha, the addition of `col_x`; `2 |s'_g . s'_x| <= ||s'_g||^2 + ||s'_x||^2`).
    `col_x = alpha ||s'_x||^2 - beta E_x^2` is stored lowered by `2 gamma2 (|col_x| + alpha ||s'_x||^2)` and by its
    own rounding to the work dtype, which covers the column part of that error; so with
    `row_g = alpha ||s'_g||^2 - beta E_g^2 - gamma2 alpha ||s'_g||^2`, `||g - x||^2 >= Y + row_g`.

    **Pruning.** The final distances `d'` are float64 norms of explicit differences, with `|d'^2 - d^2| <=
    gamma_{D+4} d^2` in float64. If `tau` is the k-th smallest `d'^2` among some k training samples, every `x` with
    `d(x)^2 > tau (1 + 8 (D + 8) 2^-53)` has `d'(x) > sqrt(tau)` and ranks behind those k: it cannot be among the
    k nearest by `(d', index)`. So `x` is pruned when `Y > tau (1 + 8 (D + 8) 2^-53) - row_g`, the threshold evaluated
    in float64 with a relative margin of `2^-48` and rounded up to the work dtype. Survivors keep their `Y <= threshold`
    and get distance intervals, then exact distances where an interval reaches under the k-th smallest upper bound
    (times the same factor); a tie with the k-th distance always survives both tests (they are strict), so the
    tie-breaking by the lower index is the brute force's.
    """

    def __init__(self, train: torch.Tensor, n_components: int, work: torch.dtype) -> None:
        m, dim = train.shape
        self.dim, self.work, self.n_components = dim, work, n_components
        self.u = _unit_roundoff(work)
        rows = _spread_rows(m, max(2 * n_components, _BASIS_ROWS), device=train.device)
        basis = _fit_basis(train, n_components, rows, work)
        if basis is None:
            raise ValueError("training samples have no spread: no basis")
        self.mean = _column_mean(train).to(work)
        self.basis = _refine_basis(train, basis.to(work), self.mean).contiguous()
        block = min(dim, _PROJECTION_K_BLOCK) if work == torch.float32 else dim
        self.basis_blocks = self.basis[: dim // block * block].view(-1, block, n_components)
        q64 = self.basis.to(torch.float64)
        defect = q64.T @ q64 - torch.eye(n_components, dtype=torch.float64, device=q64.device)
        # The float64 Gram entries carry at most gamma_D (1 + defect) of rounding each: (D + 2) 2^-52 per entry.
        self.delta = float(torch.linalg.matrix_norm(defect)) + n_components * (dim + 2) * 2.0**-52
        if self.delta >= 0.5:
            raise ValueError(f"basis not orthonormal enough (delta={self.delta})")
        self.alpha = (1.0 - self.delta) * (1.0 - _SPLIT_T)
        self.beta = 2.0 * (1.0 - self.delta) * (1.0 / _SPLIT_T - 1.0)
        self.gamma2 = 2.0 * _gamma(n_components + 4, self.u) + 8.0 * self.u
        coords, norms, errors, self.train_sq = self._project(train)
        self.coords = coords
        # Squared distances more than this factor above a float64 distance's square rank behind it (class doc).
        self.rank_margin = 1.0 + 8.0 * (dim + 8) * 2.0**-53
        col = self.alpha * norms - self.beta * errors.square()
        col = col - 2.0 * self.gamma2 * (col.abs() + self.alpha * norms) - 4.0 * self.u * col.abs()
        self.columns = col.to(work)
        self.largest_column = float(self.columns.abs().max())

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (self.basis, self.mean, self.coords, self.columns, self.train_sq)
        )

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`s'_z = [c'_z, r'_z]` in the work dtype, `||s'_z||^2`, the error radius `E_z >= ||s'_z - s_z||` and `||z||^2`.

        The last three are float64; `||z||^2` (of the uncentred rows, for the distance intervals) is computed in the
        same pass, while each block of rows is in cache.

        `y = fl(z - mu)` has `|y - z'| <= u |z'|` elementwise; `c' = Q^T y` is summed over blocks of B features in the
        work dtype and accumulated in float64, so `||c' - Q^T y|| <= gamma_B || |Q|^T |y| || <= gamma_B ||Q||_F ||y||`
        with `||Q||_F^2 <= p (1 + delta)`; `||Q^T (y - z')|| <= sqrt(1 + delta) u ||z'||`; rounding `c'` to the work
        dtype adds `u ||c'||`: together `eps_c`. The residual uses `r^2 = ||z'||^2 - ||c||^2 + c^T (Q^T Q - I) c`:
        `rho = ||y||^2 - ||c'||^2` (float64) is within `eta = delta (||c'|| + eps_c)^2 + eps_c (2 ||c'|| + eps_c) +
        3u ||y||^2 + 2^-48 (||y||^2 + ||c'||^2)` of `r^2`, so `r' = sqrt(max(rho, 0))` is within `eps_r = eta /
        sqrt(rho)` (or `sqrt(eta)` when `rho <= eta`) of `r`, plus `2u r'` for rounding `r'`. `E = eps_c + eps_r`.
        """
        n, dim = x.shape
        p, work, u = self.n_components, self.work, self.u
        block = min(dim, _PROJECTION_K_BLOCK) if work == torch.float32 else dim
        full = dim // block * block
        coords = torch.empty(n, p + 1, dtype=work, device=x.device)
        c64 = torch.empty(n, p, dtype=torch.float64, device=x.device)
        y_sq = torch.empty(n, dtype=torch.float64, device=x.device)
        x_sq = torch.empty(n, dtype=torch.float64, device=x.device)
        # Row blocks of a few MiB: each block is read from memory once and reused from cache by every step below.
        step = max(1, _PROJECT_ELEMENTS // dim)
        buffer = torch.empty(min(n, step), dim, dtype=work, device=x.device)
        for start in range(0, n, step):
            rows = x[start : start + step]
            y = torch.sub(rows.to(work), self.mean, out=buffer[: rows.shape[0]])
            # One batched product over all feature blocks (each a dot product of `block` terms), summed in float64.
            parts = torch.bmm(y[:, :full].view(y.shape[0], -1, block).transpose(0, 1), self.basis_blocks)
            acc = torch.sum(parts, dim=0, dtype=torch.float64)
            if full < dim:
                acc += (y[:, full:] @ self.basis[full:]).to(torch.float64)
            c64[start : start + step] = acc
            y_sq[start : start + step] = torch.linalg.vector_norm(y, dim=1, dtype=torch.float64).square_()
            x_sq[start : start + step] = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).square_()
        coords[:, :p] = c64
        c_w = coords[:, :p].to(torch.float64)
        c_sq = c_w.square().sum(dim=1)
        c_norm, y_norm = c_sq.sqrt(), y_sq.sqrt()
        grow = 1.0 + 2.0**-20  # float64 rounding of these error terms themselves
        eps_c = (
            (_gamma(block, u) + dim * 2.0**-53) * math.sqrt(p * (1.0 + self.delta)) * y_norm
            + 2.0 * u * math.sqrt(1.0 + self.delta) * y_norm
            + 2.0 * u * c_norm
        ) * grow
        eta = (
            self.delta * (c_norm + eps_c).square()
            + eps_c * (2.0 * c_norm + eps_c)
            + 3.0 * u * y_sq
            + 2.0**-48 * (y_sq + c_sq)
        ) * grow
        rho = y_sq - c_sq
        r = rho.clamp(min=0.0).sqrt()
        eps_r = torch.where(rho > eta, eta / rho.clamp(min=torch.finfo(torch.float64).tiny).sqrt(), eta.sqrt())
        coords[:, p] = r
        eps_r = (eps_r + 2.0 * u * r) * grow
        norms = coords.to(torch.float64).square().sum(dim=1)
        return coords, norms, (eps_c + eps_r) * grow, x_sq

    def search(
        self,
        gen: torch.Tensor,
        train: torch.Tensor,
        k: int,
        chunk_size: int | None,
        candidates: str,
        adaptive: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact k nearest neighbours of `gen` in `train` (the data this index was built from).

        With `adaptive`, queries whose survivors are too many for pruning to pay go to brute force.
        """
        n, m = gen.shape[0], train.shape[0]
        distances = torch.empty(n, k, dtype=torch.float64, device=gen.device)
        indices = torch.empty(n, k, dtype=torch.int64, device=gen.device)
        chunk = chunk_size or max(1, min(n, _SEARCH_CHUNK_ELEMENTS // m))
        width = min(m, k + 2)  # samples with the smallest bounds whose distances set the threshold
        leftover: list[torch.Tensor] = []
        # One bound buffer for every chunk: a fresh 128 MiB block per chunk would be page-faulted in each time.
        buffer = torch.empty(min(n, chunk) * m, dtype=self.work, device=gen.device)
        mask = torch.empty(min(n, chunk) * m, dtype=torch.bool, device=gen.device)
        start = 0
        while start < n:
            # A small first chunk probes whether pruning pays before most of the work is spent on it.
            stop = min(n, start + (min(chunk, _PROBE_ROWS) if adaptive and start == 0 else chunk))
            pays, fallback = self._search_chunk(
                gen[start:stop], train, k, width, distances[start:stop], indices[start:stop], adaptive, buffer, mask
            )
            if fallback.numel():
                leftover.append(start + fallback)
            start = stop
            if not pays:  # pruning does not pay on these queries: brute force for the rest
                leftover.append(torch.arange(start, n, device=gen.device))
                break
        if leftover:
            rows = torch.cat(leftover)
            if rows.numel():
                d, i = brute_force_neighbors(gen[rows], train, k, None, candidates)
                distances[rows], indices[rows] = d, i
        return distances, indices

    def _search_chunk(
        self,
        queries: torch.Tensor,
        train: torch.Tensor,
        k: int,
        width: int,
        distances: torch.Tensor,
        indices: torch.Tensor,
        adaptive: bool,
        buffer: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[bool, torch.Tensor]:
        """Fills `distances`/`indices` of one chunk; returns (pruning paid, rows left to brute force).

        Every stage is a few large ops over the whole chunk: the bound as one GEMM, the `width` seeds per query from
        block minima ([`_seed_columns`]), and then the candidate pairs (seeds and survivors) as one ragged list, sorted by query, whose interval
        checks and exact distances run in bounded-memory blocks of pairs; no loop over queries.
        """
        m, n = train.shape[0], queries.shape[0]
        everything = torch.arange(n, device=queries.device)
        coords, norms, errors, queries_sq = self._project(queries)
        if float(norms.max()) > 1e30 or self.largest_column > 1e30:  # float32 GEMM could overflow
            return False, everything
        bound = buffer[: n * m].view(n, m)
        torch.addmm(self.columns[None, :], coords, self.coords.T, beta=1.0, alpha=-2.0 * self.alpha, out=bound)
        row = self.alpha * norms - self.beta * errors.square() - self.gamma2 * self.alpha * norms
        work_queries = queries.to(self.work)
        seeds = _seed_columns(bound, width).sort(dim=1).values
        seed_rows = everything.repeat_interleave(width)
        seed_lo, seed_hi = self._intervals(work_queries, train, seed_rows, seeds.reshape(-1), queries_sq)
        # At least k seeds lie within their upper bounds: the k-th smallest caps the k-th distance (see class doc).
        tau = torch.kthvalue(seed_hi.view(n, width), k, dim=1).values
        limit = tau * self.rank_margin - row
        limit = limit + 2.0**-48 * (tau.abs() + row.abs())
        limit_w = limit.to(self.work)
        limit_w = torch.where(
            limit_w.to(torch.float64) < limit, torch.nextafter(limit_w, limit_w.new_tensor(math.inf)), limit_w
        )
        survive = torch.le(bound, limit_w[:, None], out=mask[: n * m].view(n, m))
        survive.scatter_(1, seeds, False)
        too_many = torch.zeros(n, dtype=torch.bool, device=queries.device)
        # Pairs take 16 bytes each: at most 4x the bound buffer where nearly everything survives.
        pair_rows, pair_cols = torch.nonzero(survive, as_tuple=True)
        if adaptive and pair_rows.numel() / n + width > m / _MAX_MEAN_SHARE:
            return False, everything
        if adaptive:
            too_many = torch.bincount(pair_rows, minlength=n) > max(16, m // _MAX_ROW_SHARE)
            if bool(too_many.any()):  # those rows go to the brute force
                kept = ~too_many[pair_rows]
                pair_rows, pair_cols = pair_rows[kept], pair_cols[kept]
        lo, hi = self._intervals(work_queries, train, pair_rows, pair_cols, queries_sq)
        rows, cols = torch.cat([seed_rows, pair_rows]), torch.cat([seeds.reshape(-1), pair_cols])
        lo, hi = torch.cat([seed_lo, lo]), torch.cat([seed_hi, hi])
        # The k-th smallest upper bound per query (every query has at least `width >= k` candidates) caps its k-th
        # distance; a candidate whose lower bound exceeds `cap (1 + 8 (D + 8) 2^-53)` has a float64 distance above k
        # others (class doc, "Pruning") and gets no exact distance.
        by_row = _grouped_order(rows, hi)
        starts = torch.cumsum(torch.bincount(rows, minlength=n), 0) - torch.bincount(rows, minlength=n)
        cap = hi[by_row][starts + (k - 1)] * self.rank_margin
        cap = cap + 2.0**-48 * cap.abs()
        keep = lo <= cap[rows]
        rows, cols = rows[keep], cols[keep]
        exact = _exact_pair_distances(queries, train, rows, cols)
        # The k smallest per query, ties to the lower training index: order by (query, distance, index).
        order = torch.argsort(cols)
        order = order[_grouped_order(rows[order], exact[order])]
        counts = torch.bincount(rows, minlength=n)
        pick = ((torch.cumsum(counts, 0) - counts)[:, None] + torch.arange(k, device=rows.device)).reshape(-1)
        distances.copy_(exact[order[pick]].view(n, k))
        indices.copy_(cols[order[pick]].view(n, k))
        return True, torch.nonzero(too_many).flatten()

    def _intervals(
        self,
        queries: torch.Tensor,
        train: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        queries_sq: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds of the squared distances `||q_{rows[i]} - t_{cols[i]}||^2` of a list of pairs.

        `queries` are in the work dtype. The dot products run in the work dtype over all D features: `|error| <=
        gamma_D ||q|| ||t||` (Higham 2002, Sec. 3.1, for any order of summation); the float64 assembly
        `||q||^2 + ||t||^2 - 2 q.t` adds `(D + 16) 2^-50 (||q||^2 + ||t||^2)`.
        """
        count, dim = rows.numel(), queries.shape[1]
        if train.dtype == queries.dtype:
            dots = _sampled_dots(queries, train, rows, cols).to(torch.float64)
        else:  # float32 data searched in float64: gathered rows converted block by block
            dots = torch.empty(count, dtype=torch.float64, device=queries.device)
            step = max(1, _GATHER_ELEMENTS // dim)
            for start in range(0, count, step):
                block = train[cols[start : start + step]].to(self.work)
                dots[start : start + step] = block.mul_(queries[rows[start : start + step]]).sum(dim=1)
        cand_sq = self.train_sq[cols]
        q_sq = queries_sq[rows]
        sq = dots.mul_(-2.0).add_(q_sq).add_(cand_sq)
        err = (cand_sq.sqrt() * q_sq.sqrt()).mul_(2.0 * _gamma(dim, self.u))
        err.add_((cand_sq + q_sq).mul_((dim + 16) * 2.0**-50)).mul_(1.0 + 2.0**-20)
        return sq - err, sq.add_(err)


def _seed_columns(bound: torch.Tensor, width: int) -> torch.Tensor:
    """`width` distinct columns per row with small bounds: the minima of the `width` column blocks with the smallest minima.

    Blocks of `_SEED_BLOCK` columns: one vectorised min over the whole matrix and a top-k over `M / 64` block minima,
    about five times cheaper than a top-k over all `M` columns. The seeds only set the threshold, so any columns keep
    the search exact; these are the true `width` smallest unless two of them share a block.
    """
    n, m = bound.shape
    length = _SEED_BLOCK
    if m < 2 * width * length:
        return torch.topk(bound, width, dim=1, largest=False, sorted=False).indices
    full = m // length * length
    minima = torch.amin(bound[:, :full].view(n, -1, length), dim=2)
    if full < m:
        minima = torch.cat([minima, torch.amin(bound[:, full:], dim=1, keepdim=True)], dim=1)
    blocks = torch.topk(minima, width, dim=1, largest=False, sorted=False).indices
    columns = (blocks[..., None] * length + torch.arange(length, device=bound.device)).clamp_(max=m - 1)
    values = bound.gather(1, columns.view(n, -1)).view(n, width, length)
    return columns.gather(2, values.argmin(dim=2, keepdim=True)).squeeze(2)


def _sampled_dots(queries: torch.Tensor, train: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """`q_{rows[i]} . t_{cols[i]}` for pairs sorted by `rows`, as one sampled dense-dense product (SDDMM).

    `torch.sparse.sampled_addmm` reads each needed training row once, straight from `train` (no gathered copy): about
    ten times faster on CPU than gathering rows and multiplying. Each entry is a dot product of D terms in the inputs'
    dtype, whatever the order of summation, so Higham's `gamma_D` bound holds.
    """
    n, m = queries.shape[0], train.shape[0]
    counts = torch.bincount(rows, minlength=n)
    crow = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    with warnings.catch_warnings():  # torch flags sparse CSR tensors as a beta feature, once per process
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow, cols, torch.zeros(cols.numel(), dtype=queries.dtype, device=queries.device), size=(n, m)
        )
        return torch.sparse.sampled_addmm(pattern, queries, train.T, beta=0.0).values()


def _grouped_order(groups: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A permutation sorting pairs by group, then by value; stable, so equal values keep their current order."""
    order = torch.sort(values, stable=True).indices
    return order[torch.sort(groups[order], stable=True).indices]


def _exact_pair_distances(
    queries: torch.Tensor, train: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """`||q_{rows[i]} - t_{cols[i]}||` from explicit float64 differences, as the brute force computes them.

    The same arithmetic as `brute_force._exact_distances` (the training row widened to float64, the query subtracted
    in float64: widening is exact, so `a - float64(b)` equals `float64(a) - float64(b)`; `vector_norm` over the
    contiguous last dimension), so the same bits. Pairs run in blocks small enough to stay in cache (about 1 MiB of
    float64 differences), with buffers reused for every block; queries are gathered in their own dtype, never
    converted as a whole (a float64 copy of every query would be the largest memory traffic of the search).
    """
    count, dim = rows.numel(), queries.shape[1]
    out = torch.empty(count, dtype=torch.float64, device=queries.device)
    if count == 0:
        return out
    step = max(1, _EXACT_ELEMENTS // dim)
    size = min(count, step)
    diff = torch.empty(size, dim, dtype=torch.float64, device=queries.device)
    gathered = torch.empty(size, dim, dtype=train.dtype, device=train.device)
    other = torch.empty(size, dim, dtype=queries.dtype, device=queries.device)
    for start in range(0, count, step):
        r = min(step, count - start)
        diff[:r].copy_(torch.index_select(train, 0, cols[start : start + r], out=gathered[:r]))
        diff[:r].sub_(torch.index_select(queries, 0, rows[start : start + r], out=other[:r]))
        torch.linalg.vector_norm(diff[:r], dim=-1, out=out[start : start + r])
    return out


# --------------------------------------------------------------------------------------------------------------------
# Cache: one index per training set (fingerprint) and device
# --------------------------------------------------------------------------------------------------------------------


def _identity(train: torch.Tensor) -> tuple:
    """What identifies unchanged data without reading it: the storage, its in-place version counter, the view."""
    storage = train.untyped_storage()
    return (
        id(storage),
        storage.data_ptr(),
        train._version,  # shared by views and detached aliases of the same data
        train.storage_offset(),
        tuple(train.shape),
        train.stride(),
        train.dtype,
        str(train.device),
    )


def _known_fingerprint(train: torch.Tensor) -> str | None:
    key = _identity(train)
    with _LOCK:
        known = _FINGERPRINTS.get(key[0])
    return known[2] if known is not None and known[0] == key and known[1]() is train.untyped_storage() else None


def _fingerprint(train: torch.Tensor) -> str:
    """`samples_fingerprint` of `train`, remembered for the same live storage while it is not modified in place.

    Only torch's version counter sees in-place changes: writes through a numpy array sharing the tensor's memory are
    not seen (pass a fresh tensor, or call [`clear_neighbor_cache`], after such writes).
    """
    fingerprint = _known_fingerprint(train)
    if fingerprint is not None:
        return fingerprint
    key = _identity(train)
    fingerprint = samples_fingerprint(train)
    storage = train.untyped_storage()
    with _LOCK:
        _FINGERPRINTS[key[0]] = (
            key,
            weakref.ref(storage, lambda _ref, i=key[0]: _FINGERPRINTS.pop(i, None)),
            fingerprint,
        )
    return fingerprint


def clear_neighbor_cache() -> None:
    """Drops every cached training-side index and remembered fingerprint."""
    with _LOCK:
        _CACHE.clear()
        _FINGERPRINTS.clear()


def _cached_index(train: torch.Tensor, n_queries: int) -> _PrunedIndex | None:
    """The index of `train` from the cache, built on a miss when pruning promises to pay; None for brute force."""
    m, dim = train.shape
    p = _auto_components(m, dim)
    if p == 0 or m * dim < _MIN_INDEXED_ELEMENTS:
        return None
    work = _work_dtype(train)
    fingerprint = _known_fingerprint(train)
    if fingerprint is None and n_queries < 2 * p:
        return None  # hashing the training set alone would cost more than this search
    fingerprint = fingerprint or _fingerprint(train)
    key = (fingerprint, str(train.device), work)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    index = None
    if _captured_variance(train, p, work) >= _MIN_CAPTURED_VARIANCE:
        try:
            index = _PrunedIndex(train, p, work)
        except ValueError:
            index = None
    with _LOCK:
        _CACHE[key] = index
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return index


def _nearest_neighbors(
    gen: torch.Tensor, train: torch.Tensor, k: int, chunk_size: int | None, candidates: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """[`nearest_neighbors`] on validated `(N, D)` and `(M, D)` tensors on one device (pruned where it pays)."""
    index = _cached_index(train, gen.shape[0])
    if index is None:
        return brute_force_neighbors(gen, train, k, chunk_size, candidates)
    return index.search(gen, train, k, chunk_size, candidates)


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def nearest_neighbors(
    generated: ArrayLike,
    training: ArrayLike,
    k: int = 2,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    candidates: Literal["auto", "bfloat16", "float32"] = "auto",
    pruning: Literal["auto", "off"] = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest training samples (Euclidean) of every generated sample.

    With `pruning="auto"` (the default) a training-side index (module docstring; cached in memory per training-set
    fingerprint and device, 4 sets at most) bounds every distance from below and exact distances are computed only for
    the training samples the bound cannot rule out. The index is built when the training set holds at least 4M values,
    D >= 192, and a basis fitted on 256 of its samples captures at least half the variance of 256 others (uniform noise
    does not: it goes straight to the brute force below); building costs about one brute-force search of as many
    queries as the basis has directions, and hashing the training set once per tensor object. Calls with fewer than
    2p queries do not build an index (but use a cached one).

    The brute force (`pruning="off"`, and wherever pruning does not pay): candidates are pre-selected with the matmul expansion `||a||^2 - 2 a.b + ||b||^2` and then re-ranked with
    distances recomputed from explicit float64 differences. A candidate set is accepted only when it provably contains
    the true k nearest neighbours, from a rigorous bound on the rounding error of the pre-selection (Higham, "Accuracy
    and Stability of Numerical Algorithms", 2002, Sec. 3.1 and 3.5):

    - `"bfloat16"` (the default on CPUs with AMX and on GPUs; available wherever oneDNN has bf16 matmuls): one bf16
      GEMM with float32 accumulation. Writing `a = bf16(a) + r_a`, the error of each dot product is at most
      `||bf16(a)|| ||r_b|| + ||r_a|| ||b|| + gamma_D ||bf16(a)|| ||bf16(b)|| + 2 u_bf16 |result|` (residual norms are
      computed exactly). Every training sample whose lower bound exceeds the k-th smallest upper bound is provably not
      among the k nearest; all others are re-ranked exactly. Rows where the bound does not separate (more than
      1/16 of the training set inside it) are searched again with the float32 path.
    - `"float32"`: float32 matmuls over blocks of 2048 features accumulated in float64 (bound `gamma_2048`), with the
      k-th smallest approximate distance plus twice the bound as the cut. Under TF32/bf16 float32-matmul settings
      it runs in float64 instead.

    Either way the result equals a brute-force float64 search (ties broken by the lower training index); the choice
    changes only the speed. Memory is bounded by one chunk of the `N x M` distance matrix (a few `chunk_size x M`
    float64 values) plus, for bf16, a bf16 copy of the training set (`M x D` x 2 bytes); no `N x M x D` tensor is
    formed. Computation runs on the tensors' device (or `device`).

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Query samples; flattened to `(N, D)`.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Reference samples with the same per-sample shape.
        k (`int`, defaults to `2`):
            Number of neighbours, `1 <= k <= M`.
        chunk_size (`int`, *optional*):
            Generated samples per chunk; defaults to about 8M distance entries (brute force) or 32M bound entries
            (pruned search) per chunk.
        device (`str` or `torch.device`, *optional*):
            Device to compute on; defaults to the device of the input tensors (CPU for numpy arrays).
        candidates (`str`, defaults to `"auto"`):
            Precision of the candidate search: `"auto"` (bf16 on CPUs with AMX and on GPUs whose bf16 GEMM reduces in
            float32, else float32), `"bfloat16"` or `"float32"`. The neighbours are exact with every choice.
        pruning (`str`, defaults to `"auto"`):
            `"auto"`: the cached index where it pays; `"off"`: always the brute force. Changes only the speed.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: distances `(N, k)` float64 (ascending per row) and indices `(N, k)`
        int64 into `training`, both on the compute device.
    """
    gen, train = _as_pair(generated, training, device=device)
    k = _check_int(k, "k", low=1, high=train.shape[0])
    if candidates not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"`candidates` must be 'auto', 'bfloat16' or 'float32', got {candidates!r}")
    if pruning not in ("auto", "off"):
        raise ValueError(f"`pruning` must be 'auto' or 'off', got {pruning!r}")
    if pruning == "off":
        return brute_force_neighbors(gen, train, k, _check_chunk(chunk_size), candidates)
    return _nearest_neighbors(gen, train, k, _check_chunk(chunk_size), candidates)


class NeighborIndex:
    """The training side of the exact nearest-neighbour search, held by the caller and searched any number of times.

    Builds the pruning index of [`nearest_neighbors`] (basis, projections, residual norms) once for `training`; each
    [`~NeighborIndex.search`] then pays only for its queries. Results equal a float64 brute force, ties broken by the
    lower training index. Where no basis pays (tiny or high-rank training sets), searches run the brute force.

    The index keeps a reference to `training`, not a copy: do not modify it in place afterwards (torch in-place changes
    are detected and make the next search rebuild the index; writes through an aliasing numpy array are not).

    Args:
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Reference samples; flattened to `(M, D)`. Must be finite.
        n_components (`int`, *optional*):
            Rank p of the basis, `1 <= p <= min(M, D)`; defaults to `min(256, D / 24, M / 8)` rounded down to a
            multiple of 8 (no pruning below 8). Changes only the speed.
        device (`str` or `torch.device`, *optional*):
            Device to build and search on; defaults to the device of `training` (CPU for numpy arrays).
        fallback (`bool`, defaults to `True`):
            Hand queries to the brute force where pruning does not pay. `False` prunes every query (to test the bound).

    Example:

    ```py
    >>> index = NeighborIndex(training_images)
    >>> distances, indices = index.search(generated_images, k=2)
    ```
    """

    def __init__(
        self,
        training: ArrayLike,
        *,
        n_components: int | None = None,
        device: str | torch.device | None = None,
        fallback: bool = True,
    ) -> None:
        self._sample_shape = tuple(training.shape[1:]) if hasattr(training, "shape") else None
        self.training = _as_samples(training, "training", device=device)
        m, dim = self.training.shape
        if n_components is None:
            n_components = _auto_components(m, dim)
        else:
            n_components = _check_int(n_components, "n_components", low=1, high=min(m, dim))
        self.n_components = n_components
        self.fallback = bool(fallback)
        self._version = _identity(self.training)
        self._index = self._build()

    def _build(self) -> _PrunedIndex | None:
        if self.n_components == 0:
            return None
        try:
            return _PrunedIndex(self.training, self.n_components, _work_dtype(self.training))
        except ValueError:  # no spread (all samples equal): brute force is trivial
            return None

    @property
    def pruning(self) -> bool:
        """Whether searches prune with a basis (False: every search is a brute force)."""
        return self._index is not None

    def search(
        self,
        generated: ArrayLike,
        k: int = 2,
        *,
        chunk_size: int | None = None,
        candidates: Literal["auto", "bfloat16", "float32"] = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact k nearest training samples (Euclidean) of every generated sample.

        Args:
            generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
                Query samples with the training samples' per-sample shape.
            k (`int`, defaults to `2`):
                Number of neighbours, `1 <= k <= M`.
            chunk_size (`int`, *optional*):
                Queries per chunk of the bound matrix; defaults to about 32M entries (128 MiB in float32) per chunk.
            candidates (`str`, defaults to `"auto"`):
                Candidate precision of the brute force where it runs (see [`nearest_neighbors`]).

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: distances `(N, k)` float64 (ascending per row) and indices `(N, k)`
            int64 into `training`.
        """
        train = self.training
        shape = tuple(generated.shape[1:]) if hasattr(generated, "shape") else None
        if shape is not None and self._sample_shape is not None and shape != self._sample_shape:
            raise ValueError(
                f"per-sample shapes differ: generated samples have shape {shape}, training samples "
                f"{self._sample_shape}; they must be equal"
            )
        gen = _as_samples(generated, "generated", device=train.device)
        if gen.shape[1] != train.shape[1]:
            raise ValueError(
                f"sample dimensions differ: generated D={gen.shape[1]}, training D={train.shape[1]}; they must be equal"
            )
        k = _check_int(k, "k", low=1, high=train.shape[0])
        if candidates not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"`candidates` must be 'auto', 'bfloat16' or 'float32', got {candidates!r}")
        chunk = _check_chunk(chunk_size)
        if _identity(self.training) != self._version:  # modified in place since the build
            self._version = _identity(self.training)
            self._index = self._build()
        if self._index is None:
            return brute_force_neighbors(gen, train, k, chunk, candidates)
        return self._index.search(gen, train, k, chunk, candidates, adaptive=self.fallback)

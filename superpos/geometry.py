"""Geometry of direction sets with faiss: max |cos|, |cos| histograms, capacity curves, nulls, bounds, matching.

Vectors are rows. Every function normalises rows to unit length first (zero rows are an error).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple

import faiss
import numpy as np
from scipy import special

from superpos.errors import SuperposError


def unit_rows(V) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero)."""
    V = np.ascontiguousarray(np.asarray(V, dtype=np.float32))
    if V.ndim != 2 or len(V) < 2:
        raise SuperposError(f"need a 2-D array of at least 2 vectors, got shape {V.shape}")
    norms = np.linalg.norm(V, axis=1, keepdims=True)
    if (norms == 0).any() or not np.isfinite(norms).all():
        raise SuperposError("vectors must be finite and non-zero")
    return np.ascontiguousarray(V / norms)


class MaxCos(NamedTuple):
    """Each row's largest |cos| to the other rows, and which row attains it."""
    value: np.ndarray  # (n,) max |cos| of each vector to any other
    neighbour: np.ndarray  # (n,) index of that other vector
    build_s: float = 0.0  # seconds spent training and filling the index
    search_s: float = 0.0  # seconds spent searching it


def on_gpu(index):
    """The index on every GPU when faiss was built with GPU support and CUDA is present, else unchanged."""
    import torch

    if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0 and torch.cuda.is_available():
        return faiss.index_cpu_to_all_gpus(index)
    return index


def _search_abs(index, Q: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by |⟨q, v⟩|: search +q and −q (the index holds +v only) and merge."""
    s1, i1 = index.search(Q, k, params=params)
    s2, i2 = index.search(-Q, k, params=params)
    S, I = np.concatenate([s1, s2], 1), np.concatenate([i1, i2], 1)
    return S, I


def search_abs_cos(index, Q: np.ndarray, k: int, exclude=None, params=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` vectors of ``index`` with the largest |cos| to each unit row of ``Q``: (signed cos, ids), best
    first. ``exclude`` (one id per row of Q, e.g. the query's own id when Q comes from the index) is left out."""
    S, I = _search_abs(index, np.ascontiguousarray(Q, dtype=np.float32), k + (exclude is not None), params)
    sign = np.concatenate([np.ones(S.shape[1] // 2), -np.ones(S.shape[1] // 2)])
    drop = (S < 0) | (I < 0)  # S < 0: the copy of a vector from the other sign's search
    if exclude is not None:
        drop |= I == np.asarray(exclude)[:, None]
    S = np.where(drop, -np.inf, S)
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(Q))[:, None]
    return (S[rows, order] * sign[order]).astype(np.float32), I[rows, order]


def max_abs_cos(V, batch: int = 4096, index: str = "exact", nlist: int | None = None, nprobe: int = 16,
                threads: int | None = None, train_per_list: int = 40, rows=None, refine: int = 64) -> MaxCos:
    """Each vector's largest |cos| to any *other* vector (of ``rows`` only, if given: against all of V).

    ``index="exact"`` is a blocked torch brute force (:func:`exact_max_abs_cos`). Two approximate ones for very large sets, to
    check with :func:`max_abs_cos_recall`: ``"ivf"``, IVF-flat with ``nlist`` lists (default √n) trained by
    k-means on ``train_per_list`` × nlist vectors, ``nprobe`` lists searched per query (fast where the set
    has cluster structure); ``"pq"``, a 4-bit product-quantised fast-scan of every vector (d/9 sub-quantisers)
    whose best ``refine`` candidates are re-ranked exactly (slower, but no partition to miss neighbours across).
    """
    U = unit_rows(V)
    n, d = U.shape
    t0 = time.perf_counter()
    if index == "exact":
        value, neighbour = exact_max_abs_cos(U, rows, query_block=batch)
        return MaxCos(value, neighbour, 0.0, time.perf_counter() - t0)
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    params = None
    if threads:
        faiss.omp_set_num_threads(threads)
    if index == "ivf":
        nlist = nlist or max(16, int(math.sqrt(n)))
        idx = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.cp.min_points_per_centroid = 1  # a small training sample is a choice here, not a mistake
        train = U[np.random.default_rng(0).choice(n, size=min(n, train_per_list * nlist), replace=False)]
        idx.train(train)
        idx.nprobe = nprobe
    elif index == "pq":
        m = min((k for k in range(1, d + 1) if d % k == 0), key=lambda k: abs(k - d / 9))  # ~9 dims per sub-quantiser
        idx = faiss.index_factory(d, f"PQ{m}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
        idx.train(U[np.random.default_rng(0).choice(n, size=min(n, 65536), replace=False)])
        params = faiss.IndexRefineSearchParameters(k_factor=refine)
    else:
        raise SuperposError(f"index must be 'exact', 'ivf' or 'pq', got {index!r}")
    if index != "pq":
        idx = on_gpu(idx)
    idx.add(U)
    t1 = time.perf_counter()
    value = np.empty(len(rows), np.float32)
    neighbour = np.empty(len(rows), np.int64)
    for lo in range(0, len(rows), batch):
        r = rows[lo:lo + batch]
        cos, ids = search_abs_cos(idx, U[r], 1, exclude=r, params=params)
        value[lo:lo + len(r)], neighbour[lo:lo + len(r)] = np.abs(cos[:, 0]), ids[:, 0]
    return MaxCos(np.clip(value, 0, 1), neighbour, t1 - t0, time.perf_counter() - t1)


def _blocked_abs_max(Q, V, exclude=None, block: int = 65536, query_block: int = 4096):
    """For each unit row of Q: the largest |⟨q, v⟩| over the unit rows of V and its index, by blocked torch
    matmuls with |·| taken once (faiss's flat index needs a second pass for −q). ``exclude`` (one id of V per
    row of Q) is left out. On CUDA when present."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    Q, U = torch.from_numpy(Q).to(dev), torch.from_numpy(V).to(dev)
    ex = None if exclude is None else torch.as_tensor(np.asarray(exclude), device=dev)
    value = torch.empty(len(Q), device=dev)
    arg = torch.empty(len(Q), dtype=torch.int64, device=dev)
    for q0 in range(0, len(Q), query_block):
        q = Q[q0:q0 + query_block]
        best = torch.full((len(q),), -1.0, device=dev)
        best_i = torch.zeros(len(q), dtype=torch.int64, device=dev)
        for lo in range(0, len(U), block):
            c = (q @ U[lo:lo + block].T).abs_()
            if ex is not None:
                own = ex[q0:q0 + query_block] - lo
                inside = (own >= 0) & (own < c.shape[1])
                c[inside.nonzero()[:, 0], own[inside]] = -1.0
            v, i = c.max(1)
            better = v > best
            best[better], best_i[better] = v[better], i[better] + lo
        value[q0:q0 + len(q)], arg[q0:q0 + len(q)] = best, best_i
    return value.clamp(0, 1).cpu().numpy(), arg.cpu().numpy()


def _symmetric_abs_max(U, block: int = 4096, col_block: int = 65536):
    """Each unit row's largest |cos| to any *other* row of U and its index, computing every pair once: query block
    ``i`` meets only rows from its own start on, and each ``block`` × ``col_block`` tile updates the best of its rows
    and of its columns (half the matmul work of :func:`_blocked_abs_max` on the whole set). On CUDA when present."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    U = torch.from_numpy(U).to(dev)
    n = len(U)
    best = torch.full((n,), -1.0, device=dev)
    best_i = torch.zeros(n, dtype=torch.int64, device=dev)

    def update(lo, v, i):
        seg, seg_i = best[lo:lo + len(v)], best_i[lo:lo + len(v)]
        better = v > seg
        seg[better], seg_i[better] = v[better], i[better]

    for q0 in range(0, n, block):
        q = U[q0:q0 + block]
        for lo in range(q0, n, col_block):  # columns from q0 on: pairs with an earlier row were done by earlier blocks
            c = (q @ U[lo:lo + col_block].T).abs_()
            first, last = max(q0, lo), min(q0 + len(q), lo + c.shape[1])  # rows that are also columns here
            if first < last:
                own = torch.arange(first, last, device=dev)
                c[own - q0, own - lo] = -1.0  # not a vector's own |cos|
            v, i = c.max(1)
            update(q0, v, i + lo)
            v, i = c.max(0)
            update(lo, v, i + q0)
    return best.clamp(0, 1).cpu().numpy(), best_i.cpu().numpy()


def exact_max_abs_cos(V, rows=None, query_block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact max |cos| of each of ``rows`` (default all) to any *other* vector of V, and which."""
    U = unit_rows(V)
    if rows is None:
        return _symmetric_abs_max(U, block=query_block)
    rows = np.asarray(rows, dtype=np.int64)
    return _blocked_abs_max(U[rows], U, exclude=rows, query_block=query_block)


def exact_neighbours(V, rows: np.ndarray) -> np.ndarray:
    """The exact max-|cos| neighbour of each of ``rows``."""
    return exact_max_abs_cos(V, rows)[1]


def max_abs_cos_recall(V, sample: int = 2000, seed: int = 0, index: str = "ivf", **kwargs) -> float:
    """Recall@1 of an approximate max-|cos| neighbour (``index`` "ivf" or "pq", with ``kwargs``) against exact
    search, on a random sample of queries."""
    U = unit_rows(V)
    rows = np.random.default_rng(seed).choice(len(U), size=min(sample, len(U)), replace=False)
    approx = max_abs_cos(U, index=index, rows=rows, **kwargs)
    return float((approx.neighbour == exact_neighbours(U, rows)).mean())


def sampled_abs_cos(V, n_pairs: int = 200_000, seed: int = 0) -> np.ndarray:
    """|cos| of ``n_pairs`` random distinct pairs (the bulk of the pairwise distribution)."""
    U = unit_rows(V)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(U), n_pairs)
    j = (i + rng.integers(1, len(U), n_pairs)) % len(U)
    return np.abs(np.einsum("nd,nd->n", U[i], U[j]))


class CappedCapacityWarning(UserWarning):
    """A greedy packing that was still growing when its candidates ran out: the count is a floor set by the
    sample, not a capacity."""


class Packing(NamedTuple):
    """Greedy ε-packings: the number kept at each ε, and whether that count is capped by the candidates."""

    kept: np.ndarray
    capped: np.ndarray  # bool per ε


def greedy_packing(V, eps_grid, seed: int = 0, block: int = 2048, saturation: float = 0.01) -> Packing:
    """Size of a greedily packed subset with pairwise |cos| ≤ ε, for each ε (random visiting order), and whether
    each is *capped*: the last tenth of the candidates still added more than ``saturation`` of themselves, so the
    packing would have kept growing with more candidates.

    A lower bound on the largest such subset. Blocked: each block of candidates is screened against the
    accepted set with one matmul, then packed greedily within itself.
    """
    U = unit_rows(V)[np.random.default_rng(seed).permutation(len(V))]
    tail_start = len(U) - max(1, len(U) // 10)
    kept, capped = [], []
    for eps in eps_grid:
        accepted = np.zeros((0, U.shape[1]), np.float32)
        kept_in_tail = 0
        for lo in range(0, len(U), block):
            cand = U[lo:lo + block]
            index = np.arange(lo, lo + len(cand))
            if len(accepted):
                ok = np.abs(cand @ accepted.T).max(1) <= eps
                cand, index = cand[ok], index[ok]
            if not len(cand):
                continue
            G = np.abs(cand @ cand.T)
            alive = np.ones(len(cand), bool)
            keep = []
            for a in range(len(cand)):
                if alive[a]:
                    keep.append(a)
                    alive &= G[a] <= eps  # drop every later candidate that conflicts with a
            accepted = np.concatenate([accepted, cand[keep]])
            kept_in_tail += int((index[keep] >= tail_start).sum())
        kept.append(len(accepted))
        capped.append(kept_in_tail > saturation * (len(U) - tail_start))
    return Packing(np.asarray(kept), np.asarray(capped, bool))


def greedy_capacity(V, eps_grid, seed: int = 0, block: int = 2048, saturation: float = 0.01,
                    strict: bool = False) -> np.ndarray:
    """``greedy_packing``'s counts; a count capped by its candidates warns (``CappedCapacityWarning``), or with
    ``strict`` raises."""
    kept, capped = greedy_packing(V, eps_grid, seed=seed, block=block, saturation=saturation)
    if capped.any():
        eps = [e for e, c in zip(eps_grid, capped) if c]
        msg = (f"greedy capacity at ε = {', '.join(f'{e:g}' for e in eps)} is capped by its {len(V):,} candidates "
               f"(the packing was still growing when they ran out): use more candidates")
        if strict:
            raise SuperposError(msg)
        warnings.warn(msg, CappedCapacityWarning, stacklevel=2)
    return kept


def feature_dimensionality(W_FD) -> np.ndarray:
    """Per-feature dimensionality (Elhage et al. 2022, *Toy Models of Superposition*):
    D_i = ‖W_i‖⁴ / Σ_j (W_i · W_j)² = ‖W_i‖² / Σ_j (Ŵ_i · W_j)², the share of a dimension feature i has to
    itself. A feature orthogonal to all others has D = 1 whatever its norm; two features along one direction have
    D = ½ each. Zero rows (dead features) get 0."""
    W = np.asarray(W_FD, dtype=np.float64)
    sq = (W * W).sum(1)
    out = np.zeros(len(W))
    live = sq > 0
    gram = W[live] @ W[live].T
    out[live] = sq[live] ** 2 / (gram ** 2).sum(1)
    return out


# ---------------------------------------------------------------------- theory
def abs_cos_tail(t, d: int):
    """P(|cos| > t) for two independent uniform directions in d dimensions (exact, incomplete beta)."""
    t = np.asarray(t, dtype=np.float64)
    return special.betainc((d - 1) / 2, 0.5, np.clip(1 - t**2, 0, 1))


def expected_max_abs_cos(m: int, d: int, q: float = 0.5) -> float:
    """The q-quantile (default: median) of one vector's max |cos| to m−1 other random unit vectors."""
    p = 1 - q ** (1 / (m - 1))  # P(|cos| > t) that makes P(max ≤ t) = q
    return float(np.sqrt(1 - special.betaincinv((d - 1) / 2, 0.5, p)))


def max_abs_cos_asymptotic(m: int, d: int) -> float:
    """√(2 ln m / d): the leading-order max |cos| of one vector among m random ones."""
    return math.sqrt(2 * math.log(m) / d)


def random_code_size(d: int, eps) -> np.ndarray:
    """A lower bound on the largest set of lines in d dimensions with pairwise |cos| ≤ ε, by alteration: draw N
    random unit vectors and drop one of each pair with |cos| > ε; E[kept] = N − C(N, 2)·p with p = P(|cos| > ε)
    exactly (``abs_cos_tail``), maximised at N ≈ 1/p + ½, so a set of ≈ 1/(2p) exists (≥ d always: an orthonormal
    basis). ≈ exp(d ε²/2) / 2 for small ε."""
    p = np.maximum(abs_cos_tail(eps, d), 1e-300)
    n = np.floor(1 / p + 0.5)
    return np.maximum(n - n * (n - 1) * p / 2, d)


def code_upper_bound(d: int, eps) -> np.ndarray:
    """An upper bound on the number of lines in d dimensions with pairwise |cos| ≤ ε, valid at every d: the
    relative bound d(1 − ε²)/(1 − dε²) where dε² < 1 (Lemmens & Seidel 1973; Delsarte, Goethals & Seidel 1975),
    else the cap-packing bound (the 2N antipodal points' caps of angular radius arccos(ε)/2 are disjoint:
    N ≤ 1 / (2 Ω), Ω the caps' share of the sphere)."""
    eps = np.asarray(eps, dtype=np.float64)
    half = np.arccos(eps) / 2
    cap = 0.5 * special.betainc((d - 1) / 2, 0.5, np.sin(half) ** 2)  # share of the sphere within angle `half`
    bound = 1 / (2 * np.maximum(cap, 1e-300))
    with np.errstate(divide="ignore"):
        relative = np.where(d * eps**2 < 1, d * (1 - eps**2) / (1 - d * eps**2), np.inf)
    return np.minimum(bound, relative)


def kl_rate(eps) -> np.ndarray:
    """The Kabatiansky–Levenshtein (1978) asymptotic bound on spherical codes of minimum angle θ = arccos ε, in
    nats per dimension: ln N ≤ d·R(θ) + o(d), R = x ln x − y ln y, x = (1 + sin θ)/(2 sin θ), y = x − 1 (Conway
    & Sloane, *Sphere Packings, Lattices and Groups*, ch. 9). Asymptotic only: at small d it can fall below what
    exists (d orthogonal lines), so it is a reference slope, not a finite-d bound."""
    s = np.sqrt(1 - np.asarray(eps, dtype=np.float64) ** 2)
    x = (1 + s) / (2 * s)
    y = x - 1
    return x * np.log(x) - np.where(y > 0, y * np.log(np.maximum(y, 1e-300)), 0.0)


def random_projection(V_ND, d: int, seed: int = 0) -> np.ndarray:
    """Rows projected to ``d`` dimensions by a Gaussian matrix (Johnson–Lindenstrauss); unchanged if ``d`` is
    their own width."""
    V = np.asarray(V_ND, dtype=np.float32)
    if d == V.shape[1]:
        return V
    P = np.random.default_rng(seed).standard_normal((V.shape[1], d)).astype(np.float32) / np.sqrt(d)
    return V @ P


def gaussian_null(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` standard Gaussian rows in ``d`` dimensions: uniformly random directions."""
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# ---------------------------------------------------------------------- matching
class Matching(NamedTuple):
    """A one-to-one matching of two dictionaries' atoms (Hungarian) and its cosines."""
    rows: np.ndarray  # atoms of A
    cols: np.ndarray  # matched atoms of B
    abs_cos: np.ndarray  # |cos| of each matched pair
    mean_max_cos_ab: float  # mean over A of max |cos| to B
    mean_max_cos_ba: float


def best_abs_cos(Q, V) -> np.ndarray:
    """For each row of ``Q``, its largest |cos| to any row of ``V`` (exact)."""
    return _blocked_abs_max(unit_rows(Q), unit_rows(V))[0]


def match_dictionaries(A, B) -> Matching:
    """Hungarian one-to-one assignment on |cos| (scipy) plus mean max-|cos| both ways (faiss)."""
    from scipy.optimize import linear_sum_assignment

    UA, UB = unit_rows(A), unit_rows(B)
    if UA.shape[1] != UB.shape[1]:
        raise SuperposError(f"dictionaries have different widths ({UA.shape[1]} vs {UB.shape[1]})")
    C = np.abs(UA @ UB.T)
    r, c = linear_sum_assignment(C, maximize=True)
    return Matching(r, c, C[r, c], float(best_abs_cos(UA, UB).mean()), float(best_abs_cos(UB, UA).mean()))

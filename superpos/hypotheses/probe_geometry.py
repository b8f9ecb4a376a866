"""Probe-free geometry of how the residual stream holds the input token, calibrated where the answer is known.

Each token's *class mean* at a layer (its mean residual over the sampled positions where it is the input) is
compared with its embedding row:

* **Energy profiles** of the centred class means in bases of the embedding: PCA (ordered by the embedding's
  variance), NMF, coordinates, and a *frequency-ordered* basis (Gram–Schmidt of the centred embedding rows of the
  corpus's tokens, most frequent first: component c is what token c adds beyond the c−1 more frequent ones).
* **Tail share**: the share of that energy on the PCA components holding the embedding's last 50 % of variance.
  "Off to the side" means a larger tail share than at **layer 0**, where the residual is the embedding itself,
  with a bootstrap interval over contexts, and than a **random basis** (a random subspace of the same dimension
  holds ``m / d`` of any energy on average).
* **Procrustes**: the residual of the best rotation from class means to embedding rows (unit rows), against
  shuffled token pairings; 0 at layer 0 by construction.

A least-squares probe would whiten its input and so weight low-variance components by construction (its tail
share at layer 0 is far above the embedding's); class means need no fitting and are exact at layer 0.
"""
from __future__ import annotations

import numpy as np
import torch

from ..residuals import ResidualSample
from ..results import Band, Interval


def class_sums(sample: ResidualSample, classes: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Per layer, per context, per class: the sum of residuals ((L, C, K, D) float32), counts (C, K), context ids."""
    ctx_ids, ctx = np.unique(sample.ctx_P, return_inverse=True)
    col = np.searchsorted(classes, sample.token_P)
    keep = (col < len(classes)) & (classes[np.minimum(col, len(classes) - 1)] == sample.token_P)
    flat = torch.from_numpy(ctx[keep] * len(classes) + col[keep])
    L, _, D = sample.resid_LPD.shape
    sums = torch.zeros(L, len(ctx_ids) * len(classes), D)
    for j in range(L):
        sums[j].index_add_(0, flat, sample.resid_LPD[j][torch.from_numpy(np.flatnonzero(keep))])
    counts = np.bincount(flat.numpy(), minlength=len(ctx_ids) * len(classes)).reshape(len(ctx_ids), len(classes))
    return sums.view(L, len(ctx_ids), len(classes), D), counts, ctx_ids


def frequency_basis(E_VD: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(D, D) orthonormal rows: Gram–Schmidt of the centred embedding rows in ``order`` (most frequent first),
    skipping rows (nearly) in the span already; completed with random directions if fewer than D rows qualify."""
    E = E_VD - E_VD.mean(0)
    D = E.shape[1]
    candidates = [E[t] for t in dict.fromkeys(np.asarray(order).tolist())]
    candidates += list(np.random.default_rng(0).standard_normal((D, D)))  # completion, only if needed
    basis: list[np.ndarray] = []
    for v in candidates:
        if len(basis) == D:
            break
        r = v - (np.stack(basis).T @ (np.stack(basis) @ v) if basis else 0)
        r = r - (np.stack(basis).T @ (np.stack(basis) @ r) if basis else 0)  # twice is enough (Kahan)
        if np.linalg.norm(r) > 1e-8 * max(np.linalg.norm(v), 1e-30):
            basis.append(r / np.linalg.norm(r))
    return np.stack(basis)


def energy_profile(M_KD: np.ndarray, basis_CD: np.ndarray) -> np.ndarray:
    """Share of the (centred) rows' squared norm along each orthonormal basis vector."""
    X = M_KD - M_KD.mean(0)
    e = ((X @ basis_CD.T) ** 2).sum(0)
    return e / e.sum()


def nmf_energy(dirs_KD: np.ndarray, components_CD: np.ndarray) -> np.ndarray:
    """Share of the least-squares coefficients' energy on each (non-orthogonal) NMF component."""
    coef, *_ = np.linalg.lstsq(components_CD.T, dirs_KD.T, rcond=None)
    e = (coef ** 2).sum(1)
    return e / e.sum()


def procrustes_fit(A_KD: np.ndarray, B_KD: np.ndarray) -> float:
    """Relative residual of the best orthogonal map A R ≈ B (rows unit-normalised): 0 = same geometry."""
    A = A_KD / np.linalg.norm(A_KD, axis=1, keepdims=True)
    B = B_KD / np.linalg.norm(B_KD, axis=1, keepdims=True)
    U, _, Vt = np.linalg.svd(A.T @ B)
    return float(np.linalg.norm(A @ (U @ Vt) - B) / np.linalg.norm(B))


def procrustes_test(A_KD: np.ndarray, B_KD: np.ndarray, n_shuffle: int, seed: int = 0) -> tuple[float, float, float,
                                                                                                  float]:
    """(residual, null mean, null 5th percentile, permutation p) with rows of B shuffled ``n_shuffle`` times."""
    rng = np.random.default_rng(seed)
    fit = procrustes_fit(A_KD, B_KD)
    null = np.array([procrustes_fit(A_KD, B_KD[rng.permutation(len(B_KD))]) for _ in range(n_shuffle)])
    return fit, float(null.mean()), float(np.quantile(null, 0.05)), float((1 + (null <= fit).sum()) / (1 + n_shuffle))


def tail_shares(sums_CKD: torch.Tensor, counts_CK: np.ndarray, tail_DM: torch.Tensor, n_boot: int,
                seed: int) -> tuple[float, np.ndarray]:
    """Tail share of the centred class means and its bootstrap over contexts (the same resamples for every layer
    when ``seed`` is the same): (value, resampled values)."""
    C, K, D = sums_CKD.shape
    proj = (sums_CKD.reshape(C * K, D) @ tail_DM).reshape(C, K, -1)  # sums along the tail directions
    full = sums_CKD.reshape(C, K * D)
    counts = torch.from_numpy(counts_CK).float()

    def share(w_BC: torch.Tensor) -> torch.Tensor:
        n = (w_BC @ counts).clamp_min(1)[..., None]  # (B, K, 1)
        ok = (w_BC @ counts > 0).float()[..., None]
        M = (w_BC @ full).reshape(len(w_BC), K, D) / n
        Mt = (w_BC @ proj.reshape(C, -1)).reshape(len(w_BC), K, -1) / n
        mean, mean_t = (M * ok).sum(1, keepdim=True) / ok.sum(1)[..., None], (Mt * ok).sum(1, keepdim=True) / ok.sum(1)[..., None]
        return (((Mt - mean_t) ** 2) * ok).sum((1, 2)) / (((M - mean) ** 2) * ok).sum((1, 2))

    value = float(share(torch.ones(1, C))[0])
    idx = np.random.default_rng(seed).integers(0, C, size=(n_boot, C))
    w = np.zeros((n_boot, C), dtype=np.float32)
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    boots = torch.cat([share(torch.from_numpy(w[i:i + 50])) for i in range(0, n_boot, 50)]).numpy()
    return value, boots


def calibrated_tail(values: list[float], boots: list[np.ndarray], m: int, d: int) -> tuple[Band, Band, float]:
    """Per layer: the tail share with its interval over contexts, its difference from layer 0 (paired resamples),
    and the random-basis share m / d."""
    b = np.stack(boots)  # (L, n_boot)
    lo, hi = np.quantile(b, [0.025, 0.975], axis=1)
    diff = b - b[0]
    dlo, dhi = np.quantile(diff, [0.025, 0.975], axis=1)
    v = np.asarray(values)
    return (Band(v.tolist(), lo.tolist(), hi.tolist()), Band((v - v[0]).tolist(), dlo.tolist(), dhi.tolist()),
            m / d)


def interval(band: Band, i: int) -> Interval:
    """Column ``i`` of a band."""
    return Interval(band.mean[i], band.lo[i], band.hi[i])

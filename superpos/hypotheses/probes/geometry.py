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

from superpos.model.residuals import ResidualSample
from superpos.stats import Band


def class_sums(sample: ResidualSample, classes: np.ndarray):
    """Per context and class (sorted token ids): the counts (N, K), and per layer the sum of residuals, made
    on demand ((N, K, D) float32 each; one layer at a time keeps memory to one layer's table)."""
    _, ctx = np.unique(sample.ctx_P, return_inverse=True)
    N, K = ctx.max() + 1, len(classes)
    col = np.searchsorted(classes, sample.token_P)
    keep = (col < K) & (classes[np.minimum(col, K - 1)] == sample.token_P)
    flat = torch.from_numpy(ctx[keep] * K + col[keep])
    rows = torch.from_numpy(np.flatnonzero(keep))
    D = sample.resid_LPD.shape[-1]

    def layer(j: int) -> torch.Tensor:
        return torch.zeros(N * K, D).index_add_(0, flat, sample.resid_LPD[j][rows]).view(N, K, D)

    return layer, np.bincount(flat.numpy(), minlength=N * K).reshape(N, K)


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
    """Relative residual of the best orthogonal map A R ≈ B (rows unit-normalised): 0 = same geometry.
    With R optimal, ‖A R − B‖² = ‖A‖² + ‖B‖² − 2‖AᵀB‖_* (the nuclear norm), so only singular values are needed."""
    A, B = _unit_rows(A_KD), _unit_rows(B_KD)
    return _procrustes_residual(A, B, torch.linalg.svdvals(A.T @ B).sum())


def _unit_rows(X: np.ndarray) -> torch.Tensor:
    X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
    return X / X.norm(dim=1, keepdim=True).clamp_min(1e-30)


def _procrustes_residual(A: torch.Tensor, B: torch.Tensor, nuclear) -> float:
    sq = (A.pow(2).sum() + B.pow(2).sum() - 2 * nuclear).clamp_min(0)
    return float(sq.sqrt() / B.norm())


def procrustes_test(A_KD: np.ndarray, B_KD: np.ndarray, n_shuffle: int, seed: int = 0) -> tuple[float, float, float,
                                                                                                  float]:
    """(residual, null mean, null 5th percentile, permutation p) with rows of B shuffled ``n_shuffle`` times."""
    rng = np.random.default_rng(seed)
    A, B = _unit_rows(A_KD), _unit_rows(B_KD)
    fit = _procrustes_residual(A, B, torch.linalg.svdvals(A.T @ B).sum())
    At = A.T.float()
    null = []
    for start in range(0, n_shuffle, 32):  # batches of shuffles: one batched SVD each
        perms = [torch.from_numpy(rng.permutation(len(B))) for _ in range(min(32, n_shuffle - start))]
        M = torch.stack([At @ B[p].float() for p in perms])
        # nuclear norms from the eigenvalues of MᵀM (float32 eigh: ~100× faster than SVD here, relative error ~1e-6)
        nuclear = torch.linalg.eigvalsh(M.transpose(1, 2) @ M).clamp_min(0).sqrt().sum(1)
        null += [_procrustes_residual(A, B, s.double()) for s in nuclear]
    null = np.array(null)
    return fit, float(null.mean()), float(np.quantile(null, 0.05)), float((1 + (null <= fit).sum()) / (1 + n_shuffle))


def tail_shares(sums_NKD: torch.Tensor, counts_NK: np.ndarray, tail_DM: torch.Tensor, n_boot: int,
                seed: int) -> tuple[float, np.ndarray]:
    """Tail share of the centred class means and its bootstrap over contexts (the same resamples for every layer
    when ``seed`` is the same): (value, resampled values)."""
    N, K, D = sums_NKD.shape
    proj = (sums_NKD.reshape(N * K, D) @ tail_DM).reshape(N, K, -1)  # sums along the tail directions
    full = sums_NKD.reshape(N, K * D)
    counts = torch.from_numpy(counts_NK).float()

    def share(w_SN: torch.Tensor) -> torch.Tensor:
        n = (w_SN @ counts).clamp_min(1)[..., None]  # (B, K, 1)
        ok = (w_SN @ counts > 0).float()[..., None]
        M = (w_SN @ full).reshape(len(w_SN), K, D) / n
        Mt = (w_SN @ proj.reshape(N, -1)).reshape(len(w_SN), K, -1) / n
        mean, mean_t = (M * ok).sum(1, keepdim=True) / ok.sum(1)[..., None], (Mt * ok).sum(1, keepdim=True) / ok.sum(1)[..., None]
        return (((Mt - mean_t) ** 2) * ok).sum((1, 2)) / (((M - mean) ** 2) * ok).sum((1, 2))

    value = float(share(torch.ones(1, N))[0])
    idx = np.random.default_rng(seed).integers(0, N, size=(n_boot, N))
    w = np.zeros((n_boot, N), dtype=np.float32)
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

"""Token-direction statistics of unlikely-token repurposing, per layer (method in docs/repurposing.md and in
``repurposing``'s docstring): the near-impossible / likely token groups, the standardised projections z on token
and random directions, the Gaussian and shuffled-context nulls, the lens view, and the per-layer curves the
verdict and report read."""
from __future__ import annotations

import sys
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from superpos.errors import SuperposError
from superpos.hypotheses.repurposing.ablation import shared_direction, token_directions, without_direction
from superpos.hypotheses.repurposing.channels import channel_scan
from superpos.hypotheses.repurposing.config import RARE_MIN_MEMBER, RepurposingConfig
from superpos.hypotheses.repurposing.dense_use import group_use, matched_groups


# ------------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------------
def token_groups(final_logp_PV: torch.Tensor, unlikely: float, likely: float, recent_PK: np.ndarray):
    """Boolean (P, V) masks: near-impossible (recent input tokens removed) and likely."""
    p = final_logp_PV.exp()
    U = p < unlikely
    L = p >= likely
    rows = np.repeat(np.arange(len(recent_PK)), recent_PK.shape[1])
    cols = recent_PK.reshape(-1)
    ok = cols >= 0
    U[torch.from_numpy(rows[ok]), torch.from_numpy(cols[ok])] = False
    return U, L


def _null_scale(dirs_VD: torch.Tensor, cov_DD: torch.Tensor) -> torch.Tensor:
    """σ_t = sqrt(dᵀ Σ d) for every direction (the null SD of a projection on it)."""
    return ((dirs_VD @ cov_DD) * dirs_VD).sum(1).clamp_min(1e-12).sqrt()


def _masked_max(z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return z.masked_fill(~mask, float("-inf")).max(1)


def _covariance(X_PD: torch.Tensor) -> torch.Tensor:
    """Covariance of centred rows, with a tiny ridge."""
    P, D = X_PD.shape
    cov = X_PD.T @ X_PD / max(1, P - 1)
    return cov + torch.eye(D, device=X_PD.device) * (1e-6 * cov.diagonal().mean().clamp_min(1e-12))


def _gaussian(E_PD: torch.Tensor, cov_DD: torch.Tensor) -> torch.Tensor:
    """Rows E Lᵀ with L Lᵀ = Σ: Gaussian with covariance Σ from standard normals E. Cholesky (float64); when
    the covariance is too badly conditioned for it (massive activations plus a planted control can do that),
    the eigen square root, which gives the same distribution."""
    try:
        return E_PD @ torch.linalg.cholesky(cov_DD.double()).float().T
    except torch.linalg.LinAlgError:
        evals, evecs = torch.linalg.eigh(cov_DD.double())
        return (E_PD.double() @ (evecs * evals.clamp_min(0).sqrt()).T).float()


OFF_OUTPUT_FIT_SHARE = 0.1  # regressors at most this share of the positions: a chance fit takes ≲ 10 % of the variance


def off_output_part(R_PD: torch.Tensor, final_PD: torch.Tensor, ridge: float = 1e-3,
                    fit_share: float = OFF_OUTPUT_FIT_SHARE) -> torch.Tensor:
    """The part of a layer's residual that the final residual does not predict linearly (centred).

    Least squares ``R ≈ [final_k, 1] A`` (ridge-regularised) over the sample, where ``final_k`` holds the final
    residual's top k principal components, k = min(D, ``fit_share`` × positions). What is left is what this layer
    carries that is gone, or rotated away, by the output — where repurposed directions must live. With all D
    components a sample of 256 positions in 576 dimensions would be fitted exactly by chance; with k ≤ P/10 a
    chance fit removes about k/P ≤ 10 % of an unrelated residual's variance, and the final residual's smallest
    components are left out of "what the output predicts".
    """
    P = len(final_PD)
    F_ = final_PD - final_PD.mean(0)
    k = max(1, min(F_.shape[1], int(fit_share * P)))
    if k < F_.shape[1]:
        evals, evecs = torch.linalg.eigh(F_.T @ F_)
        F_ = F_ @ evecs[:, -k:]
    X = torch.cat([F_, torch.ones(P, 1, dtype=F_.dtype, device=F_.device)], 1)
    gram = X.T @ X
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    A = torch.linalg.solve(gram, X.T @ R_PD)
    return R_PD - X @ A


def layer_stats(R_PD: torch.Tensor, final_PD: torch.Tensor | None, U_PV: torch.Tensor, L_PV: torch.Tensor,
                tok_VD: torch.Tensor, rand_VD: torch.Tensor, shuffle: np.ndarray, z_high: float, seed: int,
                lens_fn=None, likely: float = 1e-2, chunk: int = 512, dense_dirs: dict | None = None,
                dense_groups: dict | None = None, channel_sel: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every per-position statistic of one layer (see the module docstring).

    The repurposing statistics (peak*, n_high*, top_token) use the off-output part of the residual
    (``off_output_part(R, final)``; the raw centred residual when ``final_PD`` is None). ``raw_z`` and the
    per-token sums (``tok_*``, length V, for the paired null) use the raw centred residual.
    ``shuffle[p]`` is the position whose groups are paired with residual p in the shuffled null;
    ``lens_fn(h_PD) -> log-probs`` adds the lens view. ``dense_dirs`` ({basis: unit directions (V, D)}) with
    ``dense_groups`` (``dense_use.matched_groups``) add the dense-use contrasts on the same off-output part:
    ``dense_{push|energy}_{basis}_{group}`` = the near-impossible group's value minus that group's.
    ``channel_sel`` (the positions that choose) adds the consistent-channel scan (``channels.channel_scan``) on
    the same off-output part: ``channel_tokens`` and ``channel_random``.
    """
    P, D = R_PD.shape
    dev = tok_VD.device
    R = R_PD.to(dev, torch.float32)
    mu = R.mean(0)
    Xraw = R - mu
    X = Xraw if final_PD is None else off_output_part(Xraw.double(), final_PD.to(dev).double()).float()
    cov, cov_raw = _covariance(X), _covariance(Xraw)
    gen = torch.Generator().manual_seed(seed)
    E = torch.randn(P, D, generator=gen).to(dev)
    G = _gaussian(E, cov)  # Gaussian null of X
    G_raw = _gaussian(E, cov_raw)  # Gaussian null of the raw residual (lens view)
    sig_tok, sig_rand, sig_raw = _null_scale(tok_VD, cov), _null_scale(rand_VD, cov), _null_scale(tok_VD, cov_raw)
    names = ("peak", "peak_G", "peak_Q", "peak_GQ", "peak_S", "n_high", "n_high_G", "n_high_Q", "raw_z", "raw_z_Q",
             "lens_hits", "lens_hits_G", "lens_hits_S")
    out = {k: np.zeros(P) for k in names}
    out["top_token"] = np.zeros(P, dtype=np.int64)
    out["top_rand"] = np.zeros(P, dtype=np.int64)
    V = tok_VD.shape[0]
    sums = {k: torch.zeros(V, dtype=torch.float64) for k in ("tok_sum_U", "tok_cnt_U", "tok_sum_L", "tok_cnt_L")}
    inv = np.argsort(shuffle)  # inverse permutation: the position whose groups pair with each residual
    for i in range(0, P, chunk):
        sl = slice(i, min(P, i + chunk))
        U = U_PV[sl].to(dev)
        U_shuf = U_PV[torch.from_numpy(inv[sl])].to(dev)  # groups of the position paired with these residuals
        z = (X[sl] @ tok_VD.T) / sig_tok
        zg = (G[sl] @ tok_VD.T) / sig_tok
        zq = (X[sl] @ rand_VD.T) / sig_rand
        zgq = (G[sl] @ rand_VD.T) / sig_rand
        peak, top = _masked_max(z, U)
        out["peak"][sl], out["top_token"][sl] = peak.cpu().numpy(), top.cpu().numpy()
        for name, zz, mask in (("peak_G", zg, U), ("peak_GQ", zgq, U), ("peak_S", z, U_shuf)):
            out[name][sl] = _masked_max(zz, mask)[0].cpu().numpy()
        peak_q, top_q = _masked_max(zq, U)
        out["peak_Q"][sl], out["top_rand"][sl] = peak_q.cpu().numpy(), top_q.cpu().numpy()
        d_q = rand_VD[top_q]  # criterion (ii)'s null: the same argmax taken over random directions
        out["raw_z_Q"][sl] = ((Xraw[sl] * d_q).sum(1) / ((d_q @ cov_raw) * d_q).sum(1).clamp_min(1e-12).sqrt()).cpu().numpy()
        for name, zz in (("n_high", z), ("n_high_G", zg), ("n_high_Q", zq)):
            out[name][sl] = ((zz > z_high) & U).sum(1).cpu().numpy()
        z_raw = (Xraw[sl] @ tok_VD.T) / sig_raw
        out["raw_z"][sl] = z_raw.gather(1, top[:, None])[:, 0].cpu().numpy()
        Lm = L_PV[sl].to(dev)
        sums["tok_sum_U"] += (z_raw * U).sum(0).double().cpu()
        sums["tok_cnt_U"] += U.sum(0).double().cpu()
        sums["tok_sum_L"] += (z_raw * Lm).sum(0).double().cpu()
        sums["tok_cnt_L"] += Lm.sum(0).double().cpu()
        if lens_fn is not None:
            hit = lens_fn(R[sl]) >= np.log(likely)
            out["lens_hits"][sl] = (hit & U).sum(1).cpu().numpy()
            out["lens_hits_S"][sl] = (hit & U_shuf).sum(1).cpu().numpy()
            out["lens_hits_G"][sl] = ((lens_fn(G_raw[sl] + mu) >= np.log(likely)) & U).sum(1).cpu().numpy()
    out.update({k: v.numpy() for k, v in sums.items()})
    if channel_sel is not None:
        out.update(channel_scan(X, U_PV, tok_VD, rand_VD, channel_sel))
    if dense_dirs:
        for basis, dirs in dense_dirs.items():
            use = group_use(X, dirs, dense_groups, chunk)
            for stat, by_group in use.items():
                for name, v in by_group.items():
                    if name != "near_impossible":
                        out[f"dense_{stat}_{basis}_{name}"] = by_group["near_impossible"] - v
    return out


def channel_curves(tokens_PL: np.ndarray, random_PL: np.ndarray) -> dict[str, np.ndarray]:
    """The consistent-channel curves: both sides and their difference (``channel_excess``)."""
    return {"channel_tokens": tokens_PL, "channel_random": random_PL, "channel_excess": tokens_PL - random_PL}


def final_raw_z(R_final_PD: torch.Tensor, tok_VD: torch.Tensor, tokens_PK: np.ndarray) -> np.ndarray:
    """Standardised raw projection at the last layer of given tokens (P, K) — where each went by the output."""
    dev = tok_VD.device
    R = R_final_PD.to(dev, torch.float32)
    X = R - R.mean(0)
    sig = _null_scale(tok_VD, _covariance(X))
    idx = torch.from_numpy(tokens_PK).to(dev)
    proj = torch.einsum("pd,pkd->pk", X, tok_VD[idx])
    return (proj / sig[idx]).cpu().numpy()


def paired_token_means(st: dict, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """For tokens seen both likely and near-impossible: (mean z when near-impossible, mean z when likely)."""
    ok = (st["tok_cnt_U"] >= min_count) & (st["tok_cnt_L"] >= min_count)
    return st["tok_sum_U"][ok] / st["tok_cnt_U"][ok], st["tok_sum_L"][ok] / st["tok_cnt_L"][ok]


def selection_mask(ctx_P: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of the contexts that choose the verdict's layer: ``fraction`` of the whole contexts, at random
    (seeded); none when there are fewer than 4 contexts (the layer is then chosen and tested on all)."""
    ctx = np.unique(ctx_P)
    if len(ctx) < 4:
        return np.zeros(len(ctx_P), dtype=bool)
    n = min(len(ctx) - 2, max(2, int(round(fraction * len(ctx)))))
    return np.isin(ctx_P, np.random.default_rng(seed).permutation(ctx)[:n])


def tested_mask(sel_P: np.ndarray) -> np.ndarray:
    """The positions that test what ``sel_P`` (``selection_mask``) chose: the others, or all when none chose."""
    return ~sel_P if sel_P.any() else np.ones(len(sel_P), dtype=bool)


def shuffle_contexts(ctx_P: np.ndarray) -> np.ndarray:
    """For each position, the same slot of the next context (positions come grouped by context, k each)."""
    k = int((ctx_P == ctx_P[0]).sum())
    perm = (np.arange(len(ctx_P)) + k) % len(ctx_P)
    if np.any(ctx_P[perm] == ctx_P):
        raise SuperposError("the shuffled-context null needs at least 2 contexts with equal position counts")
    return perm


def scan_directions(lm, seed: int, basis: str, remove_shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The directions the statistic scans: unit token rows of ``basis`` ("output": γ ⊙ W_U, what the logits read;
    "unembedding": raw W_U; the config's ``basis``), and as many random unit directions (the (Q) null, drawn with
    ``seed + 1``). With ``remove_shared`` the shared token direction (the unit mean row, ``ablation.shared_direction``)
    is projected out of both, so that tokens and random directions are compared in the same space and no token's z
    carries the push that every row shares."""
    u = shared_direction(lm, basis) if remove_shared else None
    tok_VD = token_directions(lm, basis, remove_shared)
    rand_VD = torch.randn(tok_VD.shape, generator=torch.Generator().manual_seed(seed + 1)).to(tok_VD.device)
    return tok_VD, without_direction(rand_VD, None if u is None else u.to(tok_VD.device))


def rare_direction(tok_VD: torch.Tensor, U_PV: torch.Tensor,
                   share: float = RARE_MIN_MEMBER) -> tuple[torch.Tensor | None, int]:
    """The rare-token direction: the unit mean of the scanned directions of the tokens near-impossible at ≥ ``share``
    of the positions (Gemma's many unused tokens among them), and how many such tokens there are; (None, 0) when
    there are none. If the stream's excess along near-impossible tokens is one shared "suppress rare tokens"
    direction, projecting this out removes it."""
    rare = U_PV.float().mean(0) >= share
    n = int(rare.sum())
    if n == 0:
        return None, 0
    m = tok_VD[rare.to(tok_VD.device)].double().mean(0)
    return (m / m.norm().clamp_min(1e-30)).float(), n


class TokenStats(NamedTuple):
    """Per-position statistics of every layer (``curves``: (positions, layers) arrays, before the bootstrap),
    and what the dictionary view reuses."""

    curves: dict[str, np.ndarray]
    off_layers: list[int]  # layers the off-output statistics cover (all but the last)
    null_peak_sd: list[float]  # spread of the Gaussian null's peak per off-output layer
    paired: dict[str, list[np.ndarray]]  # per layer: per-token mean z where near-impossible / likely
    tok_VD: torch.Tensor  # unit unembedding rows
    rand_VD: torch.Tensor  # the random unit directions of the (Q) null
    shuffle: np.ndarray  # the context shuffle of the (S) null


def token_statistics(lm, sample, U_PV, L_PV, lens, cfg: RepurposingConfig, sel_P: np.ndarray | None = None,
                     dirs: tuple[torch.Tensor, torch.Tensor] | None = None) -> TokenStats:
    """``layer_stats`` at every sampled layer (token directions, random directions, the Gaussian and
    shuffled-context nulls, the lens view, and the consistent channels chosen on the positions ``sel_P``),
    combined into the curves the verdict and report read. ``dirs``: the scanned (token, random) directions when
    already made (``scan_directions`` with the config's basis otherwise)."""
    from tqdm import tqdm

    from superpos.hypotheses.lenses.lens import lens_logits

    tok_VD, rand_VD = dirs if dirs is not None else scan_directions(lm, cfg.seed, cfg.basis, cfg.remove_shared)
    shuffle = shuffle_contexts(sample.ctx_P)
    dense_dirs = {basis: token_directions(lm, basis) for basis in ("output", "embedding")}
    dense_groups = matched_groups(U_PV, L_PV, shuffle, seed=cfg.seed)
    per_layer: dict[str, list] = {}
    paired = {"unlikely": [], "likely": []}
    n = lm.n_layers
    final_PD = sample.at(n)
    for j, layer in enumerate(tqdm(sample.layers, desc="layers", file=sys.stderr)):
        def lens_fn(h, layer=layer):
            with torch.no_grad():
                return F.log_softmax(lens_logits(lm, h, layer, lens), -1)
        st = layer_stats(sample.resid_LPD[j], final_PD if layer < n else None, U_PV, L_PV, tok_VD, rand_VD, shuffle,
                         cfg.z_high, cfg.seed + layer, lens_fn=lens_fn, likely=cfg.likely, dense_dirs=dense_dirs,
                         dense_groups=dense_groups, channel_sel=sel_P)
        for k, v in st.items():
            if not k.startswith("tok_"):
                per_layer.setdefault(k, []).append(v)
        u, li = paired_token_means(st)
        paired["unlikely"].append(u)
        paired["likely"].append(li)
    arr = {k: np.stack(v, 1) for k, v in per_layer.items()}  # (P, layers)
    arr["final_z"] = final_raw_z(final_PD, tok_VD, arr.pop("top_token"))
    arr["final_z_Q"] = final_raw_z(final_PD, rand_VD, arr.pop("top_rand"))
    off = [i for i, layer in enumerate(sample.layers) if layer < n]  # the off-output statistics need layer < n
    effect = (arr["peak"] - arr["peak_G"]) - (arr["peak_Q"] - arr["peak_GQ"])
    curves = {
        "effect": effect[:, off],
        "excess_tokens": (arr["peak"] - arr["peak_G"])[:, off],
        "excess_random_dirs": (arr["peak_Q"] - arr["peak_GQ"])[:, off],
        "matched_minus_shuffled": (arr["peak"] - arr["peak_S"])[:, off],
        **{k: arr[k][:, off] for k in ("peak", "peak_G", "peak_Q", "peak_S", "n_high", "n_high_G", "n_high_Q")},
        "raw_z": arr["raw_z"][:, off], "final_z": arr["final_z"][:, off],
        "drop": (arr["raw_z"] - arr["final_z"])[:, off],
        # criterion (ii) against the same argmax over random directions (what selection alone makes fall)
        "drop_Q": (arr["raw_z_Q"] - arr["final_z_Q"])[:, off],
        "drop_vs_null": ((arr["raw_z"] - arr["final_z"]) - (arr["raw_z_Q"] - arr["final_z_Q"]))[:, off],
        "lens_hits": arr["lens_hits"], "lens_hits_G": arr["lens_hits_G"], "lens_hits_S": arr["lens_hits_S"],
        **{k: v[:, off] for k, v in arr.items() if k.startswith("dense_")},
    }
    if "channel_tokens" in arr:
        curves.update(channel_curves(arr["channel_tokens"][:, off], arr["channel_random"][:, off]))
    return TokenStats(curves, [sample.layers[i] for i in off], arr["peak_G"][:, off].std(0).tolist(), paired,
                      tok_VD, rand_VD, shuffle)

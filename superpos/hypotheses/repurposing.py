"""Hypothesis 2: unlikely-token repurposing.

Claim: directions of tokens that are near-impossible in a context are used mid-stack for computation
and removed before the output. Method, nulls and reading in docs/repurposing.md. In short, at every
residual layer l and sampled position p (attention-sink position 0 left out):

* groups from the model's own final distribution at p: near-impossible U(p) (prob < ``unlikely``,
  minus the last ``exclude_recent`` input tokens, whose embeddings the stream carries anyway), likely
  L(p) (prob ≥ ``likely``);
* standardised projection z_lpt = (r_lp − μ_l)·û_t / σ_lt, û_t the unit unembedding row, σ_lt² = û_tᵀ Σ_l û_t:
  under a Gaussian null with the layer's mean and covariance every z is N(0, 1), whatever the
  anisotropy of the stream or of the vocabulary;
* per position: peak = max_{t ∈ U(p)} z (how hard the stream writes toward its most-favoured
  near-impossible token) and n_high = #{t ∈ U(p): z > z_high};
* nulls: (G) Gaussian residuals with the layer's mean and covariance, same groups; (Q) random unit
  directions in place of the token directions (same group sizes) — the real-minus-G excess on Q is what
  heavy tails alone produce; (S) shuffled contexts: the groups of one context against the residual of
  another; (T) the same tokens at positions where they are likely;
* effect_l = (peak_real − peak_G)_tokens − (peak_real − peak_G)_random-dirs, in null-SD units, with a
  bootstrap CI over contexts. Verdict: SUPPORTED when the peak mid-stack effect is above 0 and the effect
  at the last residual layer is clearly smaller (removed before the output).

Lens view: per layer, tokens the (logit or tuned) lens gives probability ≥ ``likely`` that are
near-impossible at the output, against the same nulls. Dictionary view: do the atoms active at a
middle layer point at this context's near-impossible tokens more often than at another context's?
"""
from __future__ import annotations

import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, SuperposError
from ..stats import cluster_band, cluster_interval
from .configs import RepurposingConfig
from .results import DictionaryView, GroupSizes, PairedTokens, RepurposingResult

CONTROLS = ("none", "positive", "negative")


def _say(msg: str) -> None:
    print(f"[repurposing] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------
# controls
# ------------------------------------------------------------------------------------------------------
def control_layers(n_layers: int) -> tuple[int, int]:
    """Residual layers where a planted control writes (a) and removes (b) its directions."""
    a = max(1, round(n_layers / 3))
    b = min(n_layers - 1, max(a + 1, round(2 * n_layers / 3)))
    return a, b


@contextmanager
def planted_control(lm, kind: str, alpha: float = 1.0, seed: int = 0):
    """Install the control hooks: at residual layer a add, at every position ≥ 1, ``alpha × |r|`` along a
    direction drawn per position, and subtract exactly that vector at layer b.

    ``positive``: the direction is the unembedding row of a uniformly random token — near-impossible in
    almost every context, so this is repurposing by construction. ``negative``: a random unit vector of
    the same norm that is not a token direction. ``none``: no hooks.
    """
    if kind not in CONTROLS:
        raise SuperposError(f"unknown control '{kind}' (choose from {', '.join(CONTROLS)})")
    if kind == "none":
        yield
        return
    a, b = control_layers(lm.n_layers)
    gen = torch.Generator().manual_seed(seed)
    W_U = lm.W_U_VD.detach().float()
    U_VD = W_U / W_U.norm(dim=1, keepdim=True)
    state: dict = {}

    def write(resid):
        B, T, D = resid.shape
        if kind == "positive":
            dirs = U_VD[torch.randint(0, len(U_VD), (B, T), generator=gen)].to(resid.device)
        else:
            dirs = torch.randn(B, T, D, generator=gen).to(resid.device)
            dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        v = alpha * resid.float().norm(dim=-1, keepdim=True) * dirs
        v[:, 0] = 0
        state["v"] = v
        return resid + v.to(resid.dtype)

    def remove(resid):
        return resid - state["v"].to(resid.dtype)

    with ExitStack() as stack:
        stack.enter_context(lm.splice(a, write))
        stack.enter_context(lm.splice(b, remove))
        yield


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


def off_output_part(R_PD: torch.Tensor, final_PD: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """The part of a layer's residual that the final residual does not predict linearly (centred).

    Least squares ``R ≈ [final, 1] A`` (ridge-regularised) over the sample; what is left is what this
    layer carries that is gone, or rotated away, by the output — where repurposed directions must live.
    """
    X = torch.cat([final_PD, torch.ones(len(final_PD), 1, dtype=final_PD.dtype, device=final_PD.device)], 1)
    gram = X.T @ X
    gram = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    A = torch.linalg.solve(gram, X.T @ R_PD)
    return R_PD - X @ A


def layer_stats(R_PD: torch.Tensor, final_PD: torch.Tensor | None, U_PV: torch.Tensor, L_PV: torch.Tensor,
                tok_VD: torch.Tensor, rand_VD: torch.Tensor, shuffle: np.ndarray, z_high: float, seed: int,
                lens_fn=None, likely: float = 1e-2, chunk: int = 512) -> dict[str, np.ndarray]:
    """Every per-position statistic of one layer (see the module docstring).

    The repurposing statistics (peak*, n_high*, top_token) use the off-output part of the residual
    (``off_output_part(R, final)``; the raw centred residual when ``final_PD`` is None). ``raw_z`` and the
    per-token sums (``tok_*``, length V, for the paired null) use the raw centred residual.
    ``shuffle[p]`` is the position whose groups are paired with residual p in the shuffled null;
    ``lens_fn(h_PD) -> log-probs`` adds the lens view.
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
    names = ("peak", "peak_G", "peak_Q", "peak_GQ", "peak_S", "n_high", "n_high_G", "n_high_Q", "raw_z",
             "lens_hits", "lens_hits_G", "lens_hits_S")
    out = {k: np.zeros(P) for k in names}
    out["top_token"] = np.zeros(P, dtype=np.int64)
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
        for name, zz, mask in (("peak_G", zg, U), ("peak_Q", zq, U), ("peak_GQ", zgq, U), ("peak_S", z, U_shuf)):
            out[name][sl] = _masked_max(zz, mask)[0].cpu().numpy()
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
    return out


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


def shuffle_contexts(ctx_P: np.ndarray) -> np.ndarray:
    """For each position, the same slot of the next context (positions come grouped by context, k each)."""
    k = int((ctx_P == ctx_P[0]).sum())
    perm = (np.arange(len(ctx_P)) + k) % len(ctx_P)
    if np.any(ctx_P[perm] == ctx_P):
        raise SuperposError("the shuffled-context null needs at least 2 contexts with equal position counts")
    return perm


# ------------------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------------------
def run(cfg: RepurposingConfig) -> RepurposingResult:
    """``superpos run repurposing``: the per-layer effect with its nulls, the lens view, the verdict and report."""
    from ..models import load_model
    from ..residuals import contexts_from_corpus, sample_residuals
    from .lenses import TunedLens, compare_lenses, final_logprobs, lens_logits
    from .reports.repurposing import write_report
    from .verdicts import repurposing as verdict

    if not 0 < cfg.unlikely < cfg.likely < 1:
        raise ConfigError("likely", f"need 0 < unlikely ({cfg.unlikely}) < {{field}} ({cfg.likely}) < 1")
    if cfg.control not in CONTROLS:
        raise ConfigError("control", f"unknown {{field}} '{cfg.control}' (choose from {', '.join(CONTROLS)})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    lens = None
    if cfg.lens:
        lens = TunedLens.load(cfg.lens)
        lens.check_model(lm)
    dictionary = _load_sae(cfg.dictionary, lm) if cfg.dictionary else None
    tokens_NC = contexts_from_corpus(lm, cfg.corpus, cfg.contexts, cfg.context_length)
    _say(f"{len(tokens_NC)} contexts × {cfg.context_length} tokens, {cfg.per_context} positions each, "
         f"control: {cfg.control}")
    with planted_control(lm, cfg.control, cfg.control_alpha, cfg.seed):
        sample = sample_residuals(lm, tokens_NC, cfg.per_context, seed=cfg.seed)
    timings = {}

    # lenses: logit lens and tuned lens (trained on 75% of contexts, scored on the rest) ----------------
    t0 = time.perf_counter()
    lens, lenses = compare_lenses(lm, sample, lens, steps=cfg.lens_steps, seed=cfg.seed, n_boot=cfg.n_boot,
                                  save_to=None if cfg.lens else out / "tuned_lens")
    timings["lenses_s"] = time.perf_counter() - t0

    # token-direction statistics at every layer -------------------------------------------------------
    t0 = time.perf_counter()
    logp = final_logprobs(lm, sample)
    U, L = token_groups(logp, cfg.unlikely, cfg.likely, sample.recent_tokens(cfg.exclude_recent))
    del logp
    group_sizes = GroupSizes(near_impossible_mean=float(U.sum(1).float().mean()),
                             likely_mean=float(L.sum(1).float().mean()), vocab=int(U.shape[1]))
    W_U = lm.W_U_VD.detach().float()
    tok_VD = W_U / W_U.norm(dim=1, keepdim=True)
    rand_VD = torch.randn(tok_VD.shape, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(tok_VD.device)
    rand_VD = rand_VD / rand_VD.norm(dim=1, keepdim=True)
    shuffle = shuffle_contexts(sample.ctx_P)
    per_layer: dict[str, list] = {}
    paired = {"unlikely": [], "likely": []}
    from tqdm import tqdm

    n = lm.n_layers
    final_PD = sample.at(n)
    for j, layer in enumerate(tqdm(sample.layers, desc="layers", file=sys.stderr)):
        def lens_fn(h, layer=layer):
            with torch.no_grad():
                return F.log_softmax(lens_logits(lm, h, layer, lens), -1)
        st = layer_stats(sample.resid_LPD[j], final_PD if layer < n else None, U, L, tok_VD, rand_VD, shuffle,
                         cfg.z_high, cfg.seed + layer, lens_fn=lens_fn, likely=cfg.likely)
        for k, v in st.items():
            if not k.startswith("tok_"):
                per_layer.setdefault(k, []).append(v)
        u, li = paired_token_means(st)
        paired["unlikely"].append(u)
        paired["likely"].append(li)
    timings["token_stats_s"] = time.perf_counter() - t0
    arr = {k: np.stack(v, 1) for k, v in per_layer.items()}  # (P, layers)
    arr["final_z"] = final_raw_z(final_PD, tok_VD, arr.pop("top_token"))
    ctx = sample.ctx_P
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
        "lens_hits": arr["lens_hits"], "lens_hits_G": arr["lens_hits_G"], "lens_hits_S": arr["lens_hits_S"],
    }
    paired_tokens = PairedTokens(
        n_tokens=[len(u) for u in paired["unlikely"]],
        unlikely=[cluster_interval(u, np.arange(len(u)), n_boot=cfg.n_boot, seed=cfg.seed) for u in paired["unlikely"]],
        likely=[cluster_interval(v, np.arange(len(v)), n_boot=cfg.n_boot, seed=cfg.seed) for v in paired["likely"]])
    res = RepurposingResult(
        config=cfg, model=lm.name, timings=timings, n_layers=lm.n_layers, d_model=lm.d_model,
        n_positions=sample.n_positions, n_contexts=int(len(np.unique(ctx))),
        control_layers=list(control_layers(lm.n_layers)), lenses=lenses, group_sizes=group_sizes,
        layers=sample.layers, off_layers=[sample.layers[i] for i in off],
        curves={k: cluster_band(v, ctx, n_boot=cfg.n_boot, seed=cfg.seed) for k, v in curves.items()},
        null_peak_sd=arr["peak_G"][:, off].std(0).tolist(), paired_tokens=paired_tokens)
    res.verdict = verdict(res)
    if dictionary is not None:
        res.dictionary = dictionary_alignment(dictionary, sample, U, L, tok_VD, shuffle, cfg)
    res.timings["total_s"] = time.perf_counter() - t_start
    res.save(out)
    write_report(res, out)
    return res


def _load_sae(path: str, lm):
    from ..dictionaries import load_dictionary

    dic = load_dictionary(path, device="cpu")
    layer = (getattr(dic, "meta_", {}) or {}).get("layer")
    if layer is None:
        raise SuperposError(f"dictionary {path} does not record the layer it was trained on")
    lm.check_layers([layer])
    if dic.components_.shape[1] != lm.d_model:
        raise SuperposError(f"dictionary {path} is for d_model {dic.components_.shape[1]}, {lm.name} has {lm.d_model}")
    return dic


def dictionary_alignment(dic, sample, U_PV, L_PV, tok_VD, shuffle, cfg, min_cos: float = 0.3) -> DictionaryView:
    """Do atoms active at the dictionary's layer point at this context's near-impossible tokens?

    Each atom's best-aligned token (max |cos| with the unit unembedding rows); an active atom with
    |cos| ≥ ``min_cos`` counts as token-aligned. Per position: the share of active token-aligned atoms
    whose token is near-impossible (likely) here, against the same share with another context's groups.
    """
    layer = dic.meta_["layer"]
    W = torch.as_tensor(dic.components_, dtype=torch.float32)
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    best_cos, best_tok = [], []
    for i in range(0, len(W), 2048):
        c = (W[i:i + 2048].to(tok_VD.device) @ tok_VD.T).abs()
        v, t = c.max(1)
        best_cos.append(v.cpu())
        best_tok.append(t.cpu())
    best_cos, best_tok = torch.cat(best_cos), torch.cat(best_tok)
    aligned = best_cos >= min_cos
    codes = torch.as_tensor(np.asarray(dic.transform(sample.at(layer).numpy())), dtype=torch.float32)
    active = (codes > 0) & aligned[None]
    n_act = active.sum(1).float()
    tok_idx = best_tok[None].expand(len(codes), -1)
    inv = np.argsort(shuffle)  # inverse permutation: the position whose groups pair with each residual
    U_shuf, L_shuf = U_PV[torch.from_numpy(inv)], L_PV[torch.from_numpy(inv)]
    shares = {}
    for name, G in (("near_impossible", U_PV), ("near_impossible_shuffled", U_shuf), ("likely", L_PV),
                    ("likely_shuffled", L_shuf)):
        hit = (G.gather(1, tok_idx) & active).sum(1).float()
        shares[name] = torch.where(n_act > 0, hit / n_act.clamp_min(1), torch.nan).numpy()
    keep = n_act.numpy() > 0
    ctx = sample.ctx_P[keep]
    view = DictionaryView(layer=layer, n_atoms=len(W), token_aligned_atoms=int(aligned.sum()), min_cos=min_cos,
                          positions_with_active_aligned=int(keep.sum()), mean_active_aligned=float(n_act.mean()))
    if keep.any():
        shares["near_impossible_minus_shuffled"] = shares["near_impossible"] - shares["near_impossible_shuffled"]
        for name, v in shares.items():
            setattr(view, name, cluster_band(v[keep], ctx, n_boot=cfg.n_boot, seed=cfg.seed))
    return view

"""Hypothesis 2: unlikely-token repurposing.

Claim: directions of tokens that are near-impossible in a context are used mid-stack for computation
and removed before the output. Method, nulls and reading in docs/repurposing.md. In short, at every
residual layer l and sampled position p (attention-sink position 0 left out):

* groups from the model's own final distribution at p: near-impossible U(p) (prob < ``unlikely``,
  minus every token of the context so far — or the last ``exclude_recent`` — whose embeddings, and with tied
  embeddings their unembeddings, the stream carries anyway), likely
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
from pathlib import Path

import numpy as np
import torch

from superpos.errors import ConfigError, SuperposError
from superpos.hypotheses.repurposing.ablation import context_directions, exclude_near_context, without_direction
from superpos.hypotheses.repurposing.config import RepurposingConfig
from superpos.hypotheses.repurposing.mechanisms import (
    control_layers,
    detect,
    mechanism_row,
    planted_control,
    read_hooked,
)
from superpos.hypotheses.repurposing.result import (
    AblationView,
    DictionaryView,
    GroupSizes,
    MechanismsView,
    PairedTokens,
    PowerView,
    RareDirectionView,
    RepurposingResult,
    ScanView,
    WritesView,
)
from superpos.hypotheses.repurposing.token_stats import (
    rare_direction,
    scan_directions,
    selection_mask,
    shuffle_contexts,
    tested_mask,
    token_groups,
    token_statistics,
)
from superpos.settings import CONTROL_KINDS as CONTROLS
from superpos.stats import cluster_band, cluster_interval


def _say(msg: str) -> None:
    print(f"[repurposing] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------
# the experiment
# ------------------------------------------------------------------------------------------------------
def run(cfg: RepurposingConfig) -> RepurposingResult:
    """``superpos run repurposing``: the per-layer effect with its nulls, the lens view, the verdict and report."""
    from superpos.hypotheses.lenses.lens import TunedLens, compare_lenses, final_logprobs
    from superpos.hypotheses.repurposing.verdict import rare_decides, repurposing_layer
    from superpos.model.load import load_model
    from superpos.model.residuals import contexts_from_corpus, sample_residuals

    if not 0 < cfg.unlikely < cfg.likely < 1:
        raise ConfigError("likely", f"need 0 < unlikely ({cfg.unlikely}) < {{field}} ({cfg.likely}) < 1")
    if cfg.control not in CONTROLS:
        raise ConfigError("control", f"unknown {{field}} '{cfg.control}' (choose from {', '.join(CONTROLS)})")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(cfg.model, device=cfg.device)
    lens = None
    if cfg.lens:
        lens = TunedLens.load(cfg.lens)
        lens.check_model(lm)
    dictionary = _load_sae(cfg.dictionary, lm) if cfg.dictionary else None
    tokens_NC = contexts_from_corpus(lm, cfg.corpus, cfg.contexts, cfg.context_length)
    _say(f"{len(tokens_NC)} contexts × {cfg.context_length} tokens, {cfg.per_context} positions each, "
         f"control: {cfg.control}")
    with planted_control(lm, cfg.control, cfg.control_alpha, cfg.seed, cfg.basis, cfg.remove_shared):
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
    recent = sample.recent_tokens(cfg.exclude_recent or cfg.context_length)
    U, L = token_groups(logp, cfg.unlikely, cfg.likely, recent)
    del logp
    dirs = scan_directions(lm, cfg.seed, cfg.basis, cfg.remove_shared)
    near = exclude_near_context(U, recent, dirs[0], context_directions(lm, cfg.basis, cfg.remove_shared), cfg.context_cos)
    scan = scan_view(lm, cfg, near)
    group_sizes = GroupSizes(near_impossible_mean=float(U.sum(1).float().mean()),
                             likely_mean=float(L.sum(1).float().mean()), vocab=int(U.shape[1]))
    ctx = sample.ctx_P
    sel = selection_mask(ctx, cfg.select_fraction, cfg.seed)  # these contexts choose layers and channels; the others test
    ts = token_statistics(lm, sample, U, L, lens, cfg, sel_P=sel, dirs=dirs)
    timings["token_stats_s"] = time.perf_counter() - t0
    paired = ts.paired
    held = tested_mask(sel)

    def bands(mask, keys):
        return {k: cluster_band(ts.curves[k][mask], ctx[mask], n_boot=cfg.n_boot, seed=cfg.seed) for k in keys}
    paired_tokens = PairedTokens(
        n_tokens=[len(u) for u in paired["unlikely"]],
        unlikely=[cluster_interval(u, np.arange(len(u)), n_boot=cfg.n_boot, seed=cfg.seed) for u in paired["unlikely"]],
        likely=[cluster_interval(v, np.arange(len(v)), n_boot=cfg.n_boot, seed=cfg.seed) for v in paired["likely"]])
    res = RepurposingResult(
        config=cfg, model=lm.name, timings=timings, n_layers=lm.n_layers, d_model=lm.d_model,
        n_positions=sample.n_positions, n_contexts=int(len(np.unique(ctx))),
        control_layers=list(control_layers(lm.n_layers)), lenses=lenses, group_sizes=group_sizes,
        layers=sample.layers, off_layers=ts.off_layers,
        curves=bands(held, ts.curves), null_peak_sd=ts.null_peak_sd, paired_tokens=paired_tokens, scan=scan,
        selection_contexts=int(len(np.unique(ctx[sel]))),
        selection_curves=bands(sel, [k for k in ("effect", "excess_tokens", "channel_excess") if k in ts.curves])
        if sel.any() else None)
    layer = res.off_layers[repurposing_layer(res)]
    test = sample.subset(held)
    U_test, L_test = U[torch.from_numpy(held)], L[torch.from_numpy(held)]
    # the rare-token direction from the positions that chose the layer; (i) without it is read on the others
    u_rare, n_rare = rare_direction(ts.tok_VD, U[torch.from_numpy(sel)] if sel.any() else U) if cfg.rare_direction \
        else (None, 0)
    if u_rare is not None:
        without_rare = without_direction(ts.tok_VD, u_rare), without_direction(ts.rand_VD, u_rare)
        res.rare = layer_rare(lm, test, U_test, L_test, without_rare, layer, n_rare, cfg)
    if cfg.power_draws:
        t0 = time.perf_counter()
        res.power = layer_power(lm, test, U_test, L_test, (ts.tok_VD, ts.rand_VD), layer, cfg)
        if res.rare is not None and rare_decides(res):  # "not found" is then read without the rare direction
            res.rare.power = layer_power(lm, test, U_test, L_test, without_rare, layer, cfg)
        timings["power_s"] = time.perf_counter() - t0
    if cfg.ablation_rank:
        t0 = time.perf_counter()
        res.ablation = layer_ablation(lm, tokens_NC[np.unique(test.ctx_P)[:cfg.ablation_contexts]], layer, cfg)
        timings["ablation_s"] = time.perf_counter() - t0
    if cfg.mechanism_contexts and cfg.mechanism_alphas:
        t0 = time.perf_counter()
        res.mechanisms = layer_mechanisms(lm, tokens_NC[np.unique(test.ctx_P)[:cfg.mechanism_contexts]], layer, cfg)
        timings["mechanisms_s"] = time.perf_counter() - t0
    if cfg.write_contexts:
        t0 = time.perf_counter()
        some = np.isin(test.ctx_P, np.unique(test.ctx_P)[:cfg.write_contexts])
        res.writes = layer_writes(lm, test.subset(some), layer, U_test[torch.from_numpy(some)],
                                  L_test[torch.from_numpy(some)], ts, cfg)
        timings["writes_s"] = time.perf_counter() - t0
    if dictionary is not None:
        res.dictionary = dictionary_alignment(dictionary, sample, U, L, ts.tok_VD, ts.shuffle, cfg)
    return res


def layer_power(lm, test, U_PV, L_PV, dirs, layer: int, cfg: RepurposingConfig) -> PowerView:
    """The power curve of criterion (i) at ``layer`` on the held-out positions (``power.power_curve``), in the
    scanned (token, random) directions ``dirs``: the push is planted along them and (i) reads them."""
    from tqdm import tqdm

    from superpos.hypotheses.repurposing.power import power_curve

    with tqdm(total=len(cfg.power_alphas) * cfg.power_draws, desc=f"power at layer {layer}", file=sys.stderr) as bar:
        pc = power_curve(test.at(layer), test.at(lm.n_layers), U_PV, L_PV, *dirs,
                         shuffle_contexts(test.ctx_P), test.ctx_P, test.pos_P, cfg.power_alphas, layer=layer,
                         draws=cfg.power_draws, z_high=cfg.z_high, n_boot=min(cfg.n_boot, 200), seed=cfg.seed,
                         progress=bar)
    return PowerView(layer=layer, alphas=pc.alphas, rate=pc.rate, draws=pc.draws, power=pc.power,
                     min_detectable=pc.min_detectable, positions=test.n_positions, rate_vs_clean=pc.rate_vs_clean,
                     min_detectable_vs_clean=pc.min_detectable_vs_clean)


def scan_view(lm, cfg: RepurposingConfig, near_context_mean: float) -> ScanView:
    """What criterion (i) scans (``ScanView``): the basis, whether the shared direction is out, how shared it is
    (mean cos of the unit rows with it; its |cos| with the rows' top uncentred singular vector, the other reading
    of "the direction all rows share"), and the near-duplicate exclusion."""
    from superpos.hypotheses.repurposing.ablation import shared_direction, token_directions

    u = shared_direction(lm, cfg.basis)
    rows = token_directions(lm, cfg.basis)
    top = torch.linalg.eigh((rows.T.double() @ rows.double()).cpu())[1][:, -1]
    return ScanView(basis=cfg.basis, shared_removed=cfg.remove_shared, shared_row_cos=float((rows @ u.to(rows.device)).mean()),
                    shared_top_cos=float((top.float() @ u.cpu()).abs()), context_cos=cfg.context_cos,
                    near_context_mean=near_context_mean)


def layer_rare(lm, test, U_PV, L_PV, dirs, layer: int, n_tokens: int, cfg: RepurposingConfig) -> RareDirectionView:
    """Criterion (i) at ``layer`` on the held-out positions in the scanned (token, random) directions ``dirs`` with
    the rare-token direction (``rare_direction``, the mean of ``n_tokens`` rare tokens' directions) projected out."""
    from superpos.hypotheses.repurposing.power import criterion_i
    from superpos.hypotheses.repurposing.token_stats import layer_stats

    st = layer_stats(test.at(layer), test.at(lm.n_layers), U_PV, L_PV, *dirs, shuffle_contexts(test.ctx_P),
                     cfg.z_high, cfg.seed + layer)
    excess, effect = criterion_i(st, test.ctx_P, cfg.n_boot, cfg.seed)
    return RareDirectionView(layer=layer, n_tokens=n_tokens, positions=test.n_positions, excess=excess, effect=effect,
                             detected=bool(excess.lo > 0 and effect.lo > 0))


def layer_ablation(lm, tokens_NC: np.ndarray, layer: int, cfg: RepurposingConfig) -> AblationView:
    """The causal subspace ablation at ``layer`` (``ablation.subspace_ablation``) with CIs over contexts."""
    from superpos.hypotheses.repurposing.ablation import subspace_ablation

    ab = subspace_ablation(lm, tokens_NC, layer, cfg.ablation_rank, unlikely=cfg.unlikely, basis=cfg.basis,
                           remove_shared=cfg.remove_shared, context_cos=cfg.context_cos, seed=cfg.seed)
    units = np.arange(len(tokens_NC))

    def ci(v):
        return cluster_interval(v, units, n_boot=cfg.n_boot, seed=cfg.seed)
    top = ab.delta("near_impossible_top")
    return AblationView(layer=layer, rank=ab.rank, basis=ab.basis, n_contexts=len(tokens_NC),
                        clean_nll=float(ab.clean_nll_C.mean()), delta={k: ci(ab.delta(k)) for k in ab.sets},
                        top_minus={k: ci(top - ab.delta(k)) for k in ab.sets if k != "near_impossible_top"},
                        skipped_positions=ab.skipped_positions, shared_removed=ab.shared_removed,
                        context_cos=ab.context_cos)


def layer_mechanisms(lm, tokens_NC: np.ndarray, layer: int, cfg: RepurposingConfig) -> MechanismsView:
    """Every planted control at every ``mechanism_alphas`` size (``none`` once), through criterion (i) and the
    consistent-channel scan against the unhooked model at ``layer`` — or at the controls' write layer when ``layer``
    is outside the span they write (``mechanisms.detect``)."""
    from tqdm import tqdm

    a, b = control_layers(lm.n_layers)
    at = layer if a <= layer < b else a
    kw = dict(per_context=cfg.per_context, unlikely=cfg.unlikely, likely=cfg.likely, exclude_recent=cfg.exclude_recent,
              z_high=cfg.z_high, seed=cfg.seed, basis=cfg.basis, remove_shared=cfg.remove_shared,
              context_cos=cfg.context_cos)
    runs = [(k, al) for k in CONTROLS if k != "none" for al in cfg.mechanism_alphas]
    with tqdm(total=1 + len(runs), desc=f"planted controls at layer {at}", file=sys.stderr) as bar:
        unhooked = read_hooked(lm, tokens_NC, "none", 0.0, at, **kw)  # the `none` row, and what the others pair with
        rows = [mechanism_row(unhooked, "none", 0.0, None, n_boot=min(cfg.n_boot, 200), seed=cfg.seed)]
        bar.update()
        for kind, alpha in runs:
            rows.append(detect(lm, tokens_NC, kind, alpha, at, n_boot=min(cfg.n_boot, 200), unhooked=unhooked, **kw))
            bar.update()
    return MechanismsView(layer=at, n_contexts=len(tokens_NC), rows=rows)


def layer_writes(lm, test, layer: int, U_PV, L_PV, ts, cfg: RepurposingConfig) -> WritesView:
    """The per-component write/cancel decomposition (``writes.write_profile``) along the favoured near-impossible
    token at ``layer`` and the same argmax over random directions, on ``test``'s positions."""
    from superpos.hypotheses.repurposing.token_stats import layer_stats
    from superpos.hypotheses.repurposing.writes import write_profile

    st = layer_stats(test.at(layer), test.at(lm.n_layers), U_PV, L_PV, ts.tok_VD, ts.rand_VD,
                     shuffle_contexts(test.ctx_P), cfg.z_high, cfg.seed)
    return write_profile(lm, test, layer, st["top_token"], st["top_rand"], ts.tok_VD, ts.rand_VD, U_PV,
                         n_boot=cfg.n_boot, seed=cfg.seed)


def _load_sae(path: str, lm):
    from superpos.dictionaries import load_dictionary

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

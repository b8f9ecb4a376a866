"""Every experiment's verdict: a pure function of its typed result (no model, no torch).

``verdict(result)`` reads only what results.json holds, so a stored result can be judged again — the tests do
that for every committed report and get its verdict back word for word.
"""
from __future__ import annotations

import numpy as np

from ..errors import SuperposError
from ..results import Verdict
from . import results as R


# ------------------------------------------------------------------ lenses
def lenses(res: R.LensesResult) -> Verdict:
    """Headline: at how many layers before the last the tuned lens is closer to the output than the logit lens."""
    kl_logit = np.asarray(res.lenses.logit_lens.kl.mean)
    kl_tuned = np.asarray(res.lenses.tuned_lens.kl.mean)
    inner = slice(0, len(res.layers) - 1)  # the last layer is the output itself: both lenses are exact there
    headline = (f"The tuned lens is closer to the final output than the logit lens at "
                f"{int((kl_tuned < kl_logit)[inner].sum())} of {len(res.layers) - 1} layers before the last (mean KL "
                f"{kl_tuned[inner].mean():.3f} vs {kl_logit[inner].mean():.3f} nats on held-out positions).")
    return Verdict(headline=headline, criteria=res.summary)


# ------------------------------------------------------------------ orthogonality
def orthogonality(res: R.OrthogonalityResult) -> R.OrthogonalityVerdict:
    """SUPPORTED when (i) more atoms keep paying off (FVU falls ≥ 20% beyond 4× d), (ii) the largest dictionary's
    atoms stay nearly orthogonal (median max |cos| ≤ 0.5) and (iii) a greedy ε = 0.3 packing of the centred
    embedding keeps ≥ 4× d tokens."""
    d = res.d_model
    first, last = res.sweep[0], res.sweep[-1]
    fvu_drop = 1 - last.fvu / first.fvu
    keeps_improving = fvu_drop >= 0.2 and last.n_atoms > 4 * d
    near_orth = last.max_abs_cos.median <= 0.5
    cap = res.capacity
    i3 = min(range(len(cap.eps)), key=lambda i: abs(cap.eps[i] - 0.3))
    kept = cap.kept["embedding (centred)"][i3]
    many_tokens = kept >= 4 * d
    supported = keeps_improving and near_orth and many_tokens
    mc = last.max_abs_cos
    lines = [
        f"(i) More atoms keep paying off: held-out FVU falls from {first.fvu:.3f} at {first.n_atoms} atoms "
        f"({first.expansion}×) to {last.fvu:.3f} at {last.n_atoms} atoms ({last.expansion}×), a "
        f"{100 * fvu_drop:.0f}% drop {'(≥ 20%: yes)' if keeps_improving else '(needs ≥ 20% beyond 4× d: no)'}.",
        f"(ii) The {last.n_atoms} atoms stay nearly orthogonal: median max |cos| {mc.median:.3f} (95% CI "
        f"{mc.ci[0]:.3f}–{mc.ci[1]:.3f}) vs {last.null_median:.3f} for random directions "
        f"{'(≤ 0.5: yes)' if near_orth else '(> 0.5: no)'}.",
        f"(iii) Token directions: a greedy packing of the mean-centred embedding keeps {kept:,} of "
        f"{cap.n_candidates:,} tokens with pairwise |cos| ≤ {cap.eps[i3]} — {kept / d:.1f}× d "
        f"{'(≥ 4× d: yes)' if many_tokens else '(< 4× d: no)'}; random vectors keep {cap.kept['random null'][i3]:,}.",
    ]
    tok = {k: v.max_abs_cos.median for k, v in res.tokens.items()}
    context = (f"Context: the token embeddings themselves are far from random-like — median max |cos| "
               f"{tok['embedding']:.3f} raw and {tok['embedding (centred)']:.3f} mean-centred vs "
               f"{tok['random null']:.3f} for random vectors (near-duplicate tokens such as case and leading-space "
               f"variants share directions); the many directions live in the residual stream's learned features "
               f"more than in the raw vocabulary.")
    where = f"layer {res.layer} of {res.model}"
    if res.config.control != "none":
        where = f"a {res.config.control} surrogate of {where}"
    if supported:
        head = (f"SUPPORTED: {where} uses far more than d = {d} directions that stay nearly orthogonal — the "
                "over-complete (exp(d)-like) regime, not the d regime.")
    else:
        head = f"NOT SUPPORTED on these criteria for {where} (d = {d})."
    return R.OrthogonalityVerdict(supported=supported, headline=head, criteria=lines, context=context,
                                  fvu_drop=fvu_drop)


# ------------------------------------------------------------------ repurposing
def mid_layers(layers: list[int], n_layers: int) -> list[int]:
    """Indices into ``layers`` of the middle half of the stack (n/4 ≤ l ≤ 3n/4)."""
    return [i for i, layer in enumerate(layers) if n_layers / 4 <= layer <= 3 * n_layers / 4]


def repurposing(res: R.RepurposingResult) -> R.RepurposingVerdict:
    """SUPPORTED when (i) the mid-stack excess over the Gaussian null, alone and beyond random directions, has its
    CI above 0 and (ii) the favoured near-impossible token at the peak layer is pushed at most half as hard at the
    output (paired drop with CI above 0)."""
    layers, c = res.off_layers, res.curves
    mid = mid_layers(layers, res.n_layers)
    if not mid:
        raise SuperposError("the verdict needs the middle layers (n/4 .. 3n/4)")
    # conservative: a layer counts by the smaller of its token excess and its excess beyond random directions
    i = max(mid, key=lambda j: min(c["effect"].mean[j], c["excess_tokens"].mean[j]))
    peak, tok, drop = c["effect"].at(i), c["excess_tokens"].at(i), c["drop"].at(i)
    raw, fin = c["raw_z"].mean[i], c["final_z"].mean[i]
    sd = res.null_peak_sd[i]
    present = peak.lo > 0 and tok.lo > 0
    removed = raw > 0 and drop.lo > 0 and fin <= 0.5 * raw
    supported = present and removed
    L = layers[i]
    lines = [
        f"(i) Mid-stack weight on near-impossible tokens: at layer {L} (best of layers {layers[mid[0]]}–"
        f"{layers[mid[-1]]}), in the part of the residual the output does not predict, the strongest push toward a "
        f"near-impossible token beats a covariance-matched Gaussian by {tok.mean:+.2f} null SDs (95% CI {tok.lo:+.2f} "
        f"to {tok.hi:+.2f}), and by {peak.mean:+.2f} more than random directions do (95% CI {peak.lo:+.2f} to "
        f"{peak.hi:+.2f}; {peak.mean / max(sd, 1e-9):+.2f} × the null peak's spread) "
        f"{'(both CIs above 0: yes)' if present else '(both CIs above 0: no)'}.",
        f"(ii) Removed before the output: that token's standardised projection is {raw:+.2f} at layer {L} and "
        f"{fin:+.2f} at the last layer (drop {drop.mean:+.2f}, 95% CI {drop.lo:+.2f} to {drop.hi:+.2f}) "
        f"{'(falls to at most half, CI above 0: yes)' if removed else '(no)'}.",
    ]
    what = {"positive": "the planted positive control", "negative": "the planted negative control"}.get(
        res.config.control, res.model)
    span = f"{peak.mean:+.2f} [{peak.lo:+.2f}, {peak.hi:+.2f}]"
    if supported:
        head = (f"SUPPORTED for {what}: mid-stack residuals put extra weight on directions of tokens that are "
                f"near-impossible in context, and it is gone by the output (layer {L}: effect {span} null SDs; the "
                f"favoured token's z {raw:+.2f} → {fin:+.2f}).")
    elif present:
        head = (f"NOT SUPPORTED for {what}: mid-stack weight on near-impossible tokens exists (layer {L}, {span}) but "
                f"it is not removed before the output (z {raw:+.2f} → {fin:+.2f}).")
    else:
        head = (f"NOT SUPPORTED for {what}: no mid-stack excess weight on near-impossible-token directions beyond "
                f"the nulls (best layer {L}: {span} null SDs).")
    return R.RepurposingVerdict(supported=supported, present=present, removed=removed, headline=head, criteria=lines,
                                peak_layer=L, peak=[peak.mean, peak.lo, peak.hi], raw_z=raw, final_z=fin,
                                drop=[drop.mean, drop.lo, drop.hi])


# ------------------------------------------------------------------ probes and lookahead
def tail_share(energy: list[float], var: list[float]) -> float:
    """Share of the probe's energy on the components that together hold the *last* half of the
    embedding's variance (ordered from most to least used by the embedding)."""
    tail = np.cumsum(var) > 0.5
    return float(np.asarray(energy)[tail].sum())


def probes(res: R.ProbesResult) -> R.ProbesVerdict:
    """Descriptive: how decodable the input token stays by depth, and whether mid-stack probes read it along or
    off to the side of the embedding's main directions."""
    cur = res.targets["current token"]
    acc, layers, b, near = cur.acc, res.layers, res.basis, res.nearest_embedding_acc
    tails = [tail_share(e, b.pca_embedding_var) for e in b.pca]
    emb_tail = tail_share(b.pca_embedding_var, b.pca_embedding_var)
    mid = len(layers) // 2
    lines = [
        f"Input token (top-{cur.n_classes} tokens, {100 * cur.coverage:.0f}% of held-out positions): probe "
        f"accuracy {acc.mean[0]:.3f} at layer {layers[0]}, {acc.mean[1]:.3f} at layer {layers[1]}, "
        f"{acc.mean[mid]:.3f} [{acc.lo[mid]:.3f}, {acc.hi[mid]:.3f}] at layer {layers[mid]}, "
        f"{acc.mean[-1]:.3f} at layer {layers[-1]} (majority class {cur.majority:.3f}); nearest-embedding "
        f"read-out {near[0]:.3f} → {near[1]:.3f} → {near[mid]:.3f}.",
    ]
    if "previous token" in res.targets:
        prev = res.targets["previous token"].acc.mean
        lines.append(f"Previous token: {prev[0]:.3f} at layer {layers[0]}, peak "
                     f"{max(prev):.3f} at layer {layers[int(np.argmax(prev))]}.")
    ec = b.embedding_comparison[mid]
    lines.append(f"Probe vs embedding at layer {layers[mid]}: same-token cos {ec.same_token_cos:.3f} vs shuffled "
                 f"{ec.null_cos_mean:.3f} (95th pct {ec.null_cos_p95:.3f}); Procrustes residual "
                 f"{ec.procrustes_residual:.3f} vs shuffled {ec.null_procrustes_mean:.3f} (p = {ec.p_value:.3f}).")
    lines.append(f"Where the layer-{layers[mid]} probe reads: {100 * tails[mid]:.0f}% of its energy lies on the "
                 f"embedding's low-variance PCA components (those holding the last 50% of its variance; "
                 f"the embedding itself puts {100 * emb_tail:.0f}% there, so above that means 'off to the side').")
    side = tails[mid] > emb_tail
    head = (f"The input token stays linearly decodable through the stack (mid-stack accuracy {acc.mean[mid]:.3f}); "
            f"mid-stack probes read it {'mostly off to the side of' if side else 'mostly along'} the embedding's "
            f"main directions.")
    return R.ProbesVerdict(headline=head, criteria=lines, tail_share=tails, embedding_tail_share=emb_tail)


def lookahead(res: R.LookaheadResult) -> Verdict:
    """YES when every offset beyond +1 beats the stronger current-token baseline with its CI above 0."""
    lines = []
    for name, r in res.offsets.items():
        g = r.gain_over_baseline
        lines.append(f"token {name}: best probe (layer {r.best_layer}) {max(r.acc.mean):.3f} vs current-token "
                     f"baselines {r.bigram.mean:.3f} (bigram table) / {r.embedding_probe.mean:.3f} "
                     f"(embedding probe); gain {g.mean:+.3f} [{g.lo:+.3f}, {g.hi:+.3f}]")
    beyond = [r.gain_over_baseline.lo > 0 for name, r in res.offsets.items() if name != "+1"]
    head = ("Lookahead beyond bigram statistics: YES — the residual at i predicts tokens i+2/i+3 better than the "
            "current token alone does." if beyond and all(beyond) else
            "Lookahead beyond bigram statistics: " + ("PARTLY" if any(beyond) else "NO") +
            " — see the per-offset gains.")
    return Verdict(headline=head, criteria=lines)


# ------------------------------------------------------------------ donation and re-injection
def donation(res: R.DonationResult) -> Verdict:
    """Descriptive: the share of the k/v gradient that later positions donate, and how the ratio scales."""
    mean_share = {n: float(np.mean(v.mean)) for n, v in res.share.items()}
    nN = max(res.share)
    b = res.ratio_fit.exponent
    mean_ratio = float(np.mean(res.ratio_vs_later.per_layer_mean_ratio))  # = mean over contexts, layers, positions
    head = (f"Later positions donate {100 * mean_share[nN]:.0f}% of the gradient on a position's keys and values at "
            f"N = {nN} (mean over layers); the ratio later/own grows like k^{b:.2f} with the number k of later losses "
            f"({'close to' if abs(b - 1) < 0.25 else 'unlike'} the linear (N−1)/2-against-1 picture).")
    lines = [f"N = {n}: share from later losses {100 * mean_share[n]:.1f}% (layer range "
             f"{100 * min(s.mean):.1f}–{100 * max(s.mean):.1f}%)" for n, s in res.share.items()]
    lines.append(f"Mean ratio later/own at N = {nN}: {mean_ratio:.2f}, against (N−2)/2 = {(nN - 2) / 2:.1f} if every "
                 f"later loss pushed like the own loss, in the same direction.")
    return Verdict(headline=head, criteria=lines)


def reinject(res: R.ReinjectResult) -> R.ReinjectVerdict:
    """SUPPORTED when, at the α that helps the most-surprising bin most, that bin's Δ loss has its CI below 0 and
    so does its difference from the least-surprising bin."""
    best = min(res.alphas, key=lambda a: res.alphas[a].bins[-1].mean)
    r = res.alphas[best]
    top, bottom, d = r.bins[-1], r.bins[0], r.top_minus_bottom
    helps, most = top.hi < 0, d.hi < 0
    lines = [f"α = {a:g}: Δloss overall {v.overall.mean:+.4f} nats; most-surprising fifth "
             f"{v.bins[-1].mean:+.4f} [{v.bins[-1].lo:+.4f}, {v.bins[-1].hi:+.4f}], least-surprising "
             f"fifth {v.bins[0].mean:+.4f}" for a, v in res.alphas.items()]
    if helps and most:
        head = (f"SUPPORTED: re-injecting the true token's embedding at layers {res.layers} lowers the loss on the "
                f"following token most where that token was surprising (α = {best:g}: {top.mean:+.4f} nats "
                f"[{top.lo:+.4f}, {top.hi:+.4f}] in the most-surprising fifth vs {bottom.mean:+.4f} in the "
                f"least; difference {d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]).")
    else:
        head = (f"NOT SUPPORTED: at the best α ({best:g}) re-injection changes the loss on the following token by "
                f"{top.mean:+.4f} [{top.lo:+.4f}, {top.hi:+.4f}] nats where the token was most surprising "
                f"and {bottom.mean:+.4f} where least (difference {d.mean:+.4f} [{d.lo:+.4f}, {d.hi:+.4f}]).")
    return R.ReinjectVerdict(headline=head, criteria=lines, best_alpha=best, supported=bool(helps and most))


# ------------------------------------------------------------------ headline numbers (the replication table)
def _ci(iv) -> str:
    return f"{iv.mean:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]"


def numbers(name: str, res) -> dict[str, str]:
    """The few numbers each experiment's verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict
    if name == "orthogonality":
        last = res.sweep[-1]
        i3 = min(range(len(res.capacity.eps)), key=lambda i: abs(res.capacity.eps[i] - 0.3))
        kept = res.capacity.kept["embedding (centred)"][i3]
        return {"layer": str(res.layer), "FVU 1× → largest": f"{res.sweep[0].fvu:.3f} → {last.fvu:.3f}",
                "FVU drop": f"{100 * v.fvu_drop:.0f}%", "largest: median max abs cos (null)":
                f"{last.max_abs_cos.median:.3f} ({last.null_median:.3f})",
                "centred embedding kept at ε≈0.3": f"{kept:,} ({kept / res.d_model:.1f}× d)"}
    if name == "lenses":
        inner = slice(0, len(res.layers) - 1)
        kl_t, kl_l = res.lenses.tuned_lens.kl.mean[inner], res.lenses.logit_lens.kl.mean[inner]
        return {"tuned closer at": f"{sum(t < g for t, g in zip(kl_t, kl_l))} of {len(kl_t)} layers",
                "mean KL tuned / logit": f"{np.mean(kl_t):.3f} / {np.mean(kl_l):.3f}"}
    if name == "repurposing":
        return {"peak layer": str(v.peak_layer), "effect [95% CI]": f"{v.peak[0]:+.2f} [{v.peak[1]:+.2f}, {v.peak[2]:+.2f}]",
                "favoured z: layer → output": f"{v.raw_z:+.2f} → {v.final_z:+.2f}"}
    if name == "probes":
        acc, mid = res.targets["current token"].acc, len(res.layers) // 2
        return {"input-token acc, layer 0 / mid / last": f"{acc.mean[0]:.3f} / {acc.mean[mid]:.3f} / {acc.mean[-1]:.3f}",
                "mid tail share (embedding)": f"{v.tail_share[mid]:.2f} ({v.embedding_tail_share:.2f})"}
    if name == "lookahead":
        return {f"gain {k}": _ci(r.gain_over_baseline) for k, r in res.offsets.items()}
    if name == "donation":
        n = max(res.share)
        return {f"share from later losses, N = {n}": f"{100 * np.mean(res.share[n].mean):.0f}%",
                "ratio ~ k^b": f"b = {res.ratio_fit.exponent:.2f}"}
    if name == "reinject":
        r = res.alphas[v.best_alpha]
        return {"best α": f"{v.best_alpha:g}", "Δ loss, most surprising fifth": _ci(r.bins[-1]),
                "most − least surprising": _ci(r.top_minus_bottom)}
    raise KeyError(name)

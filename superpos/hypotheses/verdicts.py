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
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def describe_fit(f: R.LineFit) -> str:
    """A capacity line fit in words."""
    if f.slope is None or f.slope != f.slope:  # too few points (None; NaN in results written before 0.x)
        return f"only {f.points} uncapped points"
    return f"slope {f.slope:.3f}, R² {f.r2:.2f}, {f.points} uncapped points over {f.dims} dimensions"


def exponential_fit(res: R.OrthogonalityResult, name: str = "embedding (centred)") -> R.LineFit | None:
    """The capacity line fit of one set when it supports "exponential in d": ≥ 4 uncapped points over ≥ 2
    dimensions, positive slope, R² ≥ 0.9; else None."""
    fit = res.capacity.fits.get(name) if res.capacity else None
    if fit is None or fit.slope is None or fit.points < 4 or fit.dims < 2 or not fit.slope > 0 or not fit.r2 >= 0.9:
        return None
    return fit


def orthogonality(res: R.OrthogonalityResult) -> R.OrthogonalityVerdict:
    """SUPPORTED when at every layer (i) more atoms keep paying off — held-out FVU falls by at least ``min_gain``
    from the smallest to the largest dictionary (mean over seeds) — and (ii) in every seed more than d of the
    largest dictionary's atoms are live, seed-stable and pairwise nearly orthogonal (|cos| ≤ ``orth_eps``).
    Judged on the store alone; ``orthogonality_calibrated`` judges it against the nulls and planted runs."""
    cfg, d = res.config, res.d_model
    lines, passed, gains, counts = [], {}, {}, {}
    for lay in res.layers:
        first, last, a = lay.sizes[0], lay.sizes[-1], lay.atoms
        gain_ok = lay.gain.mean >= cfg.min_gain
        n_orth = min(a.stable_orthogonal.values)
        many = n_orth > d
        passed[lay.layer] = gain_ok and many
        gains[lay.layer], counts[lay.layer] = gain_ok, n_orth
        lines.append(
            f"Layer {lay.layer}: (i) held-out FVU {first.fvu.mean:.3f} at {first.expansion}× → {last.fvu.mean:.3f} at "
            f"{last.expansion}×, a {_pct(lay.gain.mean)} gain (95% CI over {len(lay.gain.values)} seeds "
            f"{_pct(lay.gain.lo)}–{_pct(lay.gain.hi)}; needs ≥ {_pct(cfg.min_gain)}: {'yes' if gain_ok else 'no'}). "
            f"(ii) of {a.n_atoms:,} atoms, {a.live.mean:,.0f} live, {a.stable.mean:,.0f} seed-stable (Hungarian partner "
            f"|cos| ≥ {cfg.stable_cos} in every other seed), {n_orth:,.0f} of them pairwise |cos| ≤ {cfg.orth_eps} in "
            f"the worst seed = {n_orth / d:.1f}× d (needs > d: {'yes' if many else 'no'}).")
    supported = all(passed.values())
    fit = exponential_fit(res)
    where = f"{res.model}" if res.config.control == "none" else f"a {res.config.control} surrogate of {res.model}"
    at = ", ".join(str(k) for k in passed)
    if supported:
        counts = ", ".join(f"{min(lay.atoms.stable_orthogonal.values) / d:.1f}× d at layer {lay.layer}"
                           for lay in res.layers)
        head = (f"SUPPORTED: layers {at} of {where} use more than d = {d} nearly orthogonal directions "
                f"(seed-stable atoms with pairwise |cos| ≤ {cfg.orth_eps}: {counts}), and more atoms keep paying off.")
    else:
        failed = [k for k, ok in passed.items() if not ok]
        why = []
        if any(not gains[k] for k in failed):
            why.append(f"more atoms stop paying off (gain < {_pct(cfg.min_gain)}) at layer(s) "
                       + ", ".join(str(k) for k in failed if not gains[k]))
        if any(counts[k] <= d for k in failed):
            why.append("only " + ", ".join(f"{counts[k]:,.0f} ({counts[k] / d:.2f}× d) at layer {k}" for k in failed
                                          if counts[k] <= d)
                       + f" of the largest dictionary's atoms are live, seed-stable and pairwise |cos| ≤ {cfg.orth_eps}")
        head = (f"NOT SUPPORTED at layer(s) {', '.join(map(str, failed))} of {where} (d = {d}): "
                + "; ".join(why) + " — more than d nearly orthogonal directions in use is not shown.")
    context = ""
    if res.capacity:
        name = "embedding (centred)"
        f = res.capacity.fits[name]
        context = ("Capacity against d: ln N of the centred token embedding "
                   + (f"grows linearly in d·ε² over the measured range ({describe_fit(fit)}): exponential in d on "
                      f"that range." if fit else
                      f"is not shown to grow linearly in d·ε² ({describe_fit(f)}): no claim of exponential capacity."))
    return R.OrthogonalityVerdict(supported=supported, headline=head, criteria=lines, context=context,
                                  layers_passed=passed)


def orthogonality_calibrated(real: R.OrthogonalityResult,
                             controls: dict[str, R.OrthogonalityResult]) -> R.OrthogonalityVerdict:
    """The real run judged against its controls: SUPPORTED when the real run is, the planted runs are, the nulls
    are not, and at every layer the real gain and the real count of stable nearly-orthogonal atoms exceed each
    null's (Welch 95% interval over seeds above 0)."""
    from ..stats import welch_difference

    nulls = {n: c for n, c in controls.items() if c.config.control in ("gaussian", "pc-shuffle")}
    planted = {n: c for n, c in controls.items() if c.config.control == "planted"}
    lines = [f"Real run: {'SUPPORTED' if real.verdict.supported else 'NOT SUPPORTED'} on its own."]
    lines += [f"{kind} control {n}: {'SUPPORTED' if c.verdict.supported else 'NOT SUPPORTED'} (must be "
              f"{'SUPPORTED' if want else 'NOT SUPPORTED'})"
              for kind, group, want in (("null", nulls, False), ("planted", planted, True)) for n, c in group.items()]
    controls_ok = (all(not c.verdict.supported for c in nulls.values())
                   and all(c.verdict.supported for c in planted.values()) and bool(nulls) and bool(planted))
    beats, passed = True, {}
    for lay in real.layers:
        ok = True
        for n, c in nulls.items():
            other = next((x for x in c.layers if x.layer == lay.layer), None)
            if other is None:
                ok = False
                lines.append(f"Layer {lay.layer}: the {n} control has no run at this layer.")
                continue
            gd = welch_difference(lay.gain.values, other.gain.values)
            od = welch_difference(lay.atoms.stable_orthogonal.values, other.atoms.stable_orthogonal.values)
            this = gd[1] > 0 and od[1] > 0
            ok &= this
            lines.append(f"Layer {lay.layer} vs {n}: gain {_pct(lay.gain.mean)} vs {_pct(other.gain.mean)} (difference "
                         f"{100 * gd[0]:+.1f} points, 95% CI {100 * gd[1]:+.1f} to {100 * gd[2]:+.1f}); stable nearly "
                         f"orthogonal atoms {lay.atoms.stable_orthogonal.mean:,.0f} vs "
                         f"{other.atoms.stable_orthogonal.mean:,.0f} (difference {od[0]:+,.0f}, 95% CI {od[1]:+,.0f} to "
                         f"{od[2]:+,.0f}) — {'above the null' if this else 'NOT above the null'}.")
        passed[lay.layer] = ok
        beats &= ok
    supported = bool(real.verdict.supported) and controls_ok and beats
    if supported:
        head = (f"SUPPORTED, calibrated: {real.verdict.headline.removeprefix('SUPPORTED: ')} The nulls (same "
                f"covariance, no sparse features) come out NOT SUPPORTED, planted superposition SUPPORTED, and the real "
                f"layers beat both nulls with 95% CIs over seeds.")
    elif not controls_ok:
        head = "NOT CALIBRATED: a control did not come out as it must, so the real verdict cannot be trusted."
    else:
        head = ("NOT SUPPORTED after calibration (every control came out as it must): "
                + (real.verdict.headline.removeprefix("NOT SUPPORTED ") if not real.verdict.supported
                   else "the real run does not beat both nulls at every layer."))
    return R.OrthogonalityVerdict(supported=supported, headline=head, criteria=lines, context=real.verdict.context,
                                  layers_passed=passed)


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
        out = {}
        for lay in res.layers:
            a = lay.atoms
            out[f"layer {lay.layer}: FVU gain {lay.sizes[0].expansion}× → {lay.sizes[-1].expansion}×"] = (
                f"{_pct(lay.gain.mean)} [{_pct(lay.gain.lo)}, {_pct(lay.gain.hi)}]")
            out[f"layer {lay.layer}: stable atoms, |cos| ≤ {res.config.orth_eps}"] = (
                f"{a.stable_orthogonal.mean:,.0f} ({a.stable_orthogonal.mean / res.d_model:.1f}× d)")
        return out
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

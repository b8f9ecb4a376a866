"""The repurposing verdict (hypothesis 2): which layer it tests, and how it reads its criteria and power curve.
A pure function of the typed result."""
from __future__ import annotations

from superpos.errors import SuperposError
from superpos.hypotheses.repurposing.config import CHANNEL_TOP, RARE_MIN_MEMBER
from superpos.hypotheses.repurposing.result import RepurposingResult, RepurposingVerdict


def mid_layers(layers: list[int], n_layers: int) -> list[int]:
    """Indices into ``layers`` of the middle half of the stack (n/4 ≤ l ≤ 3n/4)."""
    return [i for i, layer in enumerate(layers) if n_layers / 4 <= layer <= 3 * n_layers / 4]


def repurposing_layer(res: RepurposingResult) -> int:
    """Index into ``off_layers`` of the layer the verdict tests: the middle layer (n/4 .. 3n/4) where the smaller of
    the effect and the token excess is largest, read on the selection contexts (``selection_curves``) when the run
    split them, so that the layer is chosen on one set of contexts and tested on another."""
    mid = mid_layers(res.off_layers, res.n_layers)
    if not mid:
        raise SuperposError("the verdict needs the middle layers (n/4 .. 3n/4)")
    c = res.selection_curves or res.curves
    # conservative: a layer counts by the smaller of its token excess and its excess beyond random directions
    return max(mid, key=lambda j: min(c["effect"].mean[j], c["excess_tokens"].mean[j]))


def criterion_i_found(res: RepurposingResult) -> bool:
    """Criterion (i) in the scanned directions: at the verdict's layer (``repurposing_layer``) both the token excess
    over the Gaussian null and the effect beyond random directions have CIs above 0."""
    i = repurposing_layer(res)
    return res.curves["effect"].at(i).lo > 0 and res.curves["excess_tokens"].at(i).lo > 0


def rare_decides(res: RepurposingResult) -> bool:
    """(i) holds in the scanned directions but not once the rare-token direction is projected out (``res.rare``):
    the verdict then rests on the reading without that direction, and so does its power."""
    return res.rare is not None and not res.rare.detected and criterion_i_found(res)


def verdict(res: RepurposingResult) -> RepurposingVerdict:
    """SUPPORTED when (i) the mid-stack excess over the Gaussian null, alone and beyond random directions, has its
    CI above 0 (and, when the run read it, still does with the rare-token direction projected out) and (ii) the
    favoured near-impossible token at the peak layer is pushed at most half as hard at the output (paired drop with
    CI above 0), and falls further than the same argmax taken over random directions does (what selecting a maximum
    alone makes fall; CI above 0). The layer is chosen on the selection contexts and the CIs read on the held-out
    ones (``repurposing_layer``). An excess that is gone once the rare-token direction is projected out
    (``rare_decides``) is NOT SUPPORTED: the excess is that one direction. With a power curve, "not found" is stated
    against the smallest planted push it detects in the directions the deciding reading scans (without the rare
    direction when that reading decides: ``rare.power``), and is INSUFFICIENT POWER instead when that push exceeds
    ``config.needed_push`` (or no size run reaches the power). Results saved before the γ ⊙ W_U basis, the rare-token
    reading or the power rule existed are judged as they were (``scan``/``rare`` None; the power rule changes none of
    them)."""
    layers, c = res.off_layers, res.curves
    mid = mid_layers(layers, res.n_layers)
    i = repurposing_layer(res)
    peak, tok, drop = c["effect"].at(i), c["excess_tokens"].at(i), c["drop"].at(i)
    raw, fin = c["raw_z"].mean[i], c["final_z"].mean[i]
    sd = res.null_peak_sd[i]
    rare = res.rare
    rare_gone = rare_decides(res)  # (i) holds, but not without the rare-token direction
    present = peak.lo > 0 and tok.lo > 0 and not rare_gone
    # against the same argmax over random directions (stored since the null was added; older results as they were)
    null = c["drop_vs_null"].at(i) if "drop_vs_null" in c else None
    removed = raw > 0 and drop.lo > 0 and fin <= 0.5 * raw and (null is None or null.lo > 0)
    supported = present and removed
    L = layers[i]
    yes = f"(falls to at most half, CI{'' if null is None else 's'} above 0: yes)"
    held = res.selection_curves is not None
    chosen = (f", chosen on {res.selection_contexts} contexts, tested on the other "
              f"{res.n_contexts - res.selection_contexts}" if held else "")  # results from before the split: as they were
    lines = [
        f"(i) Mid-stack weight on near-impossible tokens: at layer {L} (best of layers {layers[mid[0]]}–"
        f"{layers[mid[-1]]}{chosen}), in the part of the residual the output does not predict, the strongest push "
        f"toward a near-impossible token{_scanned(res)} beats a covariance-matched Gaussian by {tok.mean:+.2f} null "
        f"SDs (95% CI {tok.lo:+.2f} to {tok.hi:+.2f}), and by {peak.mean:+.2f} more than random directions do (95% CI "
        f"{peak.lo:+.2f} to {peak.hi:+.2f}; {peak.mean / max(sd, 1e-9):+.2f} × the null peak's spread) "
        f"{'(both CIs above 0: yes)' if peak.lo > 0 and tok.lo > 0 else '(both CIs above 0: no)'}.",
        f"(ii) Removed before the output: that token's standardised projection is {raw:+.2f} at layer {L} and "
        f"{fin:+.2f} at the last layer (drop {drop.mean:+.2f}, 95% CI {drop.lo:+.2f} to {drop.hi:+.2f}"
        + ("" if null is None else f"; beyond the drop of the same argmax over random directions, {null.mean:+.2f}, "
                                   f"95% CI {null.lo:+.2f} to {null.hi:+.2f}")
        + f") {yes if removed else '(no)'}.",
    ]
    if rare is not None:
        lines.insert(1, f"(i) without the rare-token direction (the mean direction of the {rare.n_tokens:,} tokens "
                        f"near-impossible at ≥ {100 * RARE_MIN_MEMBER:.0f} % of the selection positions, projected out "
                        f"of every token and random direction): at layer {rare.layer}, token excess over the Gaussian "
                        f"{_iv(rare.excess)}, beyond "
                        f"random directions {_iv(rare.effect)} "
                        f"({'both CIs above 0: the excess is not that one direction' if rare.detected else 'both CIs above 0: no'}).")
    channel = _channel_line(res, mid)
    if channel is not None:
        lines.append(channel[0])
    ablation = _ablation_line(res)
    if ablation is not None:
        lines.append(ablation)
    if res.power is not None:
        lines.append(_power_line(res.power, "Power"))
    if rare is not None and rare.power is not None:
        lines.append(_power_line(rare.power, "Power without the rare-token direction (planted and read in those "
                                             "directions)"))
    power = rare.power if rare_gone else res.power  # the curve of the reading that decides "not found"
    mde = power.min_detectable if power is not None else None
    what = res.model if res.config.control == "none" else f"the planted {res.config.control} control"
    span = f"{peak.mean:+.2f} [{peak.lo:+.2f}, {peak.hi:+.2f}]"
    need = res.config.needed_push
    weak = not present and power is not None and (mde is None or mde > need)
    seen = (None if power is None else f"its minimum detectable push is α ≈ {mde:.3g}" if mde is not None
            else f"no push up to α = {max(power.alphas):g} reaches {100 * power.power:.0f} % power")
    pct = f"{100 * power.power:.0f} %" if power is not None else ""
    bound = (f"; a push of this kind of α ≈ {mde:.3g} × ‖r − μ‖ or more is detected with {pct} power" if mde is not None
             else f"; the power curve does not reach {pct} at any size run" if power is not None else "")
    if supported:
        head = (f"SUPPORTED for {what}: mid-stack residuals put extra weight on directions of tokens that are "
                f"near-impossible in context, and it is gone by the output (layer {L}: effect {span} null SDs; the "
                f"favoured token's z {raw:+.2f} → {fin:+.2f}).")
    elif present:
        head = (f"NOT SUPPORTED for {what}: mid-stack weight on near-impossible tokens exists (layer {L}, {span}) but "
                f"it is not removed before the output (z {raw:+.2f} → {fin:+.2f}).")
    elif rare_gone and weak:
        head = (f"INSUFFICIENT POWER for {what}: (i) finds a mid-stack excess (layer {L}: {span} null SDs) but none "
                f"once the rare-token direction is projected out (effect {_iv(rare.effect)}), and without that "
                f"direction {seen} × ‖r − μ‖, above the {need:g} this question needs; whether anything besides that "
                f"one direction is there is not decided.")
    elif rare_gone:
        head = (f"NOT SUPPORTED for {what}: the mid-stack excess (i) finds (layer {L}: {span} null SDs) is the "
                f"rare-token direction; with it projected out no excess is left (effect {_iv(rare.effect)}"
                f"{bound + ', planted and read without that direction' if bound else ''}).")
    elif weak:
        head = (f"INSUFFICIENT POWER for {what}: (i) finds no mid-stack excess (best layer {L}: {span} null SDs), but "
                f"{seen} × ‖r − μ‖, above the {need:g} this question needs; \"not found\" is not a verdict here.")
    else:
        head = (f"NOT SUPPORTED for {what}: no mid-stack excess weight on near-impossible-token directions beyond "
                f"the nulls (best layer {L}: {span} null SDs{bound}).")
    return RepurposingVerdict(supported=supported, present=present, removed=removed, headline=head, criteria=lines,
                              peak_layer=L, peak=[peak.mean, peak.lo, peak.hi], raw_z=raw, final_z=fin,
                              drop=[drop.mean, drop.lo, drop.hi], held_out=held, min_detectable=mde,
                              drop_vs_null=None if null is None else [null.mean, null.lo, null.hi],
                              channel_layer=None if channel is None else channel[1],
                              channel=None if channel is None else channel[2], insufficient_power=weak,
                              rare_effect=None if rare is None else [rare.effect.mean, rare.effect.lo, rare.effect.hi])


def _power_line(pw, label: str) -> str:
    """One power curve (``PowerView``) as a criteria line."""
    mde = pw.min_detectable
    return (f"{label} at layer {pw.layer}: a push of α × ‖r − μ‖ toward one of each position's own near-impossible "
            f"tokens is detected by (i) in " + ", ".join(f"{100 * r:.0f} % (α {a:g})" for a, r in zip(pw.alphas, pw.rate))
            + f" of {pw.draws} draws; " + (f"{100 * pw.power:.0f} % power from α ≈ {mde:.3g}." if mde is not None
                                           else f"none of these sizes reaches {100 * pw.power:.0f} % power."))


def _iv(iv) -> str:
    return f"{iv.mean:+.2f} (95% CI {iv.lo:+.2f} to {iv.hi:+.2f})"


def _scanned(res: RepurposingResult) -> str:
    """How (i) scanned, for results that record it (``scan``); "" for older ones (raw W_U, as their text says)."""
    s = res.scan
    if s is None:
        return ""
    basis = "γ ⊙ W_U" if s.basis == "output" else "raw W_U"
    return (f" (directions: rows of {basis}{', the shared direction of all rows projected out' if s.shared_removed else ''}"
            f"{f'; tokens within |cos| {s.context_cos:g} of a context token left out' if s.context_cos < 1 else ''})")


def _ablation_line(res: RepurposingResult) -> str | None:
    """The causal ablation, headed by the comparison with isotropic random directions; None for results from before
    the token sets lost the shared direction (their reports show the table as it was)."""
    ab = res.ablation
    if ab is None or ab.shared_removed is None:
        return None
    vs = ab.top_minus["random_directions"]
    others = "; ".join(f"{k.replace('_', ' ')} {_iv(v)}" for k, v in ab.top_minus.items() if k != "random_directions")
    return (f"Causal ablation at layer {ab.layer} (rank {ab.rank}, {ab.n_contexts} contexts): projecting out the "
            f"favoured near-impossible directions costs {ab.delta['near_impossible_top'].mean:+.3f} nats/token, "
            f"{_iv(vs)} more than isotropic random directions "
            f"({'more' if vs.lo > 0 else 'less' if vs.hi < 0 else 'no difference'}). Against other token sets"
            f"{' (the shared direction of all rows projected out of each)' if ab.shared_removed else ''}: {others}.")


def _channel_line(res: RepurposingResult, mid: list[int]):
    """(iii), the consistent channels (``channels``): (line, layer, [mean, lo, hi]) at the middle layer where the
    excess is largest on the selection contexts, with layer 0's for scale and the planted ``consistent`` control's
    detection for power; None for results without the scan."""
    c = res.curves
    if "channel_excess" not in c:
        return None
    pick = res.selection_curves if res.selection_curves and "channel_excess" in res.selection_curves else c
    j = max(mid, key=lambda i: pick["channel_excess"].mean[i])
    ch, L = c["channel_excess"].at(j), res.off_layers[j]
    at0 = (f"; at layer 0, where it is the embedding's own token structure, {c['channel_excess'].mean[0]:+.2f}"
           if res.off_layers[0] == 0 else "")
    line = (f"(iii) Consistent channels, read against each position's own energy rather than the layer's covariance: "
            f"at layer {L}, the {CHANNEL_TOP} near-impossible token directions chosen on the selection contexts carry "
            f"{c['channel_tokens'].mean[j]:.2f}× an average direction's share of the off-output energy on the held-out "
            f"ones, the {CHANNEL_TOP} random directions chosen the same way {c['channel_random'].mean[j]:.2f}× "
            f"(excess {ch.mean:+.2f}, 95% CI {ch.lo:+.2f} to {ch.hi:+.2f}{at0}). Token geometry alone gives an excess "
            f"and no layer of a real model is known to be free of channels, so this is descriptive")
    seen = [r.alpha for r in (res.mechanisms.rows if res.mechanisms else []) if r.control == "consistent"
            and r.channel_detected]
    tried = [r.alpha for r in (res.mechanisms.rows if res.mechanisms else []) if r.control == "consistent"]
    if tried:
        line += (f"; a planted consistent channel on top of it is detected from α = {min(seen):g}" if seen else
                 f"; a planted consistent channel on top of it is not detected at any α up to {max(tried):g}")
    return line + ".", L, [ch.mean, ch.lo, ch.hi]


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    out = {"peak layer": str(v.peak_layer), "effect [95% CI]": f"{v.peak[0]:+.2f} [{v.peak[1]:+.2f}, {v.peak[2]:+.2f}]",
           "favoured z: layer → output": f"{v.raw_z:+.2f} → {v.final_z:+.2f}"}
    if v.drop_vs_null is not None:
        out["(ii) drop beyond the random-direction argmax"] = (
            f"{v.drop_vs_null[0]:+.2f} [{v.drop_vs_null[1]:+.2f}, {v.drop_vs_null[2]:+.2f}]")
    if v.channel is not None:
        out["(iii) channel excess, chosen tokens − random dirs"] = (
            f"{v.channel[0]:+.2f} [{v.channel[1]:+.2f}, {v.channel[2]:+.2f}] (L{v.channel_layer})")
    if getattr(v, "rare_effect", None) is not None:
        out["(i) effect without the rare-token direction"] = (
            f"{v.rare_effect[0]:+.2f} [{v.rare_effect[1]:+.2f}, {v.rare_effect[2]:+.2f}]")
    rare = getattr(res, "rare", None)
    for pw, label in ((getattr(res, "power", None), ""),
                      (None if rare is None else rare.power, ", without the rare-token direction")):
        if pw is not None:
            out[f"minimum detectable α ({100 * pw.power:.0f} % power, planted push{label})"] = (
                f"{pw.min_detectable:.3g}" if pw.min_detectable is not None else f"above {max(pw.alphas):g}")
    return out

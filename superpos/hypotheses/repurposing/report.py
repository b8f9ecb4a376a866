"""The repurposing report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from superpos.experiment.report import Report, band
from superpos.hypotheses.lenses.report import add_lens_section
from superpos.hypotheses.repurposing.config import RARE_MIN_MEMBER
from superpos.hypotheses.repurposing.mechanisms import DESCRIPTIONS
from superpos.hypotheses.repurposing.result import DictionaryView, RepurposingResult
from superpos.stats import Band


def write_report(res: RepurposingResult, out: Path) -> Path:
    """report.md/.html and figures of a repurposing run."""
    cfg = res.config
    title = f"Unlikely-token repurposing — {res.model}"
    if cfg.control != "none":
        title += f" ({cfg.control} control)"
    rep = Report(title)
    rep.verdict(res.verdict, res)
    x = res.layers
    rep.heading("Setup")
    g = res.group_sizes
    removed = f"the last {cfg.exclude_recent} input tokens" if cfg.exclude_recent else "every token of the context so far"
    rep.text(f"{res.n_positions:,} positions from {res.n_contexts} contexts of {cfg.context_length} tokens "
             f"(position 0, the attention sink, left out); residual layers {x[0]}–{x[-1]}. Near-impossible: final "
             f"probability < {cfg.unlikely:g} (on average {g.near_impossible_mean:,.0f} of {g.vocab:,} tokens "
             f"per position, after removing {removed}); likely: ≥ {cfg.likely:g} "
             f"({g.likely_mean:.1f} per position). z = standardised projection on the unit token direction "
             f"under the layer's own mean and covariance; z_high = {cfg.z_high:g}.")
    sc = res.scan
    if sc is None:
        rep.text("This result predates the scan settings: (i) scanned raw W_U rows, the shared token direction was not "
                 "projected out, and only the context tokens themselves (not their near-duplicates) left the "
                 "near-impossible groups.")
    else:
        rep.text(f"Token directions: rows of {'γ ⊙ W_U (what the logits read)' if sc.basis == 'output' else 'raw W_U'}"
                 f"; the shared direction (their unit mean row; mean cos of a row with it {sc.shared_row_cos:.2f}, |cos| "
                 f"with the rows' top uncentred singular vector {sc.shared_top_cos:.3f}) "
                 f"{'projected out of every token and random direction' if sc.shared_removed else 'kept'}. Tokens whose "
                 f"direction is within |cos| {sc.context_cos:g} of what a context token writes into the stream (its "
                 f"embedding row, in the scanned space) left out of the near-impossible groups: "
                 f"{sc.near_context_mean:,.1f} per position beyond the context tokens themselves.")
    if cfg.control != "none":
        a, b = res.control_layers
        rep.text(f"Control ({cfg.control}): every position ≥ 1 gets {cfg.control_alpha:g} × |r| along "
                 f"{DESCRIPTIONS[cfg.control]}; written at residual layer {a}, removed at layer {b}.")
    _effect_section(rep, res)
    if res.rare is not None:
        rv = res.rare
        rep.heading("Without the rare-token direction")
        pw = rv.power
        rep.text(f"The rare-token direction is the unit mean of the scanned directions of the {rv.n_tokens:,} tokens "
                 f"near-impossible at ≥ {100 * RARE_MIN_MEMBER:.0f} % of the selection positions. Projected out of "
                 f"every token and random direction, criterion (i) at layer {rv.layer} on the {rv.positions:,} held-out "
                 f"positions reads: token excess over the Gaussian {_span(rv.excess, 2)}, beyond random directions "
                 f"{_span(rv.effect, 2)} null SDs ({'both CIs above 0' if rv.detected else 'not both CIs above 0'}). If "
                 f"the excess of (i) were that one \"suppress rare tokens\" direction, it would be gone here."
                 + ("" if pw is None else
                    " This reading decides the verdict, so its power was measured in the same directions (the push "
                    "planted along each position's own token with the rare direction projected out): "
                    + ", ".join(f"{100 * r:.0f} % at α {a:g}" for a, r in zip(pw.alphas, pw.rate))
                    + f" of {pw.draws} draws; " + (f"{100 * pw.power:.0f} % power from α ≈ {pw.min_detectable:.3g}."
                                                   if pw.min_detectable is not None else
                                                   f"no size run reaches {100 * pw.power:.0f} % power.")))
    if res.power is not None:
        _power_section(rep, res)
    if res.mechanisms is not None:
        _mechanisms_section(rep, res)
    if res.writes is not None:
        _writes_section(rep, res)
    if any(k.startswith("dense_") for k in res.curves):
        _dense_section(rep, res)
    if "channel_excess" in res.curves:
        _channel_section(rep, res)
    if res.ablation is not None:
        _ablation_section(rep, res)
    _paired_section(rep, res)
    rep.heading("Lens view")
    add_lens_section(rep, res.lenses, res.layers)
    _lens_hits_figure(rep, res)
    if res.dictionary is not None:
        _dictionary_section(rep, res.dictionary)
    rep.reproduce("repurposing", cfg)
    return rep.save(out)


def _effect_section(rep: Report, res: RepurposingResult) -> None:
    """The effect per layer: figure, table, and the statistic with its nulls / counts / rise and fall."""
    import matplotlib.pyplot as plt

    cfg, xo, C = res.config, res.off_layers, res.curves
    rep.heading("Effect per layer")
    rep.text("Statistics on the off-output part of each layer's residual (what the final residual does not "
             "predict linearly; the last layer has none, so it is left out here)."
             + (f" The verdict's layer was chosen on {res.selection_contexts} of the {res.n_contexts} contexts; every "
                f"curve and CI here is on the other {res.n_contexts - res.selection_contexts}."
                if res.selection_curves is not None else ""))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    band(ax, xo, C["effect"], "effect (tokens − random dirs)", lw=2)
    band(ax, xo, C["excess_tokens"], "real − Gaussian null, token dirs")
    band(ax, xo, C["excess_random_dirs"], "real − Gaussian null, random dirs")
    band(ax, xo, C["matched_minus_shuffled"], "matched − shuffled contexts")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="residual layer", ylabel="Δ max z over near-impossible tokens (null SDs)")
    ax.legend(fontsize=8)
    rep.figure(fig, "effect_by_layer.png", "Excess push toward the most-favoured near-impossible token, per layer, "
               "with 95% bootstrap CIs over contexts")
    columns = ("excess_tokens", "excess_random_dirs", "matched_minus_shuffled", "n_high", "n_high_G", "n_high_Q",
               "raw_z", "final_z")
    rep.table(["layer", "effect", "95% CI", "real−G (tokens)", "real−G (random)", "matched−shuffled",
               "n(z>z_high) real", "Gaussian", "random dirs", "favoured token z here", "…at output"],
              [[layer, C["effect"].mean[i], f"{C['effect'].lo[i]:+.2f} to {C['effect'].hi[i]:+.2f}",
                *[C[k].mean[i] for k in columns]] for i, layer in enumerate(xo)])

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for key, label in (("peak", "real"), ("peak_G", "Gaussian null"), ("peak_Q", "random directions"),
                       ("peak_S", "shuffled contexts")):
        band(axes[0], xo, C[key], label)
    axes[0].set(xlabel="residual layer", ylabel="max z over near-impossible tokens")
    for key, label in (("n_high", "real"), ("n_high_G", "Gaussian null"), ("n_high_Q", "random directions")):
        band(axes[1], xo, C[key], label)
    axes[1].set(xlabel="residual layer", ylabel=f"# near-impossible tokens with z > {cfg.z_high:g}", yscale="symlog")
    band(axes[2], xo, C["raw_z"], "at its layer")
    band(axes[2], xo, C["final_z"], "at the output")
    axes[2].set(xlabel="layer where the token is favoured", ylabel="standardised projection (raw residual)")
    for a in axes:
        a.legend(fontsize=8)
    rep.figure(fig, "peaks_counts_removal.png", "Left: the statistic and its nulls. Middle: how many near-impossible "
               "tokens the stream pushes toward beyond z_high. Right: rise and fall — the favoured near-impossible "
               "token's projection at its layer and at the output")


def _span(i, digits: int) -> str:
    """An interval as "mean [lo, hi]", signed."""
    return f"{i.mean:+.{digits}f} [{i.lo:+.{digits}f}, {i.hi:+.{digits}f}]"


def _power_section(rep: Report, res: RepurposingResult) -> None:
    """Detection rate of criterion (i) against the planted push size, with the minimum detectable size."""
    import matplotlib.pyplot as plt

    pw = res.power
    rep.heading("What the test can see: power")
    rep.text(f"On the held-out positions ({pw.positions:,}) at layer {pw.layer}, each position ≥ 1 gets α × ‖r − μ‖ "
             f"along the direction of one of its own near-impossible tokens (drawn anew per position and draw; the "
             f"output untouched), and criterion (i) is run exactly as on the real residuals; {pw.draws} draws per "
             f"size. " + (f"{100 * pw.power:.0f} % power from α ≈ {pw.min_detectable:.3g}: a push of this kind at "
                          f"least that large would have been found." if pw.min_detectable is not None else
                          f"No size run reaches {100 * pw.power:.0f} % power."))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(pw.alphas, pw.rate, "o-", label="detection rate of (i)")
    ax.axhline(pw.power, color="k", lw=0.8, ls="--", label=f"{100 * pw.power:.0f} % power")
    if pw.min_detectable is not None:
        ax.axvline(pw.min_detectable, color="r", lw=0.8, label=f"minimum detectable α ≈ {pw.min_detectable:.3g}")
    ax.set(xscale="log", xlabel="planted push α (× residual norm)", ylabel="share of draws detected", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8)
    rep.figure(fig, "power_curve.png", "Power curve of criterion (i) at the verdict's layer")
    if pw.rate_vs_clean is None:
        rep.table(["α", "detected"], [[a, f"{100 * r:.0f} %"] for a, r in zip(pw.alphas, pw.rate)])
        return
    mde = pw.min_detectable_vs_clean
    rep.text("Each draw is also read against the unplanted residuals at the same positions (each half's excess over "
             "the Gaussian minus the unplanted residuals' own), which removes the offset of a real stream's tails "
             "from the Gaussian's: " + (f"{100 * pw.power:.0f} % power from α ≈ {mde:.3g} that way." if mde is not None
                                       else f"no size reaches {100 * pw.power:.0f} % that way."))
    rep.table(["α", "detected (verdict's reading)", "detected against the unplanted residuals"],
              [[a, f"{100 * r:.0f} %", f"{100 * c:.0f} %"] for a, r, c in zip(pw.alphas, pw.rate, pw.rate_vs_clean)])


def _mechanisms_section(rep: Report, res: RepurposingResult) -> None:
    """Every planted control at several sizes through criterion (i): which the test sees, and from what size."""
    mv = res.mechanisms
    a, b = res.control_layers
    rep.heading("Planted mechanisms and negative controls")
    rep.text(f"Each control hooks the model (written at residual layer {a}, removed at {b}; superpos.hypotheses."
             f"mechanisms), the groups are formed from the hooked model's own output, and criterion (i) is read at layer "
             f"{mv.layer} on {mv.n_contexts} held-out contexts, as on the real run. Positive controls must be detected "
             f"from some size on; `none` (the unhooked model) and `negative` (random non-token directions) must not. "
             f"Excess and effect in null SDs of z, 95% CIs over contexts.")
    with_channels = any(r.channel is not None for r in mv.rows)
    paired = any(r.excess_vs_unhooked is not None for r in mv.rows)
    if paired:
        rep.text("(i) is also read against the unhooked model at the same positions: each half's excess over the "
                 "Gaussian on the hooked model minus the unhooked model's own (so the unhooked model's offset from "
                 "its Gaussian, the `none` row, is taken out).")
    if with_channels:
        rep.text("The consistent-channel scan (iii) reads each control against the unhooked model at the same positions: "
                 "its excess (the chosen tokens' share of off-output energy minus the chosen random directions') on the "
                 "hooked model minus on the unhooked one, on the contexts that did not choose the directions.")
    rows = [[r.control, DESCRIPTIONS.get(r.control, "no hooks (the model as it is)"),
             "—" if r.control == "none" else f"{r.alpha:g}", "yes" if r.detected else "no",
             _span(r.excess, 2), _span(r.effect, 2)]
            + ([] if not with_channels else ["—" if r.channel is None else "yes" if r.channel_detected else "no",
                                             "—" if r.channel is None else _span(r.channel, 2)])
            + ([] if not paired else ["—" if r.excess_vs_unhooked is None else "yes" if r.detected_vs_unhooked else "no",
                                      "—" if r.effect_vs_unhooked is None else _span(r.effect_vs_unhooked, 2)])
            for r in mv.rows]
    rep.table(["control", "what it plants", "α", "detected by (i)", "token excess", "effect beyond random dirs"]
              + (["detected by (iii)", "channel excess vs unhooked"] if with_channels else [])
              + (["(i) vs unhooked", "effect vs unhooked"] if paired else []), rows)


def _writes_section(rep: Report, res: RepurposingResult) -> None:
    """Per block and component: the write along the favoured near-impossible token minus along its nulls."""
    import matplotlib.pyplot as plt

    wv = res.writes
    has_u = wv.before_vs_near_impossible is not None
    rep.heading("Who writes it, and who takes it out")
    rep.text(f"At layer {wv.layer}, on {wv.n_contexts} held-out contexts: each block's attention and MLP output read "
             f"along the position's favoured near-impossible token t* (criterion (i)'s argmax), along the same argmax "
             f"over random directions q*" + (", and along u, a near-impossible token of the same position drawn at "
                                             "random" if has_u else "")
             + f", as a share of ‖r − μ‖ at layer {wv.layer} (superpos.hypotheses.writes). Selecting a maximum makes "
             f"earlier writes lean toward it on any direction (t* − q*); every unembedding row shares a direction that "
             f"late blocks write along, which q* lacks" + (" and u has (t* − u)" if has_u else "") + ". Repurposing "
             f"predicts more toward t* before layer {wv.layer} and writes against it after (write → later cancel). "
             f"95% CIs over contexts.")
    rows = [("along t* minus along q*", wv.before, wv.after)]
    if has_u:
        rows += [("along t* minus along u", wv.before_vs_near_impossible, wv.after_vs_near_impossible)]
    rows += [("along t*", wv.before_token, wv.after_token), ("along q* (random argmax)", wv.before_random, wv.after_random)]
    if has_u:
        rows += [("along u (random near-impossible token)", wv.before_near_impossible, wv.after_near_impossible)]
    rep.table(["sum of writes", f"blocks before layer {wv.layer}", f"blocks from layer {wv.layer} on"],
              [[name, _span(before, 3), _span(after, 3)] for name, before, after in rows])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    blocks = list(range(len(wv.attn.mean)))
    band(ax, blocks, wv.attn, "attention, t* − q*")
    band(ax, blocks, wv.mlp, "MLP, t* − q*")
    if has_u:
        band(ax, blocks, wv.attn_vs_near_impossible, "attention, t* − u", ls="--")
        band(ax, blocks, wv.mlp_vs_near_impossible, "MLP, t* − u", ls="--")
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(wv.layer - 0.5, color="r", lw=0.8, ls=":", label=f"layer {wv.layer}")
    ax.set(xlabel="block", ylabel="write difference (× ‖r − μ‖)")
    ax.legend(fontsize=8)
    rep.figure(fig, "component_writes.png", "Writes along the favoured near-impossible token beyond its nulls")


def _dense_section(rep: Report, res: RepurposingResult) -> None:
    """Dense use: the near-impossible group's mean push and energy minus matched groups', per layer."""
    import matplotlib.pyplot as plt

    xo, C = res.off_layers, res.curves
    rep.heading("Dense use: the whole group, not its strongest token")
    rep.text("Mean standardised projection (push) and mean squared projection (energy) of the off-output residual over "
             "all of a position's near-impossible tokens, minus the same over another context's near-impossible group "
             "at the same slot, a random token set of the same expected size, and the likely tokens; token directions "
             "as the output reads them (γ ⊙ W_U) and as the input writes them (W_E). Above 0: the stream leans into "
             "this context's near-impossible tokens as a group. 95% CIs over contexts.")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for ax, stat in zip(axes, ("push", "energy")):
        for basis in ("output", "embedding"):
            for group in ("other_context", "random_same_size"):
                key = f"dense_{stat}_{basis}_{group}"
                if key in C:
                    band(ax, xo, C[key], f"{basis} dirs, vs {group.replace('_', ' ')}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel="residual layer", ylabel=f"near-impossible {stat} − matched group's")
        ax.legend(fontsize=7)
    rep.figure(fig, "dense_use.png", "Dense use by layer: the near-impossible group against matched groups")
    i = res.off_layers.index(res.verdict.peak_layer) if res.verdict is not None else len(xo) // 2
    rows = []
    for stat in ("push", "energy"):
        for basis in ("output", "embedding"):
            for group in ("other_context", "random_same_size", "likely"):
                key = f"dense_{stat}_{basis}_{group}"
                if key in C:
                    b = C[key]
                    rows.append([stat, basis, group.replace("_", " "), b.mean[i], f"{b.lo[i]:+.4f} to {b.hi[i]:+.4f}"])
    rep.table([f"at layer {xo[i]}", "directions", "minus", "mean", "95% CI"], rows)


def _channel_section(rep: Report, res: RepurposingResult) -> None:
    """Consistent channels (iii): the chosen token and random directions' energy shares by layer."""
    import matplotlib.pyplot as plt

    from superpos.hypotheses.repurposing.config import CHANNEL_MIN_MEMBER, CHANNEL_TOP

    xo, C = res.off_layers, res.curves
    rep.heading("Consistent channels: the same token directions in every context")
    rep.text(f"A token direction borrowed the same way in every context lives in the layer's covariance, which the "
             f"max-z scan divides by. Here each position's off-output residual is read against its own energy: "
             f"w = D (x·d)² / ‖x‖², 1 for an average direction. Per layer, the {CHANNEL_TOP} tokens near-impossible at "
             f"≥ {100 * CHANNEL_MIN_MEMBER:.0f} % of the selection positions with the largest mean w there, and the "
             f"{CHANNEL_TOP} random directions chosen the same way, are read on the held-out contexts "
             f"(superpos.hypotheses.channels). Token directions line up with the stream's principal directions from the "
             f"embedding on (layer 0), so the excess is descriptive; the planted `consistent` control above says how "
             f"large an added channel it sees. 95% CIs over contexts.")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    band(ax, xo, C["channel_tokens"], f"{CHANNEL_TOP} chosen near-impossible tokens")
    band(ax, xo, C["channel_random"], f"{CHANNEL_TOP} chosen random directions")
    ax.axhline(1, color="k", lw=0.6)
    ax.set(xlabel="residual layer", ylabel="share of off-output energy (× average)", yscale="log")
    ax.legend(fontsize=8)
    rep.figure(fig, "channels.png", "Consistent channels by layer, read on held-out contexts")
    rep.table(["layer", "tokens", "random directions", "excess (95% CI)"],
              [[layer, C["channel_tokens"].mean[i], C["channel_random"].mean[i], _span(C["channel_excess"].at(i), 2)]
               for i, layer in enumerate(xo)])


def _ablation_section(rep: Report, res: RepurposingResult) -> None:
    """The causal test: loss change when each subspace is projected out at the verdict's layer."""
    ab = res.ablation
    rep.heading("Causal test: projecting the subspace out")
    if ab.shared_removed is not None:
        vs = ab.top_minus["random_directions"]
        rep.text(f"**Against isotropic random directions** (the comparison that carries this test): projecting out the "
                 f"favoured near-impossible directions costs {_span(vs, 4)} nats/token more than projecting out "
                 f"{ab.rank} random ones. The token sets below have the shared direction of all rows "
                 f"{'projected out' if ab.shared_removed else 'kept'}.")
    rep.text(f"At layer {ab.layer}, at every position after the sink, a rank-{ab.rank} subspace is projected out of "
             f"the residual and the next-token loss measured on {ab.n_contexts} held-out contexts (clean "
             f"{ab.clean_nll:.3f} nats/token). near_impossible_top: the {ab.rank} near-impossible tokens (none of the "
             f"context's own) the residual projects on most; other_context: what that rule picks at the same slot of "
             f"another context; near_impossible_random: {ab.rank} near-impossible tokens at random; likely: the model's "
             f"{ab.rank} most probable next tokens; random_directions: isotropic. Directions: {ab.basis} "
             f"({ {'output': 'γ ⊙ W_U', 'unembedding': 'raw W_U'}.get(ab.basis, 'W_E')})"
             + ("" if ab.context_cos is None or ab.context_cos >= 1 else
                f"; near-impossible tokens within |cos| {ab.context_cos:g} of a context token's embedding left out, "
                f"as in (i)")
             + ". If the stream borrows the favoured near-impossible directions, removing them costs more than "
               "removing another context's."
             + (f" {ab.skipped_positions:,} positions with fewer than {ab.rank} near-impossible tokens were left alone "
                f"by every subspace." if ab.skipped_positions else ""))
    rows = [[k, ab.delta[k].mean, f"{ab.delta[k].lo:+.4f} to {ab.delta[k].hi:+.4f}",
             "" if k not in ab.top_minus else _span(ab.top_minus[k], 4)] for k in ab.delta]
    rep.table(["subspace", "Δ loss (nats/token)", "95% CI", "near_impossible_top minus this"], rows)


def _paired_section(rep: Report, res: RepurposingResult) -> None:
    """The same tokens where near-impossible vs where likely."""
    import matplotlib.pyplot as plt

    x, pt = res.layers, res.paired_tokens
    fig, ax = plt.subplots(figsize=(8, 4))
    for ivs, label in ((pt.unlikely, "same tokens where near-impossible"), (pt.likely, "same tokens where likely")):
        band(ax, x, Band.of(ivs), label)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="residual layer", ylabel="mean z of the token")
    ax.legend(fontsize=8)
    rep.figure(fig, "paired_tokens.png", f"Paired per-token view over the tokens that are likely somewhere in the "
               f"sample (≈{int(np.median(pt.n_tokens))} tokens): their mean z where near-impossible vs where likely")


def _lens_hits_figure(rep: Report, res: RepurposingResult) -> None:
    """Tokens the lens calls likely mid-stack that are near-impossible at the output, against the nulls."""
    import matplotlib.pyplot as plt

    cfg, x, C = res.config, res.layers, res.curves
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (("lens_hits", "real"), ("lens_hits_S", "shuffled contexts"), ("lens_hits_G", "Gaussian null")):
        band(ax, x, C[key], label)
    ax.set(xlabel="residual layer", ylabel=f"# tokens, lens prob ≥ {cfg.likely:g}, final < {cfg.unlikely:g}")
    ax.legend(fontsize=8)
    rep.figure(fig, "lens_hits.png", "Tokens the tuned lens calls likely mid-stack that are near-impossible at the output")


def _dictionary_section(rep: Report, d: DictionaryView) -> None:
    """Shares of active token-aligned atoms pointing at near-impossible / likely tokens, vs shuffled contexts."""
    rep.heading("Dictionary view")
    rep.text(f"Dictionary at layer {d.layer}: {d.token_aligned_atoms:,} of {d.n_atoms:,} atoms have "
             f"|cos| ≥ {d.min_cos} with some token; {d.mean_active_aligned:.2f} of them are active per position.")
    if d.near_impossible is not None:
        keys = ("near_impossible", "near_impossible_shuffled", "likely", "likely_shuffled",
                "near_impossible_minus_shuffled")
        rep.table(["share of active token-aligned atoms whose token is…", "mean", "95% CI"],
                  [[k, getattr(d, k).mean[0], f"{getattr(d, k).lo[0]:.4f}–{getattr(d, k).hi[0]:.4f}"] for k in keys])

"""The repurposing report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...report import Report, band
from ...results import Band
from ..results import DictionaryView, RepurposingResult
from .lenses import add_lens_section


def write_report(res: RepurposingResult, out: Path) -> Path:
    """report.md/.html and figures of a repurposing run."""
    cfg = res.config
    title = f"Unlikely-token repurposing — {res.model}"
    if cfg.control != "none":
        title += f" ({cfg.control} control)"
    rep = Report(title)
    rep.verdict(res.verdict)
    x = res.layers
    rep.heading("Setup")
    g = res.group_sizes
    rep.text(f"{res.n_positions:,} positions from {res.n_contexts} contexts of {cfg.context_length} tokens "
             f"(position 0, the attention sink, left out); residual layers {x[0]}–{x[-1]}. Near-impossible: final "
             f"probability < {cfg.unlikely:g} (on average {g.near_impossible_mean:,.0f} of {g.vocab:,} tokens "
             f"per position, after removing the last {cfg.exclude_recent} input tokens); likely: ≥ {cfg.likely:g} "
             f"({g.likely_mean:.1f} per position). z = standardised projection on the unit unembedding row "
             f"under the layer's own mean and covariance; z_high = {cfg.z_high:g}.")
    if cfg.control != "none":
        a, b = res.control_layers
        direction = ("a random token's unembedding direction" if cfg.control == "positive"
                     else "a random non-token direction")
        rep.text(f"Control: every position ≥ 1 gets {cfg.control_alpha:g} × |r| along {direction} added at residual "
                 f"layer {a} and subtracted at layer {b}.")
    _effect_section(rep, res)
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
             "predict linearly; the last layer has none, so it is left out here).")
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

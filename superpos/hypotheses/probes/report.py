"""The probes report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from superpos.experiment.report import Report, band
from superpos.hypotheses.probes.result import ProbesResult

BASES = (("pca", "PCA basis of the embedding"), ("nmf", "NMF basis of the embedding"),
         ("coord", "coordinate basis"), ("frequency", "frequency-ordered basis"))


def write_report(res: ProbesResult, out: Path) -> Path:
    """report.md/.html and figures of a probes run."""
    import matplotlib.pyplot as plt

    cfg, v, geo, g = res.config, res.verdict, res.geometry, res.guess
    rep = Report(f"Input-token probes by depth — {res.model}")
    rep.verdict(v, res)
    x, cur = res.layers, res.targets["current token"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in res.targets.items():
        band(ax, x, r.acc, f"probe: {name}")
    band(ax, x, cur.pooled_acc, "one probe pooled over layers: current token", ls="--")
    band(ax, x, res.vocabulary.acc, "nearest token representation, whole vocabulary", ls="-.")
    ax.plot(x, res.nearest_embedding_acc, "k:", label="nearest embedding (no training)")
    ax.set(xlabel="residual layer", ylabel="held-out top-1 accuracy", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    rep.figure(fig, "accuracy_by_depth.png", "Linear probes for the input token and the previous one, per layer, "
               "and the training-free read-out over every token seen in training (95% CIs over held-out contexts)")
    rep.text(f"{res.n_positions:,} positions; probes over the {cur.n_classes} most frequent training tokens, "
             f"which cover {100 * cur.coverage:.1f}% of held-out positions. The whole-vocabulary read-out covers "
             f"{res.vocabulary.tokens:,} tokens ({100 * res.vocabulary.coverage:.1f}% of held-out positions): each "
             f"token's mean residual over training contexts, nearest by cosine. Ridge {cfg.ridge:g} on standardised "
             f"residuals; 75/25 split by context.")

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    band(axes[0], x, geo.tail, "class means")
    axes[0].axhline(geo.tail.mean[0], color="k", ls=":", label="layer 0 (the embedding itself)")
    axes[0].axhline(geo.random_share, color="grey", ls="--", label="random basis")
    axes[0].set(xlabel="residual layer", ylabel="share of energy on the embedding's tail", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    band(axes[1], x, g.vs_layer0, "accuracy gap (guessed − not) minus layer 0's")
    axes[1].axhline(0, color="k", lw=0.8)
    axes[1].set(xlabel="residual layer", ylabel="difference in accuracy")
    axes[1].legend(fontsize=8)
    rep.figure(fig, "calibrated.png", "Left: off to the side — the share of the class means' energy on the PCA "
               "components holding the embedding's last 50% of variance, against layer 0 and a random basis (95% CIs "
               "over contexts). Right: via the guess — how much more decodable the input is where the model had "
               "guessed it than where it had not, beyond layer 0's gap")
    rows = []
    for i, layer in enumerate(x):
        p = geo.procrustes.get(layer)
        rows.append([layer, *[r.acc.mean[i] for r in res.targets.values()], res.vocabulary.acc.mean[i],
                     res.nearest_embedding_acc[i], geo.tail.mean[i],
                     f"{geo.tail_vs_layer0.mean[i]:+.3f} [{geo.tail_vs_layer0.lo[i]:+.3f}, {geo.tail_vs_layer0.hi[i]:+.3f}]",
                     "" if p is None else f"{p.residual:.3f} vs {p.null_mean:.3f} (p = {p.p_value:.3g}, {p.shuffles})",
                     g.right_minus_wrong.mean[i], g.errors_to_guess[i]])
    rep.table(["layer", *[f"acc {k}" for k in res.targets], "whole-vocabulary read-out", "nearest embedding",
               "tail share", "− layer 0 [95% CI]", "Procrustes vs shuffled", "acc gap guessed − not",
               "errors naming the guess"], rows)
    show = sorted({0, 1, len(x) // 2, len(x) - 1})
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    for ax, (key, title) in zip(axes, BASES):
        ax.plot(np.cumsum(geo.embedding[key]), "k", lw=2, label="embedding rows")
        for i in show:
            ax.plot(np.cumsum(geo.profiles[key][i]), label=f"class means, layer {x[i]}")
        ax.set(title=title, xlabel="component, ordered by the basis", ylabel="cumulative share of energy")
        ax.legend(fontsize=8)
    rep.figure(fig, "probe_basis.png", "Where the class means' energy lies: cumulative energy over components of "
               "the embedding's PCA, NMF, coordinate and frequency-ordered bases. A curve below the black one holds "
               "the token in components the embedding barely uses")
    pt = res.prediction
    if pt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
        for lens in pt.at_i:
            band(axes[0], pt.layers, pt.at_i[lens], f"{lens}: distribution at i")
            band(axes[0], pt.layers, pt.at_previous[lens], f"{lens}: distribution at i−1 (the guess for x_i)", ls="--")
            band(axes[1], pt.layers, pt.difference[lens], lens)
        if pt.bigram is not None:
            axes[0].axhline(pt.bigram.mean, color="k", ls=":", lw=1, label="bigram table p(·|x_i) (no model)")
        axes[0].set(xlabel="residual layer", ylabel="accuracy reading x_i", ylim=(0, 1.02))
        axes[1].axhline(0, color="k", lw=0.8)
        axes[1].set(xlabel="residual layer", ylabel="at i − at i−1")
        for ax in axes:
            ax.legend(fontsize=8)
        rep.figure(fig, "prediction.png", "Is x_i carried by the prediction made at i? A ridge probe reads x_i from "
                   "the lens's next-token distribution at i and from the one at i−1 (the model's guess for x_i); "
                   "the last layer is the model's own prediction; dotted: the same probe on a bigram table "
                   "p(·|x_i) counted on the training contexts, which depends on x_i with no model computation. 95% "
                   "CIs over test contexts")
        rep.table(["layer", *[f"{lens} at i" for lens in pt.at_i], *[f"{lens} at i−1" for lens in pt.at_i],
                   *[f"{lens}: at i − at i−1 [95% CI]" for lens in pt.at_i]],
                  [[layer, *[pt.at_i[n].mean[j] for n in pt.at_i], *[pt.at_previous[n].mean[j] for n in pt.at_i],
                    *[f"{pt.difference[n].mean[j]:+.3f} [{pt.difference[n].lo[j]:+.3f}, {pt.difference[n].hi[j]:+.3f}]"
                      for n in pt.at_i]] for j, layer in enumerate(pt.layers)])
        if pt.vs_bigram is not None:
            rep.table(["layer", *[f"{lens} at i − bigram table [95% CI]" for lens in pt.vs_bigram]],
                      [[layer, *[f"{pt.vs_bigram[n].mean[j]:+.3f} [{pt.vs_bigram[n].lo[j]:+.3f}, "
                                 f"{pt.vs_bigram[n].hi[j]:+.3f}]" for n in pt.vs_bigram]]
                       for j, layer in enumerate(pt.layers)])
    rep.reproduce("probes", cfg)
    return rep.save(out)

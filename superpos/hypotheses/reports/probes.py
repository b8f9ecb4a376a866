"""The probes report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...report import Report, band
from ..results import ProbesResult


def write_report(res: ProbesResult, out: Path) -> Path:
    """report.md/.html and figures of a probes run."""
    import matplotlib.pyplot as plt

    cfg, v = res.config, res.verdict
    rep = Report(f"Input-token probes by depth — {res.model}")
    rep.verdict(v)
    x, cur = res.layers, res.targets["current token"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in res.targets.items():
        band(ax, x, r.acc, f"probe: {name}")
    band(ax, x, cur.pooled_acc, "one probe pooled over layers: current token", ls="--")
    ax.plot(x, res.nearest_embedding_acc, "k:", label="nearest embedding (no training)")
    ax.set(xlabel="residual layer", ylabel="held-out top-1 accuracy", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    rep.figure(fig, "accuracy_by_depth.png", "Linear probes for the input token and the previous one, per layer, "
               "with 95% CIs over held-out contexts")
    rep.text(f"{res.n_positions:,} positions; probes over the {cur.n_classes} most frequent training tokens, "
             f"which cover {100 * cur.coverage:.1f}% of held-out positions (the rest are not scored). Ridge "
             f"{cfg.ridge:g} on standardised residuals; 75/25 split by context.")
    b = res.basis
    ec = b.embedding_comparison
    rep.table(["layer", *[f"acc {k}" for k in res.targets], "pooled probe", "nearest embedding",
               "same-token cos", "shuffled cos", "Procrustes", "shuffled Procrustes", "tail share"],
              [[layer, *[r.acc.mean[i] for r in res.targets.values()], cur.pooled_acc.mean[i],
                res.nearest_embedding_acc[i], ec[i].same_token_cos, ec[i].null_cos_mean, ec[i].procrustes_residual,
                ec[i].null_procrustes_mean, v.tail_share[i]] for i, layer in enumerate(x)])
    show = sorted({0, 1, len(x) // 2, len(x) - 1})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, probe_energy, emb_energy, title in (
            (axes[0], b.pca, b.pca_embedding_var, "PCA basis of the embedding"),
            (axes[1], b.nmf, b.nmf_embedding, "NMF basis of the embedding"),
            (axes[2], b.coord, b.coord_embedding, "coordinate basis")):
        ax.plot(np.cumsum(emb_energy), "k", lw=2, label="embedding itself")
        for i in show:
            ax.plot(np.cumsum(probe_energy[i]), label=f"probe, layer {x[i]}")
        ax.set(title=title, xlabel="component, ordered by the embedding's use", ylabel="cumulative share of energy")
        ax.legend(fontsize=8)
    rep.figure(fig, "probe_basis.png", "Where the current-token probes put their weight: cumulative energy over "
               "components ordered by how much the embedding uses them. A probe curve below the black one reads "
               "from components the embedding barely uses (off to the side)")
    rep.reproduce("probes", cfg)
    return rep.save(out)

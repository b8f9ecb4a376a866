"""The true-token re-injection report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...report import Report
from ..results import ReinjectResult


def write_report(res: ReinjectResult, out: Path) -> Path:
    """report.md/.html and figures of a re-injection run."""
    import matplotlib.pyplot as plt

    cfg = res.config
    rep = Report(f"True-token re-injection — {res.model}")
    rep.verdict(res.verdict)
    rep.text(f"Teacher-forced over {cfg.contexts} contexts × {cfg.context_length} tokens; the embedding of token p "
             f"is added (× α) to the residual at layers {res.layers} at position p; Δ = loss on token p+1 with minus "
             f"without. Bins: fifths of token p's surprisal under the clean model (edges "
             f"{', '.join(f'{e:.2f}' for e in res.bin_edges)} nats). Clean loss {res.clean_loss:.3f} nats.")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    centers = np.arange(cfg.n_bins)
    for a, v in res.alphas.items():
        m = [b.mean for b in v.bins]
        err = np.array([[b.mean - b.lo, b.hi - b.mean] for b in v.bins]).T
        ax.errorbar(centers, m, yerr=err, marker="o", capsize=3, label=f"α = {a:g}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xticks=centers, xticklabels=[f"Q{i + 1}" for i in centers], xlabel="surprisal of the re-injected token "
           "(fifths, low → high)", ylabel="Δ loss on the following token [nats]")
    ax.legend(fontsize=8)
    rep.figure(fig, "reinject.png", "Change in next-token loss from re-injecting the true token's embedding, by how "
               "surprising that token was (95% CIs over contexts)")
    rep.table(["α", "overall Δ", *[f"Q{i + 1}" for i in range(cfg.n_bins)], "Q5 − Q1", "95% CI"],
              [[f"{a:g}", v.overall.mean, *[b.mean for b in v.bins], v.top_minus_bottom.mean,
                f"{v.top_minus_bottom.lo:+.4f} to {v.top_minus_bottom.hi:+.4f}"] for a, v in res.alphas.items()])
    rep.reproduce("reinject", cfg)
    return rep.save(out)

"""The lookahead report."""
from __future__ import annotations

from pathlib import Path

from ...report import Report, band
from ..results import LookaheadResult


def write_report(res: LookaheadResult, out: Path) -> Path:
    """report.md/.html and figures of a lookahead run."""
    import matplotlib.pyplot as plt

    rep = Report(f"Lookahead probes — {res.model}")
    rep.verdict(res.verdict)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in res.offsets.items():
        band(ax, res.layers, r.acc, f"probe for token {name}")
        ax.axhline(max(r.bigram.mean, r.embedding_probe.mean), ls=":", color=ax.lines[-1].get_color(), lw=1)
    ax.set(xlabel="residual layer at position i", ylabel="held-out top-1 accuracy")
    ax.legend(fontsize=8)
    rep.figure(fig, "lookahead.png", "Probes from position i for the tokens at i+1, i+2, i+3 (95% CIs over held-out "
               "contexts); dotted: the stronger current-token-only baseline for each")
    rep.table(["token", "best layer", "best acc", "bigram table", "embedding probe", "gain", "95% CI", "coverage"],
              [[name, r.best_layer, max(r.acc.mean), r.bigram.mean, r.embedding_probe.mean, r.gain_over_baseline.mean,
                f"{r.gain_over_baseline.lo:+.3f} to {r.gain_over_baseline.hi:+.3f}", r.coverage]
               for name, r in res.offsets.items()])
    rep.reproduce("lookahead", res.config)
    return rep.save(out)

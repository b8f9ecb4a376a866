"""The lookahead report."""
from __future__ import annotations

from pathlib import Path

from superpos.experiment.report import Report, band
from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.lookahead.result import LookaheadResult


def write_report(res: LookaheadResult, out: Path) -> Path:
    """report.md/.html and figures of a lookahead run."""
    import matplotlib.pyplot as plt

    rep = Report(f"Lookahead probes — {res.model}")
    rep.verdict(res.verdict)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in res.offsets.items():
        band(ax, res.layers, r.acc, f"probe for token {name}")
        color = ax.lines[-1].get_color()
        ax.axhline(max(r.ngram[r.ngram_order].mean, r.model_guess.mean), ls=":", color=color, lw=1)
        ax.plot([r.best_layer], [r.best_layer_acc.mean], "*", color=color, ms=10)
    ax.set(xlabel="residual layer at position i", ylabel="held-out top-1 accuracy")
    ax.legend(fontsize=8)
    rep.figure(fig, "lookahead.png", "Probes from position i for the tokens at i+1, i+2, i+3 (95% CIs over test "
               "contexts); dotted: the stronger context-aware baseline on test contexts (back-off n-gram or a probe "
               "on the model's own next-token distribution); star: the layer chosen on validation contexts, scored on "
               "test")
    orders = sorted(next(iter(res.offsets.values())).ngram)
    rep.table(["token", "layer (val)", "probe acc"] + [f"{n}-gram" for n in orders] +
              ["model's guess", "n (val)", "gain over the n-gram [95% CI]", "gain over the guess [95% CI]", "coverage"],
              [[name, r.best_layer, r.best_layer_acc.mean] + [r.ngram[n].mean for n in orders] +
               [r.model_guess.mean, r.ngram_order, fmt_ci(r.gain_over_ngram), fmt_ci(r.gain_over_guess), r.coverage]
               for name, r in res.offsets.items()])
    rep.reproduce("lookahead", res.config)
    return rep.save(out)

"""The lookahead report."""
from __future__ import annotations

from pathlib import Path

from superpos.experiment.report import Report, band
from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.lookahead.result import LookaheadResult
from superpos.hypotheses.lookahead.verdict import planted


def write_report(res: LookaheadResult, out: Path) -> Path:
    """report.md/.html and figures of a lookahead run."""
    import matplotlib.pyplot as plt

    rep = Report(f"Lookahead probes — {res.model}")
    rep.verdict(res.verdict, res)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in res.offsets.items():
        band(ax, res.layers, r.acc, f"ridge probe on the residual alone, token {name}")
        color = ax.lines[-1].get_color()
        if r.nested is not None:
            ax.axhline(r.nested.floor.mean, ls=":", color=color, lw=1)
            ax.plot([r.nested.layer], [r.nested.full_acc.mean], "*", color=color, ms=10)
            ax.plot([r.nested.layer], [r.nested.base_acc.mean], "o", mfc="none", color=color, ms=7)
        else:
            ax.axhline(max(r.ngram[r.ngram_order].mean, r.model_guess.mean), ls=":", color=color, lw=1)
            ax.plot([r.best_layer], [r.best_layer_acc.mean], "*", color=color, ms=10)
    ax.set(xlabel="residual layer at position i", ylabel="held-out top-1 accuracy")
    ax.legend(fontsize=8)
    rep.figure(fig, "lookahead.png", "Ridge probes from the residual at position i alone for the tokens at i+1, i+2, "
               "i+3 (95% CIs over test contexts); dotted: the floor (the model's own top guess at +1, the back-off "
               "n-gram beyond); circle: the logistic probe on [n-grams + the model's log-probs at i (+ the embedding of "
               "token i, in runs calibrated at layer 0)]; star: the same with the residual at the layer chosen on "
               "validation contexts, on test contexts")
    if all(r.nested is not None for r in res.offsets.values()):
        n0 = next(iter(res.offsets.values())).nested
        rep.table(["token", "layer (val)", "log-lik base (nats)", "log-lik + residual", "gain [95% CI]",
                   "acc base", "acc + residual", "acc gain [95% CI]",
                   "planted control [95% CI] (against the residual alone where run so)", "floor",
                   "floor acc", "L2 base / full", "fits converged", "test positions", "coverage",
                   "layer 0 (embedding) gain over n-grams + log-probs [95% CI]", "L2 embedding"],
                  [[name, n.layer, n.base_loglik.mean, n.full_loglik.mean, fmt_ci(n.gain), n.base_acc.mean,
                    n.full_acc.mean, fmt_ci(n.acc_gain), "not run" if planted(r) is None else fmt_ci(planted(r)),
                    n.floor_name, n.floor.mean, f"{n.l2_base:g} / {n.l2_full:g}",
                    "not recorded" if n.converged is None else " / ".join(f"{f} {'yes' if ok else 'NO'}"
                                                                          for f, ok in n.converged.items()),
                    n.test_positions, r.coverage,
                    "not in the base" if n.embedding_gain is None else fmt_ci(n.embedding_gain),
                    "" if n.l2_embedding is None else f"{n.l2_embedding:g}"]
                   for name, r in res.offsets.items() for n in [r.nested]])
        rep.text(f"The model's own top guess names the token at i+1 {fmt_ci(res.model_top1)} of the time on test "
                 f"contexts (whole vocabulary). n-gram tables counted on {res.ngram_tokens:,} tokens: every token "
                 f"read except the test {n0.split or 'contexts'}; training positions' n-gram features leave their own "
                 f"{'document' if n0.split == 'documents' else 'context'} out. The planted control appends to the "
                 f"residual a noisy one-hot of the target, amplitude set to add about {res.config.needed_gain:g} nats "
                 f"to the base, and runs the same nested comparison.")
    orders = sorted(next(iter(res.offsets.values())).ngram)
    rep.table(["token"] + [f"{n}-gram acc" for n in orders] + ["n (val)"],
              [[name] + [r.ngram[n].mean for n in orders] + [r.ngram_order] for name, r in res.offsets.items()])
    rep.reproduce("lookahead", res.config)
    return rep.save(out)

"""The lenses report, and the lens section the repurposing report shares."""
from __future__ import annotations

from pathlib import Path

from superpos.experiment.report import Report, band
from superpos.hypotheses.lenses.result import LensComparison, LensesResult


def add_lens_section(rep: Report, lenses: LensComparison, layers: list[int]) -> None:
    """Figure (KL, top-1, CE per layer with CIs) and table for a ``compare_lenses`` result."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, scores in (("logit lens", lenses.logit_lens), ("tuned lens", lenses.tuned_lens)):
        for ax, key in zip(axes, ("kl", "top1", "ce")):
            band(ax, layers, getattr(scores, key), name)
    axes[0].set(xlabel="residual layer", ylabel="KL(final ‖ lens) [nats]", yscale="symlog")
    axes[1].set(xlabel="residual layer", ylabel="top-1 agreement with the output")
    axes[2].set(xlabel="residual layer", ylabel="CE on the true next token [nats]")
    for ax in axes:
        ax.legend(fontsize=8)
    rep.figure(fig, "lenses.png", f"Logit lens vs tuned lens on {lenses.held_out_positions:,} held-out positions "
               f"(contexts not used to train the tuned lens), 95% CIs over contexts")
    t = lenses.training
    if t.get("validation_kl"):  # lenses trained since the held-out stopping rule
        v = t["validation_kl"]
        rep.text(f"Tuned lens: started at the least-squares map to the last layer, then Adam for {t['steps_run']} of at "
                 f"most {t['steps']} steps; mean KL on held-out training contexts {v[0]['kl']:.3f} at the start, "
                 f"{t['best_validation_kl']:.3f} kept" + (" (stopped: it no longer fell)." if t["converged"] else
                                                          " (the step budget ran out while it still fell)."))
    lo, tu = lenses.logit_lens, lenses.tuned_lens
    rep.table(["layer", "KL logit lens", "KL tuned lens", "top-1 logit", "top-1 tuned", "CE logit", "CE tuned"],
              [[layer, lo.kl.mean[i], tu.kl.mean[i], lo.top1.mean[i], tu.top1.mean[i], lo.ce.mean[i], tu.ce.mean[i]]
               for i, layer in enumerate(layers)])


def write_report(res: LensesResult, out: Path) -> Path:
    """report.md/.html and figures of a lenses run."""
    rep = Report(f"Logit lens vs tuned lens — {res.model}")
    rep.verdict(res.verdict, res)
    rep.text(f"{res.n_positions:,} positions from {res.n_contexts} contexts; the tuned lens (saved in "
             f"{Path(out) / 'tuned_lens'}) trained on {res.lenses.train_positions:,} positions.")
    add_lens_section(rep, res.lenses, res.layers)
    rep.reproduce("lenses", res.config)
    return rep.save(out)

"""``superpos run lenses``: the computation (the protocol judges, saves and reports)."""
from __future__ import annotations

from superpos.hypotheses.lenses.config import LensesConfig
from superpos.hypotheses.lenses.lens import compare_lenses
from superpos.hypotheses.lenses.result import LensesResult


def run(cfg: LensesConfig) -> LensesResult:
    """``superpos run lenses``: train + save a tuned lens, compare with the logit lens, write a report."""
    from superpos.hypotheses.common import open_experiment
    from superpos.model.residuals import sample_residuals

    out, lm, tokens_NC = open_experiment(cfg)
    sample = sample_residuals(lm, tokens_NC, cfg.per_context, seed=cfg.seed)
    _, comparison = compare_lenses(lm, sample, steps=cfg.steps, seed=cfg.seed, n_boot=cfg.n_boot,
                                   save_to=out / "tuned_lens")
    lo, tu = comparison.logit_lens.kl.mean, comparison.tuned_lens.kl.mean
    t1_lo, t1_tu = comparison.logit_lens.top1.mean, comparison.tuned_lens.top1.mean
    summary = [f"{'layer':>5} {'KL logit':>9} {'KL tuned':>9} {'top1 logit':>10} {'top1 tuned':>10}"]
    summary += [f"{layer:>5} {lo[i]:>9.3f} {tu[i]:>9.3f} {t1_lo[i]:>10.3f} {t1_tu[i]:>10.3f}"
                for i, layer in enumerate(sample.layers)]
    res = LensesResult(config=cfg, model=lm.name, n_positions=sample.n_positions, n_contexts=len(tokens_NC),
                       layers=sample.layers, lenses=comparison, summary=summary)
    return res

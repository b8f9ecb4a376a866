"""The verdict of ``superpos run lookahead``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

from superpos.experiment.result import Verdict
from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.lookahead.result import LookaheadResult


def verdict(res: LookaheadResult) -> Verdict:
    """YES when, for every offset beyond +1, the probe at the layer chosen on validation contexts beats both
    context-aware baselines (the n-gram with n chosen on validation, and a probe on the model's own next-token
    distribution) on test contexts, each paired gain's CI above 0."""
    lines = []
    for name, r in res.offsets.items():
        grams = " / ".join(f"{r.ngram[n].mean:.3f}" for n in sorted(r.ngram))
        lines.append(f"token {name}: probe at layer {r.best_layer} (chosen on validation) {r.best_layer_acc.mean:.3f} "
                     f"vs n-grams (n = {', '.join(map(str, sorted(r.ngram)))}) {grams} and a probe on the model's "
                     f"own next-token distribution {r.model_guess.mean:.3f}; gain over the {r.ngram_order}-gram "
                     f"(n chosen on validation) {fmt_ci(r.gain_over_ngram)}, over the guess {fmt_ci(r.gain_over_guess)}")
    later = {name: r for name, r in res.offsets.items() if name != "+1"}
    beyond = {name: r.gain.lo > 0 for name, r in later.items()}
    answer = "YES" if beyond and all(beyond.values()) else "PARTLY" if any(beyond.values()) else "NO"
    gains = "; ".join(f"{name}: {fmt_ci(r.gain_over_ngram)} over the {r.ngram_order}-gram, {fmt_ci(r.gain_over_guess)} "
                      f"over the guess" for name, r in later.items())
    head = (f"Lookahead beyond n-grams and the model's own guess: {answer} — the residual at i, read at the layer "
            f"chosen on validation contexts, beats both baselines on test contexts for "
            f"{', '.join(n for n, ok in beyond.items() if ok) or 'no later token'} ({gains}).")
    return Verdict(headline=head, criteria=lines)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    return {f"gain {k} (the smaller of the two)": fmt_ci(r.gain) for k, r in res.offsets.items()}

"""The verdict of ``superpos run lookahead``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

from superpos.experiment.result import Verdict
from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.lookahead.result import MIN_DOCUMENTS, LookaheadResult, LookaheadTarget
from superpos.stats import MIN_CLUSTERS, min_detectable


def planted(r: LookaheadTarget):
    """The positive control's interval: the probe with [residual + a weak noisy one-hot of the target] (planted to
    add about --needed-gain nats) minus the probe with the residual alone, paired per position; in results from
    before the null control, its gain over the base. None when not run."""
    n = r.nested
    return n.planted_beyond if n.planted_beyond is not None else n.planted_gain


def planted_shown(r: LookaheadTarget) -> bool | None:
    """The positive control is detected: its interval (``planted``) lies above 0; None when not run."""
    p = planted(r)
    return None if p is None else bool(p.lo > 0)


def decisive(r: LookaheadTarget):
    """The interval the verdict reads: the gain beyond the shuffled-residual null (paired per position) where the
    result has it, else the gain over the base."""
    n = r.nested
    return n.beyond_null if n.beyond_null is not None else n.gain


def _base(n) -> str:
    """What the base probe reads: the embedding of token i joined it with the layer-0 calibration."""
    return ("[n-grams + the model's log-probs at i" + (" + the embedding of token i]" if n.embedding_gain is not None
                                                       else "]"))


def _nested_line(name: str, r: LookaheadTarget) -> str:
    n = r.nested
    return (f"token {name}: {_base(n)} {n.base_loglik.mean:.3f} nats, with the residual "
            f"at layer {n.layer} (chosen on validation) {n.full_loglik.mean:.3f}: gain {fmt_ci(n.gain)} nats per "
            f"position; top-1 accuracy {n.base_acc.mean:.3f} → {n.full_acc.mean:.3f} (gain {fmt_ci(n.acc_gain)}) "
            f"against the floor, {n.floor_name}, {n.floor.mean:.3f}; back-off n-grams (n = "
            f"{', '.join(map(str, sorted(r.ngram)))}) {' / '.join(f'{r.ngram[g].mean:.3f}' for g in sorted(r.ngram))} "
            f"({n.test_positions:,} test positions)")


def _old_line(name: str, r: LookaheadTarget) -> str:
    grams = " / ".join(f"{r.ngram[n].mean:.3f}" for n in sorted(r.ngram))
    return (f"token {name}: probe at layer {r.best_layer} (chosen on validation) {r.best_layer_acc.mean:.3f} "
            f"vs n-grams (n = {', '.join(map(str, sorted(r.ngram)))}) {grams} and a probe on the model's "
            f"own next-token distribution {r.model_guess.mean:.3f}; gain over the {r.ngram_order}-gram "
            f"(n chosen on validation) {fmt_ci(r.gain_over_ngram)}, over the guess {fmt_ci(r.gain_over_guess)}")


def verdict(res: LookaheadResult) -> Verdict:
    """YES when, for every offset beyond +1, the nested gain — the log-likelihood of the token at i + k under a
    logistic probe on [n-gram features + the model's log-probs at i + the embedding of token i (layer 0; absent
    in older results)] plus the residual at i (a later layer, chosen on validation), minus the same probe without
    the residual, paired per test position — and, where the result has it, that gain minus the same comparison's
    with the residual's rows shuffled across positions (the null control, paired per position) have their
    intervals over test contexts above 0; PARTLY for some such offsets; NO for none. INSUFFICIENT POWER instead of any answer when the
    intervals rest on fewer than ``MIN_CLUSTERS`` test contexts, and instead of NO when the minimum detectable gain
    exceeds --needed-gain at every later offset, when the planted control (the same comparison with a weak noisy
    one-hot of the target appended to the residual) is not detected (or not run) at some later offset, or when a
    fit did not converge. A planted control whose interval lies below 0 is named as such: the probe then reads a
    block that carries the target as a loss (biased low at this size), which more data of the same kind need not
    fix, and no interval of the real gain rules anything out. A result without the nested comparison (an older
    run) says so and gives the separate tests it held instead."""
    later = {name: r for name, r in res.offsets.items() if name != "+1"}
    if not all(r.nested is not None for r in res.offsets.values()):
        lines = [_old_line(name, r) for name, r in res.offsets.items()]
        beyond = {name: r.gain is not None and r.gain.lo > 0 for name, r in later.items()}
        answer = "YES" if beyond and all(beyond.values()) else "PARTLY" if any(beyond.values()) else "NO"
        gains = "; ".join(f"{name}: {fmt_ci(r.gain_over_ngram)} over the {r.ngram_order}-gram, "
                          f"{fmt_ci(r.gain_over_guess)} over the guess" for name, r in later.items())
        head = (f"Lookahead: NOT TESTED — this result predates the nested comparison ([n-grams + the model's "
                f"log-probs at i] with and without the residual), which was not run. Its two separate ridge-probe "
                f"tests read {answer} ({gains}), but they compare two probes fitted apart, not one probe with and "
                f"without the residual. Rerun `superpos run lookahead`.")
        return Verdict(headline=head, criteria=lines)
    lines = [_nested_line(name, r) for name, r in res.offsets.items()]
    if res.model_top1 is not None:
        lines.append(f"The model's own top guess (whole vocabulary) names the token at i+1 "
                     f"{100 * res.model_top1.mean:.1f}% [{100 * res.model_top1.lo:.1f}, "
                     f"{100 * res.model_top1.hi:.1f}] of the time on test contexts; n-grams counted on "
                     f"{res.ngram_tokens:,} tokens (no test context among them).")
    beyond = {name: r.nested.gain.lo > 0 and decisive(r).lo > 0 for name, r in later.items()}
    answer = "YES" if beyond and all(beyond.values()) else "PARTLY" if any(beyond.values()) else "NO"
    need = res.config.needed_gain
    mde = {name: min_detectable(decisive(r)) for name, r in later.items()}
    shown = {name: planted_shown(r) for name, r in later.items()}
    nulled = bool(later) and all(r.nested.beyond_null is not None for r in later.values())
    # the calibration's first fit (n-grams alone) is reported, not judged: the gain does not rest on it
    unconverged = {name: [f for f, ok in (r.nested.converged or {}).items() if not ok and f != "n-grams"]
                   for name, r in later.items()}
    clusters = [r.nested.test_contexts for r in res.offsets.values() if r.nested.test_contexts is not None]
    n = next(iter(res.offsets.values())).nested
    what = "gain beyond the shuffled null" if nulled else "nested gain"
    lines.append(f"Power: minimum detectable {what} (80 % power) "
                 + ", ".join(f"{name} {v:.4f}" for name, v in mde.items())
                 + f" nats against the {need:g} the question needs; the planted control (the same comparison with a "
                   f"noisy one-hot of the target, planted to add about {need:g} nats, appended to the residual"
                 + (", read against the residual alone" if nulled else "") + ") "
                 + ", ".join(f"{name} {'not run' if planted(r) is None else fmt_ci(planted(r))}"
                             for name, r in later.items())
                 + f" nats: {'detected' if shown and all(shown.values()) else 'NOT detected'}"
                 + ("" if not shown or all(v is not None for v in shown.values()) else " (not run)") + ".")
    if nulled:
        lines.append("Null control: the same comparison with the residual's rows shuffled across positions (its "
                     "covariance, no relation to the target) changes the log-likelihood by "
                     + ", ".join(f"{fmt_ci(r.nested.null_gain)} ({name}"
                                 + ("" if not r.nested.null_draws else
                                    f"; mean over {len(r.nested.null_draws)} shuffles, each "
                                    + " / ".join(f"{v:+.3f}" for v in r.nested.null_draws)) + ")"
                                 for name, r in later.items())
                     + " nats: what fitting a block of this size adds by itself. The gain read is beyond it, paired "
                       "per position: " + ", ".join(f"{fmt_ci(r.nested.beyond_null)} ({name})"
                                                    for name, r in later.items()) + ".")
    if all(r.nested.embedding_gain is not None for r in later.values()) and later:
        lines.append("Calibration at layer 0, the embedding of token i, where no later token can have been worked "
                     "out: added to [n-grams + the model's log-probs at i] it raises the log-likelihood by "
                     + ", ".join(f"{fmt_ci(r.nested.embedding_gain)} nats ({name})" for name, r in later.items())
                     + ": what the input token itself adds to the n-gram features, not lookahead. The embedding is "
                       "in the base, so every gain above is read beyond it, and layer 0 is left out of the layer "
                       "screen.")
    if any(r.nested.converged is not None for r in res.offsets.values()):
        lines.append("Fits: the probe with the residual starts at the base's solution (the base's L2 on the shared "
                     "block) so the two are nested; "
                     + "; ".join(f"{name} {' / '.join(r.nested.converged)} "
                                 + " / ".join(f"{r.nested.iterations[f]} it. {'converged' if ok else 'NOT converged'}"
                                              for f, ok in r.nested.converged.items())
                                 for name, r in res.offsets.items() if r.nested.converged is not None) + ".")
    if n.split is not None:
        lines.append(f"Split by {n.split}: {n.test_units} held out for test, read over {min(clusters)} test contexts"
                     + ("" if n.split == "documents" else
                        f" (the contexts hold fewer than {MIN_DOCUMENTS} documents: the n-gram tables and the training contexts "
                        f"may hold the rest of a test context's document)") + ".")
    few = bool(clusters) and min(clusters) < MIN_CLUSTERS
    reasons = []
    if few:
        reasons.append(f"the intervals rest on {min(clusters)} test contexts, fewer than {MIN_CLUSTERS}")
    if answer == "NO":
        if bool(mde) and all(v > need for v in mde.values()):
            reasons.append(f"minimum detectable gain above {need:g} nats")
        if not shown or not all(shown.values()):
            reasons.append("the planted control is not " + ("run" if None in shown.values() else "detected"))
            below = [name for name, r in later.items() if planted(r) is not None and planted(r).hi < 0]
            if below:
                reasons.append(f"it reads below 0 at {', '.join(below)}: the probe counts a block that carries the "
                               f"target as a loss, so the estimate is biased low and its interval rules nothing out")
        below_null = [name for name, r in later.items() if r.nested.beyond_null is not None
                      and r.nested.beyond_null.hi < 0]
        if below_null:
            reasons.append(f"the real residual reads below its shuffled null at {', '.join(below_null)}: what the "
                           f"fit adds by itself differs between them, so that interval rules nothing out")
        if any(unconverged.values()):
            reasons.append("a fit did not converge: " + ", ".join(f"{name} {', '.join(f)}"
                                                                for name, f in unconverged.items() if f))
    weak = bool(reasons)
    gains = "; ".join(f"{name}: {fmt_ci(r.nested.gain)} nats"
                      + (f", {fmt_ci(r.nested.beyond_null)} beyond the shuffled null" if nulled else "")
                      + f" (layer {r.nested.layer}; accuracy "
                      f"{r.nested.full_acc.mean:.3f} vs {r.nested.base_acc.mean:.3f} without, floor "
                      f"{r.nested.floor.mean:.3f})" for name, r in later.items())
    if weak:
        answer = f"INSUFFICIENT POWER ({'; '.join(reasons)}; the gains alone would read {answer})"
    emb = all(r.nested.embedding_gain is not None for r in later.values()) and bool(later)
    beyond_what = ("n-grams, the model's own next-token distribution and the input token" if emb else
                   "n-grams and the model's own next-token distribution")
    head = (f"Lookahead beyond {beyond_what}: "
            f"{answer} — adding the residual at i to a logistic probe on "
            f"[n-gram features + the model's log-probs at i{' + the embedding of token i' * emb}] raises the held-out "
            f"log-likelihood of the later token for {', '.join(n for n, ok in beyond.items() if ok) or 'no offset'} "
            f"({gains}).")
    return Verdict(headline=head, criteria=lines, insufficient_power=weak)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    out = {}
    for k, r in res.offsets.items():
        if r.nested is not None:
            out[f"nested gain {k} (nats)"] = fmt_ci(r.nested.gain)
            if r.nested.beyond_null is not None:
                out[f"beyond the shuffled null {k} (nats)"] = fmt_ci(r.nested.beyond_null)
        elif r.gain is not None:
            out[f"gain {k} (the smaller of the two)"] = fmt_ci(r.gain)
    return out

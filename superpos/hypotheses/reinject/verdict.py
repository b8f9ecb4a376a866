"""The verdict of ``superpos run reinject``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.reinject.result import ReinjectResult, ReinjectVerdict
from superpos.stats import min_detectable

MATCHED = ("temperature", "layer mean")  # the nulls that move the output distribution as much as the setting


def _band_list(band, names) -> str:
    return ", ".join(f"{name} {fmt_ci(band.at(i))}" for i, name in enumerate(names))


def band_names(n: int) -> list[str]:
    """Names of n frequency bands, rare → frequent."""
    return {1: ["all"], 2: ["rarer", "frequent"], 3: ["rare", "middle", "frequent"]}.get(
        n, [f"band {k + 1}" for k in range(n)])


def judging_contexts(res: ReinjectResult) -> int:
    """How many evaluation contexts judge the chosen setting (the half that did not choose it)."""
    return res.config.contexts - res.config.contexts // 2


def unmatched(res: ReinjectResult) -> dict[str, str]:
    """The matched nulls of the chosen setting that are not matched where the verdict reads them: null name -> why
    (entropy in the judging half's most surprising fifth further than ``entropy_tolerance`` from the setting's, or
    a result that matched them on the overall mean only)."""
    tol, out = res.config.entropy_tolerance, {}
    for name in MATCHED:
        m = res.matched[res.chosen][name]
        if m.entropy_fifths is None or res.entropy_fifths is None:
            out[name] = "matched on the overall mean entropy only, not within surprisal fifths"
        else:
            gap = m.entropy_fifths[-1] - res.entropy_fifths[res.chosen][-1]
            if not abs(gap) <= tol:
                out[name] = f"its entropy in the most surprising fifth is {gap:+.3f} nats from the setting's"
    return out


def verdict(res: ReinjectResult) -> ReinjectVerdict:
    """Two answers. The premise is MET when, at the re-injection layers, the most-surprising fifth's decodability
    gap (vs the least-surprising fifth) is more negative than right after the first block, CI below 0 — and, where
    the result has it, also with each token-frequency band's mean removed (otherwise "MET across token types only",
    counted as not met). Re-injection is SUPPORTED when the setting chosen on the selection half, on the other
    half, in the most-surprising fifth: lowers the loss (CI below 0); does better than the same move toward another
    token's representation (paired CI below 0); and beats both matched nulls — the temperature that flattens the
    output as much, and the same move toward the layer's mean residual, tempered as much — with the paired
    advantage's CI above 0, each null matched (its entropy in that fifth within ``entropy_tolerance`` of the
    setting's); and the reference contexts that give each token's representation share no document with the evaluation
    contexts (else a beaten null reads NOT SUPPORTED, saying why). Otherwise INSUFFICIENT POWER when the judging half has fewer than ``min_contexts`` contexts, or when
    nothing rules re-injection out (no matched null's advantage CI lies wholly below ``needed_advantage``, and the
    setting does not raise the loss there) while the run's minimum detectable advantage (the larger over the
    matched nulls not yet beaten; over both when both are) exceeds ``needed_advantage``; else NOT SUPPORTED. A
    result from before the matched nulls is NOT SUPPORTED for want of them (it says so)."""
    p, j, cfg = res.premise, res.judged, res.config
    across = p.late_minus_early.hi < 0
    met = bool(across and (p.within is None or p.within.hi < 0))
    i1, late = p.layers.index(1), [p.layers.index(layer) for layer in res.layers]
    d0, d1 = p.decodable[0], p.decodable[1]
    top, d, vn = j.bins[-1], j.top_minus_bottom, res.vs_null
    have = res.vs_matched is not None and all(name in res.vs_matched for name in MATCHED)
    adv = {name: res.vs_matched[name].by_fifth.at(-1) for name in MATCHED} if have else {}
    beaten = [name for name in MATCHED if have and adv[name].lo > 0]
    matching = [name for name in MATCHED if have and adv[name].lo <= 0]
    loose = unmatched(res) if have else {}
    beats = bool(top.hi < 0 and vn.hi < 0 and have and len(beaten) == len(MATCHED) and not loose)
    # a token's representation from the very documents judged may carry what follows it there: not re-injection
    apart = res.shared_documents == 0
    helps = beats and apart
    need, n_judge = cfg.needed_advantage, judging_contexts(res)
    unbeaten = matching or list(MATCHED)  # a null already beaten needs no more power against it
    mde = max(min_detectable(adv[name]) for name in unbeaten) if have else float("nan")
    ruled_out = have and (top.lo > 0 or any(adv[name].hi < need for name in MATCHED if name not in loose))
    few = n_judge < cfg.min_contexts
    weak = bool(have and not beats and (few or (not ruled_out and not mde <= need)))
    lines = [f"Calibration: at layer 0 the representation is the embedding; decodability {d0.mean[0]:.3f} (least "
             f"surprising fifth) / {d0.mean[-1]:.3f} (most); after the first block {d1.mean[0]:.3f} / "
             f"{d1.mean[-1]:.3f} (coverage {100 * p.coverage:.0f}% of positions).",
             f"Most − least surprising fifth, decodability: {fmt_ci(p.gap.at(i1))}"
             f" at layer 1, " + ", ".join(f"{fmt_ci(p.gap.at(i))} at layer "
                                         f"{p.layers[i]}" for i in late) + ".",
             f"Late gap minus layer-1 gap: {fmt_ci(p.late_minus_early)} (premise {'MET' if met else 'NOT MET'})."]
    if p.within is not None:
        lines.append(f"With each token-frequency band's mean decodability removed (within token types, bands "
                     f"pooled): late gap minus layer-1 gap {fmt_ci(p.within)}"
                     + (" — MET across token types only" if across and not met else "") + ".")
    if p.within_bands is not None:
        lines.append(f"The same within token-frequency bands (reference-context counts split at "
                     f"{', '.join(f'{e:g}' for e in res.band_edges or [])}): "
                     f"{_band_list(p.within_bands, band_names(len(p.within_bands.mean)))}.")
    lines.append(f"Chosen on half the contexts: {res.chosen}; on the other half Δ loss {fmt_ci(top)} nats in the most-"
                 f"surprising fifth, {fmt_ci(j.bins[0])} in the least; difference {fmt_ci(d)} (what any flattening "
                 f"of the output also does: shown, not required); minus the same move toward another token's "
                 f"representation (the deranged null), paired, most-surprising fifth {fmt_ci(vn)}.")
    if have:
        ent, m = res.entropy or {}, res.matched[res.chosen]
        lines.append(f"Mean output entropy on the selection half: clean {ent.get('clean', float('nan')):.3f}, "
                     f"{res.chosen} {ent.get(res.chosen, float('nan')):.3f}, temperature null (T = "
                     f"{m['temperature'].parameter:.3f}) {m['temperature'].entropy:.3f}, layer-mean null "
                     f"{m['layer mean'].entropy:.3f} nats.")
        if res.entropy_fifths is not None:
            lines.append(f"Matched within surprisal fifths (T per fifth of each half): in the judging half's most "
                         f"surprising fifth, entropy {res.entropy_fifths[res.chosen][-1]:.3f} nats for "
                         f"{res.chosen}, {m['temperature'].entropy_fifths[-1]:.3f} for the temperature null (T = "
                         f"{m['temperature'].temperatures[1][-1]:.3f}), {m['layer mean'].entropy_fifths[-1]:.3f} for "
                         f"the layer-mean null (T = {m['layer mean'].temperatures[1][-1]:.3f}); tolerance "
                         f"{cfg.entropy_tolerance:g} nats.")
        for name, why in loose.items():
            lines.append(f"The {name} null is not matched ({why}): re-injection cannot be SUPPORTED against it.")
        lines.append("Power: minimum detectable advantage (80 % power) in the most surprising fifth "
                     + ", ".join(f"{min_detectable(adv[name]):.4f} over the {name} null" for name in MATCHED)
                     + f" nats, against the {need:g} the question needs; {n_judge} judging contexts (at least "
                       f"{cfg.min_contexts} needed).")
        for name in MATCHED:
            c = res.vs_matched[name]
            names = band_names(len(c.by_band.mean))
            lines.append(f"Advantage over the {name} null, Δ(null) − Δ(true), judging half: most-surprising fifth "
                         f"{fmt_ci(adv[name])}, least {fmt_ci(c.by_fifth.at(0))}; by frequency band "
                         f"{_band_list(c.by_band, names)}; most-surprising fifth within bands "
                         f"{_band_list(c.top_by_band, names)}.")
    else:
        lines.append("Matched nulls not run: this result predates the temperature-matched and the layer-mean nulls, "
                     "so re-injection cannot be SUPPORTED from it.")
    lines.append("Reference contexts (each token's representation): " + (
        "read just before the evaluation contexts, so they may share their documents (a result from before the split "
        "by document)" if res.shared_documents is None else "no document in common with the evaluation contexts"
        if res.shared_documents == 0 else f"{res.shared_documents} document(s) in common with the evaluation "
        f"contexts (the corpus holds too few others)") + "; SUPPORTED needs none in common.")
    lines.append(f"The same intervention in the sampler's KV-cached loop: per-position losses within "
                 f"{res.cached.max_abs_diff:.1e} of whole windows ({res.cached.contexts} × {res.cached.tokens} "
                 f"tokens); mean Δ loss there {res.cached.delta:+.4f} nats.")
    if res.reconcile is not None:
        lines.append("From the cached check to the overall Δ (chosen setting, Δ loss): " + "; ".join(
            f"{k} {fmt_ci(v)}" for k, v in res.reconcile.steps.items()) + ".")
    lines += [f"{k}: Δ loss overall {v.overall.mean:+.4f}; most-surprising fifth {v.bins[-1].mean:+.4f}, least "
              f"{v.bins[0].mean:+.4f}" for k, v in res.effects.items()]
    opposite = p.late_minus_early.lo > 0
    if weak:
        answer = "INSUFFICIENT POWER" + (f" (the judging half has {n_judge} contexts, fewer than {cfg.min_contexts})"
                                         if few else f" (minimum detectable advantage {mde:.4f} nats over the "
                                                     f"{' and the '.join(unbeaten)} null"
                                                     f"{'s' if len(unbeaten) > 1 else ''}, above the {need:g} the "
                                                     f"question needs)")
    else:
        answer = "SUPPORTED" if helps else "NOT SUPPORTED"
        if beats and not apart:
            answer += (" (it beats every null, but " + (
                "its reference contexts were the ones read just before the judged contexts, in their documents" if
                res.shared_documents is None else f"its reference contexts read {res.shared_documents} of the judged "
                f"contexts' documents") + ": the true token's representation may carry what follows it in the very "
                "document judged)")
    premise_word = "MET" if met else "MET across token types only" if across else "NOT MET"
    head = (f"Premise {premise_word}: late layers (at {res.layers}) "
            f"{'do' if met else 'do not'} lose track of surprising input tokens more than early ones"
            f"{' within token types' if across and not met else ''}"
            f"{' — surprising tokens stay the more decodable ones' if opposite else ''} (gap difference "
            f"{fmt_ci(p.late_minus_early)}"
            f"{'' if p.within is None else f'; within token types {fmt_ci(p.within)}'}). Re-injection {answer}: moving late "
            f"residuals toward the true token ({res.chosen}, chosen on held-apart contexts) changes the loss on the "
            f"following token by {fmt_ci(top)} nats where that token was most surprising (minus the same move toward "
            f"another token, paired: {fmt_ci(vn)}")
    if have:
        head += "; advantage over " + ", ".join(f"the {name} null {fmt_ci(adv[name])}" for name in MATCHED)
        if matching:
            head += f" — the true token does not beat the {' and the '.join(matching)} null" \
                    f"{'s' if len(matching) > 1 else ''} (interval reaching 0)"
        if loose:
            head += f"; the {' and the '.join(loose)} null{'s' if len(loose) > 1 else ''} not matched in entropy"
        head += ")."
    else:
        head += f"; vs least surprising: {fmt_ci(d)}) — not judged against the matched nulls (temperature, layer " \
                f"mean), which this result predates; without them its pattern is also what flattening the output does."
    return ReinjectVerdict(headline=head, criteria=lines, premise_met=met, chosen=res.chosen, supported=helps,
                           insufficient_power=weak)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    out = {"premise: late − early decodability gap": fmt_ci(res.premise.late_minus_early),
           "chosen setting": res.chosen, "Δ loss, most surprising fifth (held out)": fmt_ci(res.judged.bins[-1]),
           "most − least surprising": fmt_ci(res.judged.top_minus_bottom)}
    for name in MATCHED:
        c = (res.vs_matched or {}).get(name)
        out[f"advantage over the {name} null, most surprising fifth"] = (
            fmt_ci(c.by_fifth.at(-1)) if c is not None else "not run")
    return out


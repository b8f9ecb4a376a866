"""The verdict of ``superpos run reinject``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.reinject.result import ReinjectResult, ReinjectVerdict

MATCHED = ("temperature", "layer mean")  # the nulls that move the output distribution as much as the setting


def _band_list(band, names) -> str:
    return ", ".join(f"{name} {fmt_ci(band.at(i))}" for i, name in enumerate(names))


def band_names(n: int) -> list[str]:
    """Names of n frequency bands, rare → frequent."""
    return {1: ["all"], 2: ["rarer", "frequent"], 3: ["rare", "middle", "frequent"]}.get(
        n, [f"band {k + 1}" for k in range(n)])


def verdict(res: ReinjectResult) -> ReinjectVerdict:
    """Two answers. The premise is MET when, at the re-injection layers, the most-surprising fifth's decodability
    gap (vs the least-surprising fifth) is more negative than right after the first block, CI below 0.
    Re-injection is SUPPORTED when the setting chosen on the selection half, on the other half, in the most-
    surprising fifth: lowers the loss (CI below 0); does better than the same move toward another token's
    representation (paired CI below 0); and beats both matched nulls — the temperature that flattens the output as
    much, and the same move toward the layer's mean residual — with the paired advantage's CI above 0. A result
    from before the matched nulls is NOT SUPPORTED for want of them (it says so)."""
    p, j = res.premise, res.judged
    met = p.late_minus_early.hi < 0
    i1, late = p.layers.index(1), [p.layers.index(layer) for layer in res.layers]
    d0, d1 = p.decodable[0], p.decodable[1]
    top, d, vn = j.bins[-1], j.top_minus_bottom, res.vs_null
    have = res.vs_matched is not None and all(name in res.vs_matched for name in MATCHED)
    adv = {name: res.vs_matched[name].by_fifth.at(-1) for name in MATCHED} if have else {}
    beaten = [name for name in MATCHED if have and adv[name].lo > 0]
    matching = [name for name in MATCHED if have and adv[name].lo <= 0]
    helps = bool(top.hi < 0 and vn.hi < 0 and have and len(beaten) == len(MATCHED))
    lines = [f"Calibration: at layer 0 the representation is the embedding; decodability {d0.mean[0]:.3f} (least "
             f"surprising fifth) / {d0.mean[-1]:.3f} (most); after the first block {d1.mean[0]:.3f} / "
             f"{d1.mean[-1]:.3f} (coverage {100 * p.coverage:.0f}% of positions).",
             f"Most − least surprising fifth, decodability: {fmt_ci(p.gap.at(i1))}"
             f" at layer 1, " + ", ".join(f"{fmt_ci(p.gap.at(i))} at layer "
                                         f"{p.layers[i]}" for i in late) + ".",
             f"Late gap minus layer-1 gap: {fmt_ci(p.late_minus_early)} (premise {'MET' if met else 'NOT MET'})."]
    if p.within_bands is not None:
        lines.append(f"The same within token-frequency bands (reference-context counts split at "
                     f"{', '.join(f'{e:g}' for e in res.band_edges or [])}): "
                     f"{_band_list(p.within_bands, band_names(len(p.within_bands.mean)))}.")
    lines.append(f"Chosen on half the contexts: {res.chosen}; on the other half Δ loss {fmt_ci(top)} nats in the most-"
                 f"surprising fifth, {fmt_ci(j.bins[0])} in the least; difference {fmt_ci(d)} (what any flattening "
                 f"of the output also does: shown, not required); against the same move toward another token's "
                 f"representation (the deranged null), most-surprising fifth {fmt_ci(vn)}.")
    if have:
        ent, m = res.entropy or {}, res.matched[res.chosen]
        lines.append(f"Mean output entropy on the selection half: clean {ent.get('clean', float('nan')):.3f}, "
                     f"{res.chosen} {ent.get(res.chosen, float('nan')):.3f}, temperature null (T = "
                     f"{m['temperature'].parameter:.3f}) {m['temperature'].entropy:.3f}, layer-mean null "
                     f"{m['layer mean'].entropy:.3f} nats.")
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
    lines.append(f"The same intervention in the sampler's KV-cached loop: per-position losses within "
                 f"{res.cached.max_abs_diff:.1e} of whole windows ({res.cached.contexts} × {res.cached.tokens} "
                 f"tokens); mean Δ loss there {res.cached.delta:+.4f} nats.")
    if res.reconcile is not None:
        lines.append("From the cached check to the overall Δ (chosen setting, Δ loss): " + "; ".join(
            f"{k} {fmt_ci(v)}" for k, v in res.reconcile.steps.items()) + ".")
    lines += [f"{k}: Δ loss overall {v.overall.mean:+.4f}; most-surprising fifth {v.bins[-1].mean:+.4f}, least "
              f"{v.bins[0].mean:+.4f}" for k, v in res.effects.items()]
    opposite = p.late_minus_early.lo > 0
    head = (f"Premise {'MET' if met else 'NOT MET'}: late layers (at {res.layers}) "
            f"{'do' if met else 'do not'} lose track of surprising input tokens more than early ones"
            f"{' — surprising tokens stay the more decodable ones' if opposite else ''} (gap difference "
            f"{fmt_ci(p.late_minus_early)}). Re-injection {'SUPPORTED' if helps else 'NOT SUPPORTED'}: moving late "
            f"residuals toward the true token ({res.chosen}, chosen on held-apart contexts) changes the loss on the "
            f"following token by {fmt_ci(top)} nats where that token was most surprising (vs the same move toward "
            f"another token: {fmt_ci(vn)}")
    if have:
        head += "; advantage over " + ", ".join(f"the {name} null {fmt_ci(adv[name])}" for name in MATCHED)
        if matching:
            head += f" — the {' and the '.join(matching)} null{'s' if len(matching) > 1 else ''} " \
                    f"{'do' if len(matching) > 1 else 'does'} at least as well"
        head += ")."
    else:
        head += f"; vs least surprising: {fmt_ci(d)}) — not judged against the matched nulls (temperature, layer " \
                f"mean), which this result predates; without them its pattern is also what flattening the output does."
    return ReinjectVerdict(headline=head, criteria=lines, premise_met=bool(met), chosen=res.chosen,
                           supported=helps)


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


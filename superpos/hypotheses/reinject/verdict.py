"""The verdict of ``superpos run reinject``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.reinject.result import ReinjectResult, ReinjectVerdict


def verdict(res: ReinjectResult) -> ReinjectVerdict:
    """Two answers. The premise is MET when, at the re-injection layers, the most-surprising fifth's decodability
    gap (vs the least-surprising fifth) is more negative than right after the first block, CI below 0. The
    sampler is SUPPORTED when the setting chosen on the selection half lowers the most-surprising fifth's loss on
    the other half, and more than the least-surprising fifth's (both CIs below 0)."""
    p, j = res.premise, res.judged
    met = p.late_minus_early.hi < 0
    i1, late = p.layers.index(1), [p.layers.index(layer) for layer in res.layers]
    d0, d1 = p.decodable[0], p.decodable[1]
    top, d, vn = j.bins[-1], j.top_minus_bottom, res.vs_null
    helps = bool(top.hi < 0 and d.hi < 0 and vn.hi < 0)
    lines = [f"Calibration: at layer 0 the representation is the embedding; decodability {d0.mean[0]:.3f} (least "
             f"surprising fifth) / {d0.mean[-1]:.3f} (most); after the first block {d1.mean[0]:.3f} / "
             f"{d1.mean[-1]:.3f} (coverage {100 * p.coverage:.0f}% of positions).",
             f"Most − least surprising fifth, decodability: {fmt_ci(p.gap.at(i1))}"
             f" at layer 1, " + ", ".join(f"{fmt_ci(p.gap.at(i))} at layer "
                                         f"{p.layers[i]}" for i in late) + ".",
             f"Late gap minus layer-1 gap: {fmt_ci(p.late_minus_early)} (premise {'MET' if met else 'NOT MET'}).",
             f"Chosen on half the contexts: {res.chosen}; on the other half Δ loss {fmt_ci(top)} nats in the most-"
             f"surprising fifth, {fmt_ci(j.bins[0])} in the least; difference {fmt_ci(d)}; against the same move "
             f"toward another token's representation (the null), most-surprising fifth {fmt_ci(vn)}.",
             f"The same intervention in the sampler's KV-cached loop: per-position losses within "
             f"{res.cached.max_abs_diff:.1e} of whole windows ({res.cached.contexts} × {res.cached.tokens} tokens)."]
    lines += [f"{k}: Δ loss overall {v.overall.mean:+.4f}; most-surprising fifth {v.bins[-1].mean:+.4f}, least "
              f"{v.bins[0].mean:+.4f}" for k, v in res.effects.items()]
    opposite = p.late_minus_early.lo > 0
    head = (f"Premise {'MET' if met else 'NOT MET'}: late layers (at {res.layers}) "
            f"{'do' if met else 'do not'} lose track of surprising input tokens more than early ones"
            f"{' — surprising tokens stay the more decodable ones' if opposite else ''} (gap difference "
            f"{fmt_ci(p.late_minus_early)}). Re-injection {'SUPPORTED' if helps else 'NOT SUPPORTED'}: moving late "
            f"residuals toward the true token ({res.chosen}, chosen on held-apart contexts) changes the loss on the "
            f"following token by {fmt_ci(top)} nats where that token was most surprising (vs least: {fmt_ci(d)}; vs "
            f"the same move toward another token: {fmt_ci(vn)}).")
    return ReinjectVerdict(headline=head, criteria=lines, premise_met=bool(met), chosen=res.chosen,
                             supported=helps)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    return {"premise: late − early decodability gap": fmt_ci(res.premise.late_minus_early),
            "chosen setting": res.chosen, "Δ loss, most surprising fifth (held out)": fmt_ci(res.judged.bins[-1]),
            "most − least surprising": fmt_ci(res.judged.top_minus_bottom)}

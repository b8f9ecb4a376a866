"""The verdict of ``superpos run orthogonality``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

import numpy as np

from superpos.hypotheses.common import pct
from superpos.hypotheses.orthogonality.result import LineFit, OrthogonalityResult, OrthogonalityVerdict


def describe_fit(f: LineFit) -> str:
    """A capacity line fit in words."""
    if f.slope is None or f.slope != f.slope:  # too few points (None; NaN in results written before 0.x)
        return f"only {f.points} uncapped points"
    return f"slope {f.slope:.3f}, R² {f.r2:.2f}, {f.points} uncapped points over {f.dims} dimensions"


def exponential_fit(res: OrthogonalityResult, name: str = "embedding (centred)") -> LineFit | None:
    """The capacity line fit of one set when it supports "exponential in d": ≥ 4 uncapped points over ≥ 2
    dimensions, positive slope, R² ≥ 0.9; else None."""
    fit = res.capacity.fits.get(name) if res.capacity else None
    if fit is None or fit.slope is None or fit.points < 4 or fit.dims < 2 or not fit.slope > 0 or not fit.r2 >= 0.9:
        return None
    return fit


def pct1(x: float) -> str:
    return f"{100 * x:.1f}%"


def n_seeds(res) -> int:
    """The seeds the census matched atoms across (dictionaries trained elsewhere count one each)."""
    return len(res.config.external) if res.config.external else res.config.seeds


CONTROL_KINDS = ("gaussian", "pc-shuffle", "planted", "realistic")  # the surrogates a full calibration runs
SUPPORTED, NOT_SUPPORTED, NOT_SHOWN = "SUPPORTED", "NOT SUPPORTED", "NOT SHOWN AT THIS BUDGET"
GAIN_RATIO = 16  # min_gain is stated for this size ratio; other ratios need the same gain per doubling


def gain_needed(ratio: float, min_gain: float) -> float:
    """Criterion (i)'s threshold for a sweep whose largest dictionary is ``ratio`` × its smallest: the gain per
    doubling that ``min_gain`` implies at 16×, compounded over log₂(ratio) doublings (20 % at 16× → 10.6 % at 4×)."""
    return 1 - (1 - min_gain) ** (np.log2(ratio) / np.log2(GAIN_RATIO))


def worst_seed_count(point) -> int:
    """Criterion (ii)'s count at one census: stable nearly orthogonal atoms in the worst seed."""
    return int(min(point.atoms.stable_orthogonal.values))


def budget_curve(res, layer: int):
    """The budget curve of ``res`` at ``layer``, or None."""
    return next((c for c in res.budget or [] if c.layer == layer), None)


def flattened_below(curve, d: int) -> bool:
    """The budget curve has stopped rising (the last budget is not above the one before beyond the seeds' spread)
    and its saturating fit's 95 % upper bound on s_max stays below d."""
    f = curve.fit
    return f is not None and f.identified and not f.still_rising and f.s_max_ci[1] < d


def _millions(tokens: float) -> str:
    return "∞" if not np.isfinite(tokens) else f"{tokens / 1e6:,.1f}M"


def growth(curve) -> str:
    """How the worst-seed counts grow with tokens, in words, where the saturating form finds no level."""
    first, last = curve.points[0], curve.points[-1]
    a, b = worst_seed_count(first), worst_seed_count(last)
    if b == 0:
        return "no stable nearly orthogonal atoms at any budget"
    if a > 0 and b / a > 1.2 * last.tokens / first.tokens:
        return (f"the counts grow faster than the tokens — {b / a:,.0f}× for {last.tokens / first.tokens:g}× the "
                f"tokens — so the saturating form does not fit")
    return "the counts still grow about linearly with tokens: the fit's half-way point lies beyond ten times the " \
           "largest budget"


def describe_budget(curve, d: int) -> str:
    """One layer's budget curve in words: the worst-seed count at each budget and where the saturating fit goes."""
    counts = ", ".join(f"{worst_seed_count(p):,} at {p.tokens / 1e6:g}M" for p in curve.points)
    f = curve.fit
    if f is None:
        return f"Layer {curve.layer}, budget sweep: {counts} tokens (too few budgets for a saturating fit)."
    if f.crosses_d_at is None:
        tail = (f"levels off below d = {d}" if flattened_below(curve, d) else
                f"does not reach d = {d} on its point estimate, which "
                + ("is not identified" if not f.identified else "has an interval reaching d" if f.s_max_ci[1] >= d
                   else "the counts' last rise leaves open"))
    else:
        ci = f"95 % interval over seeds {_millions(f.crosses_d_ci[0])}–{_millions(f.crosses_d_ci[1])}"
        tail = (f"passes d = {d} within the budgets tried, at about {_millions(f.crosses_d_at)} tokens (interpolated "
                f"between budgets per seed; {ci})" if f.crosses_observed else
                f"would reach d = {d} at {_millions(f.crosses_d_at)} tokens ({ci})")
        if curve.tokens_per_s and not f.crosses_observed:
            tail += (f", {f.crosses_d_at / curve.tokens_per_s / 3600:,.2g} h of training per seed at this run's "
                     f"{curve.tokens_per_s:,.0f} tokens/s")
    shape = (f"saturating fit s_max {f.s_max:,.0f} [{f.s_max_ci[0]:,.0f}, {f.s_max_ci[1]:,.0f}], half-way at "
             f"{f.t_half / 1e6:,.2f}M tokens" if f.identified else f"no level identified ({growth(curve)})")
    return (f"Layer {curve.layer}, budget sweep ({curve.n_atoms:,} atoms, {len(curve.points)} budgets from one "
            f"nested run per seed): stable nearly orthogonal atoms in the worst seed {counts} tokens; {shape}, "
            f"{'still rising' if f.still_rising else 'no longer rising'} at the last budget; it {tail}.")


def verdict(res: OrthogonalityResult) -> OrthogonalityVerdict:
    """SUPPORTED when at every layer (i) more atoms keep paying off — held-out FVU falls from the smallest to the
    largest dictionary by at least ``gain_needed`` (mean over seeds) — and (ii) in every seed more than d of the
    largest dictionary's atoms are live, seed-stable (``stable_cos``, ``stable_seeds``) and pairwise nearly
    orthogonal (|cos| ≤ ``orth_eps``), at the sweep's budget or at any budget of the budget sweep. NOT SUPPORTED
    when at some layer (i) fails beyond the seeds' spread (the gain's whole 95 % interval below the threshold: more
    atoms do not pay off, as on data with no structure beyond its covariance). Otherwise NOT SHOWN AT THIS BUDGET:
    a count below d on its own rules nothing out; that needs the realistic plant to resolve more than d atoms at a
    budget where the real count has flattened below d (``calibrated_verdict``)."""
    cfg, d = res.config, res.d_model
    lines, passed, gains, counts, shown = [], {}, {}, {}, {}
    curves = {c.layer: c for c in res.budget or []}
    for lay in res.layers:
        first, last, a = lay.sizes[0], lay.sizes[-1], lay.atoms
        need = gain_needed(last.expansion / first.expansion, cfg.min_gain)
        gain_ok = lay.gain.mean >= need
        n_orth, at_tokens = min(a.stable_orthogonal.values), cfg.fit_tokens
        for p in curves[lay.layer].points if lay.layer in curves else []:
            if worst_seed_count(p) > n_orth:
                n_orth, at_tokens = worst_seed_count(p), p.tokens
        many = n_orth > d
        passed[lay.layer] = gain_ok and many
        gains[lay.layer], counts[lay.layer] = gain_ok, n_orth
        shown[lay.layer] = (f"layer {lay.layer}: {n_orth:,.0f} in the worst seed ({n_orth / d:.2f}× d) after "
                            f"{at_tokens / 1e6:g}M training tokens, with held-out FVU {pct1(lay.gain.mean)} lower "
                            f"at {last.expansion}× than at {first.expansion}× (95% CI {pct1(lay.gain.lo)}–"
                            f"{pct1(lay.gain.hi)}; needs ≥ {pct1(need)})")
        lines.append(
            f"Layer {lay.layer}: (i) held-out FVU {first.fvu.mean:.3f} at {first.expansion}× → {last.fvu.mean:.3f} at "
            f"{last.expansion}×, a {pct(lay.gain.mean)} gain (95% CI over {len(lay.gain.values)} seeds "
            f"{pct(lay.gain.lo)}–{pct(lay.gain.hi)}; needs ≥ {pct(need)} at a {last.expansion / first.expansion:g}× "
            f"ratio: {'yes' if gain_ok else 'no'}). (ii) of {a.n_atoms:,} atoms at {cfg.fit_tokens:,} tokens, "
            f"{a.live.mean:,.0f} live, {a.stable.mean:,.0f} seed-stable (Hungarian partner |cos| ≥ {cfg.stable_cos} "
            f"in {cfg.stable_seeds} of {cfg.seeds} seeds), {min(a.stable_orthogonal.values):,.0f} of them pairwise "
            f"|cos| ≤ {cfg.orth_eps} in the worst seed"
            + (f"; the most at any budget of the budget sweep {n_orth:,.0f}" if lay.layer in curves else "")
            + f" = {n_orth / d:.2f}× d (needs > d: {'yes' if many else 'no'}).")
        if lay.layer in curves:
            lines.append(describe_budget(curves[lay.layer], d))
    supported = all(passed.values())
    no_gain = [lay.layer for lay in res.layers  # (i) fails beyond the seeds' spread: more atoms do not pay off
               if lay.gain.hi < gain_needed(lay.sizes[-1].expansion / lay.sizes[0].expansion, cfg.min_gain)]
    where = f"{res.model}" if res.config.control == "none" else f"a {res.config.control} surrogate of {res.model}"
    at = ", ".join(str(k) for k in passed)
    if supported:
        text = f" on {cfg.corpus}" if cfg.corpus and not cfg.store and cfg.control == "none" else ""
        scope = " (these layers of this model only)" if cfg.control == "none" else ""
        answer, head = SUPPORTED, (
            f"SUPPORTED at layer{'s' if len(passed) > 1 else ''} {at} of {where}{text}{scope}: in every seed more "
            f"than d = {d} of a {max(cfg.expansions)}× TopK SAE's atoms (k = {cfg.k}) are live, seed-stable (partner "
            f"|cos| ≥ {cfg.stable_cos} in {cfg.stable_seeds} of {n_seeds(res)} seeds) and pairwise |cos| ≤ "
            f"{cfg.orth_eps} — " + "; ".join(shown.values()) + ".")
    elif no_gain:
        answer, head = NOT_SUPPORTED, (
            f"NOT SUPPORTED at layer(s) {', '.join(map(str, no_gain))} of {where} (d = {d}): more atoms do not pay "
            f"off at {cfg.fit_tokens:,} training tokens per dictionary — the held-out FVU gain from the smallest to "
            f"the largest stays below the threshold with its whole 95% interval over seeds (" + "; ".join(
                f"layer {lay.layer}: {pct(lay.gain.mean)} [{pct(lay.gain.lo)}, {pct(lay.gain.hi)}]"
                for lay in res.layers if lay.layer in no_gain) + "), as on rows with no structure beyond their covariance: "
            "no overcomplete structure was found for more than d directions to hold.")
    else:
        failed = [k for k, ok in passed.items() if not ok]
        why = []
        if any(not gains[k] for k in failed):
            why.append("more atoms pay off less than the threshold at layer(s) "
                       + ", ".join(str(k) for k in failed if not gains[k]))
        if any(counts[k] <= d for k in failed):
            why.append("the most live, seed-stable atoms with pairwise |cos| ≤ " + f"{cfg.orth_eps} are "
                       + ", ".join(f"{counts[k]:,.0f} ({counts[k] / d:.2f}× d) at layer {k}" for k in failed
                                   if counts[k] <= d))
        answer, head = NOT_SHOWN, (
            f"NOT SHOWN AT THIS BUDGET at layer(s) {', '.join(map(str, failed))} of {where} (d = {d}): "
            + "; ".join(why) + ". Not a finding about the model: more than d nearly orthogonal directions in use is "
            "neither shown nor ruled out at the budgets tried.")
    return OrthogonalityVerdict(supported={SUPPORTED: True, NOT_SUPPORTED: False}.get(answer), answer=answer,
                                headline=head,
                                criteria=lines, context=capacity_context(res), layers_passed=passed,
                                insufficient_power=answer == NOT_SHOWN)


def capacity_context(res: OrthogonalityResult) -> str:
    """The capacity section in words: descriptive, and the token packing set against random directions' first."""
    if not res.capacity:
        return ""
    fits = res.capacity.fits
    tok, rnd = fits.get("embedding (centred)"), fits.get("random directions")
    line = exponential_fit(res)
    if tok is None:
        return ""
    if rnd is not None and rnd.slope is not None and tok.slope is not None and rnd.slope >= tok.slope:
        return (f"Capacity against d (descriptive): greedy packings of the centred token embedding grow with d·ε² "
                f"no faster than random directions do ({describe_fit(tok)} against {describe_fit(rnd)}), so they "
                f"say nothing the geometry of random directions does not; no claim about tokens follows.")
    return ("Capacity against d (descriptive): ln N of the centred token embedding "
            + (f"grows linearly in d·ε² over the measured range ({describe_fit(line)}; random directions: "
               f"{describe_fit(rnd) if rnd else 'not measured'})." if line else
               f"is not shown to grow linearly in d·ε² ({describe_fit(tok)})."))


def calibrated_verdict(real: OrthogonalityResult,
                       controls: dict[str, OrthogonalityResult]) -> OrthogonalityVerdict:
    """The real run judged against its controls. NOT CALIBRATED when a null comes out SUPPORTED or the easy plant
    does not. SUPPORTED when the real run is, and at every layer its gain and its count of stable nearly
    orthogonal atoms exceed each null's (Welch 95 % interval over seeds above 0). NOT SUPPORTED when at a budget
    layer the real curve has flattened below d (``flattened_below``) while the realistic plant, at the same
    largest budget, holds more than d stable nearly orthogonal atoms in every seed. NOT SHOWN AT THIS BUDGET
    otherwise."""
    from superpos.stats import welch_difference

    d = real.d_model
    nulls = {n: c for n, c in controls.items() if c.config.control in ("gaussian", "pc-shuffle")}
    planted = {n: c for n, c in controls.items() if c.config.control == "planted"}
    realistic = {n: c for n, c in controls.items() if c.config.control == "realistic"}
    lines = [f"Real run: {real.verdict.answer or ('SUPPORTED' if real.verdict.supported else 'NOT SUPPORTED')} on "
             f"its own."]
    lines += [f"{kind} control {n}: {c.verdict.answer or ('SUPPORTED' if c.verdict.supported else 'NOT SUPPORTED')} "
              f"(must be {'SUPPORTED' if want else 'not SUPPORTED'})"
              for kind, group, want in (("null", nulls, False), ("planted", planted, True)) for n, c in group.items()]
    controls_ok = (all(not c.verdict.supported for c in nulls.values())
                   and all(c.verdict.supported for c in planted.values()) and bool(nulls) and bool(planted))
    beats, passed = True, {}
    for lay in real.layers:
        ok = True
        for n, c in nulls.items():
            other = next((x for x in c.layers if x.layer == lay.layer), None)
            if other is None:
                ok = False
                lines.append(f"Layer {lay.layer}: the {n} control has no run at this layer.")
                continue
            gd = welch_difference(lay.gain.values, other.gain.values)
            od = welch_difference(lay.atoms.stable_orthogonal.values, other.atoms.stable_orthogonal.values)
            this = gd[1] > 0 and od[1] > 0
            ok &= this
            lines.append(f"Layer {lay.layer} vs {n}: gain {pct(lay.gain.mean)} vs {pct(other.gain.mean)} (difference "
                         f"{100 * gd[0]:+.1f} points, 95% CI {100 * gd[1]:+.1f} to {100 * gd[2]:+.1f}); stable nearly "
                         f"orthogonal atoms {lay.atoms.stable_orthogonal.mean:,.0f} vs "
                         f"{other.atoms.stable_orthogonal.mean:,.0f} (difference {od[0]:+,.0f}, 95% CI {od[1]:+,.0f} to "
                         f"{od[2]:+,.0f}) — {'above the null' if this else 'NOT above the null'}.")
        passed[lay.layer] = ok
        beats &= ok
    ruled_out = []
    for curve in real.budget or []:  # the budget sweep against the nulls at the same budgets
        for n, c in nulls.items():
            other = budget_curve(c, curve.layer)
            same = other is not None and [p.tokens for p in other.points] == [p.tokens for p in curve.points]
            if not same:
                beats = passed[curve.layer] = False
                lines.append(f"Layer {curve.layer}: the {n} control has no budget sweep at the same budgets.")
                continue
            for p, q in zip(curve.points, other.points):
                od = welch_difference(p.atoms.stable_orthogonal.values, q.atoms.stable_orthogonal.values)
                if worst_seed_count(p) > d and not od[1] > 0:  # a budget that passes must also beat the null there
                    beats = passed[curve.layer] = False
                    lines.append(f"Layer {curve.layer} at {p.tokens:,} tokens: {worst_seed_count(p):,} stable nearly "
                                 f"orthogonal atoms, not above the {n} control's {worst_seed_count(q):,}.")
        for n, c in realistic.items():
            plant = budget_curve(c, curve.layer)
            if plant is None:
                lines.append(f"Layer {curve.layer}: the {n} control has no budget sweep at this layer.")
                continue
            resolved = worst_seed_count(plant.points[-1])
            rec = plant.points[-1].recovered
            found = int(min(rec.values)) if rec else None
            lines.append(f"Layer {curve.layer}, {n} at {plant.points[-1].tokens:,} tokens: {resolved:,} stable nearly "
                         f"orthogonal atoms in the worst seed ({resolved / d:.1f}× d)"
                         + (f"; {found:,} of its {plant.planted_atoms:,} planted atoms recovered in the worst seed"
                            if rec else "")
                         + f"; the real curve {'has' if flattened_below(curve, d) else 'has not'} flattened below d.")
            if (resolved > d and (found is None or found > d) and flattened_below(curve, d)
                    and plant.points[-1].tokens == curve.points[-1].tokens):
                ruled_out.append(curve.layer)
    missing = [k for k in CONTROL_KINDS if k not in {c.config.control for c in controls.values()}]
    not_run = f" Not run, so not part of this calibration: the {', the '.join(missing)} control." if missing else ""
    if not controls_ok:
        failed = any(c.verdict.supported for c in nulls.values()) or not all(c.verdict.supported
                                                                             for c in planted.values())
        answer, head = None, ("NOT CALIBRATED: a control did not come out as it must, so the real verdict cannot be "
                              "trusted." if failed else
                              "NOT CALIBRATED: no null or no easy plant ran, so the real verdict has nothing to be "
                              "read against." + not_run)
    elif real.verdict.supported and beats:
        answer, head = SUPPORTED, (
            f"SUPPORTED, {'partly ' if missing else ''}calibrated, {real.verdict.headline.removeprefix('SUPPORTED ')} "
            f"The null"
            f"{'s' if len(nulls) > 1 else ''} ({' and '.join(nulls)}: same covariance, no sparse features) "
            f"come{'' if len(nulls) > 1 else 's'} out not SUPPORTED, planted superposition SUPPORTED, and the real run "
            f"beats {'each null' if len(nulls) > 1 else 'the null'} with 95% CIs over seeds." + not_run)
    elif real.verdict.supported is False:
        answer, head = NOT_SUPPORTED, (
            f"NOT SUPPORTED, calibrated (every control came out as it must): "
            f"{real.verdict.headline.removeprefix('NOT SUPPORTED ')}")
    elif ruled_out:
        answer, head = NOT_SUPPORTED, (
            f"NOT SUPPORTED at layer(s) {', '.join(map(str, ruled_out))} of {real.model}: the count of stable nearly "
            f"orthogonal atoms has flattened below d = {d}, while the realistic plant (the layer's own atoms and codes) "
            f"resolves more than d at the same budget; every control came out as it must.")
    else:
        answer, head = NOT_SHOWN, (
            "NOT SHOWN AT THIS BUDGET, calibrated (every control came out as it must): "
            + (real.verdict.headline.removeprefix("NOT SHOWN AT THIS BUDGET ") if not real.verdict.supported
               else "the real run does not beat every null at every layer.") + not_run)
    return OrthogonalityVerdict(supported={SUPPORTED: True, NOT_SUPPORTED: False}.get(answer), answer=answer or "",
                                headline=head, criteria=lines, context=real.verdict.context, layers_passed=passed,
                                insufficient_power=answer == NOT_SHOWN)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    out = {}
    depth = ("early", "middle", "late") if len(res.layers) == 3 else [f"#{i + 1}" for i in range(len(res.layers))]
    for where, lay in zip(depth, res.layers):  # by depth, so that models with other layer counts line up
        a = lay.atoms
        out[f"{where} layer: FVU gain {lay.sizes[0].expansion}× → {lay.sizes[-1].expansion}×"] = (
            f"L{lay.layer}: {pct(lay.gain.mean)} [{pct(lay.gain.lo)}, {pct(lay.gain.hi)}]")
        out[f"{where} layer: stable atoms, |cos| ≤ {res.config.orth_eps}"] = (
            f"L{lay.layer}: {a.stable_orthogonal.mean:,.0f} ({a.stable_orthogonal.mean / res.d_model:.2f}× d)")
    for set_name, t in res.tokens.items():  # the token geometry: each vector's max |cos| to the others
        out[f"tokens: {set_name}, median max |cos| (n × d)"] = (
            f"{t.max_abs_cos.median:.3f} ({t.n:,} × {res.d_model}, {t.seconds:.0f} s)")
    if res.tokens_theory_median is not None:
        out["tokens: random directions, median max |cos| in theory"] = f"{res.tokens_theory_median:.3f}"
    return out

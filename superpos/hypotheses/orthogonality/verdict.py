"""The verdict of ``superpos run orthogonality``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

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


def verdict(res: OrthogonalityResult) -> OrthogonalityVerdict:
    """SUPPORTED when at every layer (i) more atoms keep paying off — held-out FVU falls by at least ``min_gain``
    from the smallest to the largest dictionary (mean over seeds) — and (ii) in every seed more than d of the
    largest dictionary's atoms are live, seed-stable and pairwise nearly orthogonal (|cos| ≤ ``orth_eps``).
    Judged on the store alone; ``orthogonality_calibrated`` judges it against the nulls and planted runs."""
    cfg, d = res.config, res.d_model
    lines, passed, gains, counts = [], {}, {}, {}
    for lay in res.layers:
        first, last, a = lay.sizes[0], lay.sizes[-1], lay.atoms
        gain_ok = lay.gain.mean >= cfg.min_gain
        n_orth = min(a.stable_orthogonal.values)
        many = n_orth > d
        passed[lay.layer] = gain_ok and many
        gains[lay.layer], counts[lay.layer] = gain_ok, n_orth
        lines.append(
            f"Layer {lay.layer}: (i) held-out FVU {first.fvu.mean:.3f} at {first.expansion}× → {last.fvu.mean:.3f} at "
            f"{last.expansion}×, a {pct(lay.gain.mean)} gain (95% CI over {len(lay.gain.values)} seeds "
            f"{pct(lay.gain.lo)}–{pct(lay.gain.hi)}; needs ≥ {pct(cfg.min_gain)}: {'yes' if gain_ok else 'no'}). "
            f"(ii) of {a.n_atoms:,} atoms, {a.live.mean:,.0f} live, {a.stable.mean:,.0f} seed-stable (Hungarian partner "
            f"|cos| ≥ {cfg.stable_cos} in every other seed), {n_orth:,.0f} of them pairwise |cos| ≤ {cfg.orth_eps} in "
            f"the worst seed = {n_orth / d:.1f}× d (needs > d: {'yes' if many else 'no'}).")
    supported = all(passed.values())
    fit = exponential_fit(res)
    where = f"{res.model}" if res.config.control == "none" else f"a {res.config.control} surrogate of {res.model}"
    at = ", ".join(str(k) for k in passed)
    if supported:
        counts = ", ".join(f"{min(lay.atoms.stable_orthogonal.values) / d:.1f}× d at layer {lay.layer}"
                           for lay in res.layers)
        head = (f"SUPPORTED: layers {at} of {where} use more than d = {d} nearly orthogonal directions "
                f"(seed-stable atoms with pairwise |cos| ≤ {cfg.orth_eps}: {counts}), and more atoms keep paying off.")
    else:
        failed = [k for k, ok in passed.items() if not ok]
        why = []
        if any(not gains[k] for k in failed):
            why.append(f"more atoms stop paying off (gain < {pct(cfg.min_gain)}) at layer(s) "
                       + ", ".join(str(k) for k in failed if not gains[k]))
        if any(counts[k] <= d for k in failed):
            why.append("only " + ", ".join(f"{counts[k]:,.0f} ({counts[k] / d:.2f}× d) at layer {k}" for k in failed
                                          if counts[k] <= d)
                       + f" of the largest dictionary's atoms are live, seed-stable and pairwise |cos| ≤ {cfg.orth_eps}")
        head = (f"NOT SUPPORTED at layer(s) {', '.join(map(str, failed))} of {where} (d = {d}): "
                + "; ".join(why) + " — more than d nearly orthogonal directions in use is not shown.")
    context = ""
    if res.capacity:
        name = "embedding (centred)"
        f = res.capacity.fits[name]
        context = ("Capacity against d: ln N of the centred token embedding "
                   + (f"grows linearly in d·ε² over the measured range ({describe_fit(fit)}): exponential in d on "
                      f"that range." if fit else
                      f"is not shown to grow linearly in d·ε² ({describe_fit(f)}): no claim of exponential capacity."))
    return OrthogonalityVerdict(supported=supported, headline=head, criteria=lines, context=context,
                                  layers_passed=passed)


def calibrated_verdict(real: OrthogonalityResult,
                             controls: dict[str, OrthogonalityResult]) -> OrthogonalityVerdict:
    """The real run judged against its controls: SUPPORTED when the real run is, the planted runs are, the nulls
    are not, and at every layer the real gain and the real count of stable nearly-orthogonal atoms exceed each
    null's (Welch 95% interval over seeds above 0)."""
    from superpos.stats import welch_difference

    nulls = {n: c for n, c in controls.items() if c.config.control in ("gaussian", "pc-shuffle")}
    planted = {n: c for n, c in controls.items() if c.config.control == "planted"}
    lines = [f"Real run: {'SUPPORTED' if real.verdict.supported else 'NOT SUPPORTED'} on its own."]
    lines += [f"{kind} control {n}: {'SUPPORTED' if c.verdict.supported else 'NOT SUPPORTED'} (must be "
              f"{'SUPPORTED' if want else 'NOT SUPPORTED'})"
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
    supported = bool(real.verdict.supported) and controls_ok and beats
    if supported:
        head = (f"SUPPORTED, calibrated: {real.verdict.headline.removeprefix('SUPPORTED: ')} The nulls (same "
                f"covariance, no sparse features) come out NOT SUPPORTED, planted superposition SUPPORTED, and the real "
                f"layers beat both nulls with 95% CIs over seeds.")
    elif not controls_ok:
        head = "NOT CALIBRATED: a control did not come out as it must, so the real verdict cannot be trusted."
    else:
        head = ("NOT SUPPORTED after calibration (every control came out as it must): "
                + (real.verdict.headline.removeprefix("NOT SUPPORTED ") if not real.verdict.supported
                   else "the real run does not beat both nulls at every layer."))
    return OrthogonalityVerdict(supported=supported, headline=head, criteria=lines, context=real.verdict.context,
                                  layers_passed=passed)


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

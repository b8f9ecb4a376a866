"""The orthogonality report: the verdict, real / nulls / planted side by side (after --calibrate), the sweep and
atom census per layer, capacity against d, token geometry."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from superpos.experiment.report import Report
from superpos.hypotheses.orthogonality.result import MAXCOS, OrthogonalityResult, OrthogonalityVerdict
from superpos.hypotheses.orthogonality.verdict import budget_curve, describe_budget, describe_fit

STYLES = {"gaussian": "--", "pc-shuffle": "-.", "planted": ":", "realistic": (0, (5, 1, 1, 1))}


def _ci(v, pct: bool = False, fmt: str = "{:.3f}") -> str:
    if v is None:
        return "—"
    f = (lambda x: f"{100 * x:.1f}%") if pct else fmt.format
    lo = max(v.lo, 0.0) if min(v.values) >= 0 else v.lo  # a count or a share: its interval stops at 0
    return f"{f(v.mean)} [{f(lo)}, {f(v.hi)}]"


def write_report(res: OrthogonalityResult, out, controls: dict[str, OrthogonalityResult] | None = None,
                 calibrated: OrthogonalityVerdict | None = None) -> Path:
    """report.md/.html and figures of an orthogonality run; with ``controls`` (and their ``calibrated`` verdict)
    the real run, the nulls and the planted runs side by side."""
    import matplotlib.pyplot as plt

    out = Path(out)
    cfg, d = res.config, res.d_model
    what = res.model if cfg.control == "none" else f"{cfg.control} surrogate of {res.model}"
    rep = Report(f"exp(N_emb) near-orthogonality — {what}, layers {', '.join(str(x.layer) for x in res.layers)}")
    rep.verdict(calibrated or res.verdict, res)
    if res.verdict.context:
        rep.text(res.verdict.context)
    if calibrated is not None:
        rep.text("The run on its own: " + res.verdict.headline)
        for line in res.verdict.criteria:
            rep.text("- " + line)
    if controls:
        _side_by_side(rep, res, controls, plt)

    rep.heading("(a) Dictionaries of growing size, per layer")
    rep.text(f"TopK SAEs (k = {cfg.k}, {cfg.fit_tokens:,} training tokens at every size — a fixed budget, so the "
             f"largest dictionaries are the least trained; their dead share says how much) on the first 90% of "
             f"contexts, {cfg.seeds} seeds each; FVU on the held-out contexts. Values are means over seeds with 95% "
             f"t-intervals. CE-loss recovered and KL splice the reconstruction into the model over "
             f"{cfg.ce_contexts} held-out contexts (only on the model's own store).")
    for lay in res.layers:
        rep.text(f"**Layer {lay.layer}** ({lay.rows:,} rows, {lay.holdout_rows:,} held out; PCA with {cfg.k} "
                 f"components at equal L0: FVU {lay.pca_fvu:.4f}):")
        rep.table(["size", "atoms", "FVU", "FVU, typical rows", "L0", "dead", "CE recovered", "KL (nats)"],
                  [[f"{s.expansion}×", s.n_atoms, _ci(s.fvu, fmt="{:.4f}"), _ci(s.fvu_typical, fmt="{:.4f}"),
                    f"{s.l0.mean:.1f}", _ci(s.dead), _ci(s.ce_recovered), _ci(s.kl, fmt="{:.4f}")]
                   for s in lay.sizes])
        if lay.gain_typical is not None:
            rep.text(f"Gain {lay.sizes[0].expansion}× → {lay.sizes[-1].expansion}× on every held-out row (criterion "
                     f"(i)): {_ci(lay.gain, pct=True)}; on the typical rows alone, leaving out the {lay.outlier_rows:,} "
                     f"held-out rows whose norm exceeds 5× the median (attention sinks, which can hold much of the "
                     f"layer's variance): {_ci(lay.gain_typical, pct=True)}.")
    fig, ax = plt.subplots(figsize=(7, 4))
    for lay in res.layers:
        n = [s.n_atoms for s in lay.sizes]
        m = np.array([s.fvu.mean for s in lay.sizes])
        ax.errorbar(n, m, yerr=[m - [s.fvu.lo for s in lay.sizes], [s.fvu.hi for s in lay.sizes] - m], fmt="o-",
                    capsize=3, label=f"layer {lay.layer}")
    ax.axvline(d, color="gray", ls=":", label="d")
    ax.set(xscale="log", xlabel="dictionary size (atoms)", ylabel="held-out FVU")
    ax.legend(fontsize=8)
    rep.figure(fig, "fvu_vs_size.png", "Held-out FVU vs dictionary size (mean and 95% CI over seeds)")

    rep.heading("(b) The largest dictionary's atoms")
    rep.text(f"Live: fired on held-out rows (dead atoms are left out of everything below). Seed-stable: its "
             f"Hungarian partner has |cos| ≥ {cfg.stable_cos} in enough other seeds that it is found in "
             f"{cfg.stable_seeds} of the {cfg.seeds} seeds, itself included (the rule pre-registered in "
             f"docs/orthogonality.md; the sensitivity table below shows the others). Nearly orthogonal: a greedy "
             f"packing of the stable atoms at pairwise |cos| ≤ {cfg.orth_eps}. Interference: median over live atoms "
             f"of the max |cos| to another live atom; ΣD: summed per-feature dimensionality (Elhage et al. 2022) of "
             f"the live atoms, ≈ d when they tile every dimension. Nulls: random unit vectors of the same count.")
    rep.table(["layer", "atoms", "live", "stable", "stable, |cos| ≤ ε", "× d", "interference (null)", "ΣD / d (null)"],
              [[lay.layer, lay.atoms.n_atoms, _ci(lay.atoms.live, fmt="{:,.0f}"), _ci(lay.atoms.stable, fmt="{:,.0f}"),
                _ci(lay.atoms.stable_orthogonal, fmt="{:,.0f}"), f"{lay.atoms.stable_orthogonal.mean / d:.2f}",
                f"{lay.atoms.interference.mean:.3f} ({lay.atoms.interference_null:.3f})",
                f"{lay.atoms.dimensionality.mean / d:.2f} ({lay.atoms.dimensionality_null / d:.2f})"]
               for lay in res.layers])
    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.linspace(0, 1, 21)
    for lay in res.layers:
        h = np.asarray(lay.atoms.matched_cos_hist, float)
        ax.stairs(h / max(h.sum(), 1), edges, label=f"layer {lay.layer}")
    for name, c in (controls or {}).items():
        h = np.asarray(c.layers[len(c.layers) // 2].atoms.matched_cos_hist, float)
        ax.stairs(h / max(h.sum(), 1), edges, ls=STYLES.get(c.config.control, "-"),
                  label=f"{name} (layer {c.layers[len(c.layers) // 2].layer})")
    ax.axvline(cfg.stable_cos, color="k", ls=":", label="stability threshold")
    ax.set(xlabel="|cos| to the Hungarian partner in another seed", ylabel="share of matched atoms")
    ax.legend(fontsize=8)
    rep.figure(fig, "matched_cos.png", "How well atoms recur across seeds (the stability threshold against the "
                                       "nulls and planted runs)")

    if res.budget:
        _budget(rep, res, controls or {}, plt)
    if res.capacity:
        _capacity(rep, res, plt)
    if res.tokens:
        _tokens(rep, res, out, plt)
    aligned = [lay for lay in res.layers if lay.alignment]
    if aligned:
        rep.heading("(e) Do atoms line up with token embeddings?")
        rep.table(["layer", "atoms' best |cos| to a token (median)", "covariance-matched random", "difference [95% CI]",
                   "atoms above the null's 99th pct."],
                  [[lay.layer, lay.alignment.atoms.median, lay.alignment.null.median,
                    "{:+.3f} [{:+.3f}, {:+.3f}]".format(*lay.alignment.median_diff),
                    f"{100 * lay.alignment.frac_atoms_above_null_p99:.1f}%"] for lay in aligned])
    rep.reproduce("orthogonality", cfg, calibrate=calibrated is not None)
    rep.text(f"Run time: {res.timings.get('total_s', 0):.0f} s"
             + (f" (plus {sum(c.timings.get('total_s', 0) for c in controls.values()):.0f} s for the controls)"
                if controls else "") + ".")
    return rep.save(out)


def _side_by_side(rep: Report, res, controls: dict, plt) -> None:
    """Real, nulls and planted: per layer the gain and the atom counts; FVU (relative to the smallest size)
    against size for each."""
    runs = {"real": res, **controls}
    d = res.d_model
    rep.heading("Real, nulls and planted side by side")
    rep.text("The identical pipeline on the real layers; on a Gaussian with each layer's mean and covariance; on the "
             "layer with every principal-component coordinate shuffled across rows (same spectrum and marginals, "
             "sparse structure destroyed); and on planted superposition (4×d known unit atoms, d/72 active per row, "
             "scaled to the layer's norm). Means over seeds with 95% t-intervals.")
    rows = []
    for lay in res.layers:
        for name, r in runs.items():
            x = next((y for y in r.layers if y.layer == lay.layer), None)
            if x is None:
                continue
            rows.append([lay.layer, name, _ci(x.gain, pct=True), f"{x.atoms.live.mean:,.0f}",
                         f"{x.atoms.stable.mean:,.0f}", _ci(x.atoms.stable_orthogonal, fmt="{:,.0f}"),
                         f"{x.atoms.interference.mean:.3f} ({x.atoms.interference_null:.3f})",
                         f"{x.atoms.dimensionality.mean / d:.2f}",
                         "yes" if r.verdict.layers_passed.get(lay.layer) else "no"])
    rep.table(["layer", "run", "FVU gain", "live", "stable", "stable, |cos| ≤ ε", "interference (null)", "ΣD / d",
               "passes"], rows)
    fig, axes = plt.subplots(1, len(res.layers), figsize=(4 * len(res.layers), 3.6), squeeze=False)
    for ax, lay in zip(axes[0], res.layers):
        for name, r in runs.items():
            x = next((y for y in r.layers if y.layer == lay.layer), None)
            if x is None:
                continue
            base = x.sizes[0].fvu.mean
            ax.plot([s.n_atoms for s in x.sizes], [s.fvu.mean / base for s in x.sizes], "o",
                    ls=STYLES.get(r.config.control, "-"), label=name)
        ax.set(xscale="log", title=f"layer {lay.layer}", xlabel="atoms", ylabel="FVU / FVU at the smallest size")
    axes[0][0].legend(fontsize=7)
    rep.figure(fig, "calibration.png", "FVU against dictionary size, relative to the smallest: real vs nulls vs "
                                       "planted")


def _worst(values) -> int:
    return int(min(values))


def _budget(rep: Report, res, controls: dict, plt) -> None:
    """The census against training tokens: real, nulls and plants side by side at each budget, the saturating fit,
    what each plant's census recovers, and criterion (ii)'s sensitivity at the largest budget."""
    cfg, d = res.config, res.d_model
    runs = {"real": res, **{n: c for n, c in controls.items() if c.budget}}
    rep.heading("(b′) The census against training tokens")
    rep.text(f"The largest dictionary ({max(cfg.expansions)}× d, k = {cfg.k}, batch {cfg.batch_size}) trained once "
             f"per seed for {max(cfg.budgets):,} tokens, with a dictionary saved after its own decay branch at each "
             f"smaller budget (nested budgets: warm-up and constant phase do not depend on the total); each census "
             f"on the held-out contexts. Counts are stable nearly orthogonal atoms (the pre-registered rule) in the "
             f"worst seed, with the mean over seeds; epochs count passes over the store's training rows. On a plant, "
             f"'recovered' counts planted atoms with a live atom at |cos| ≥ 0.9 (worst seed) of the planted atoms "
             f"that fire. Realistic plant: the layer's own trained dictionary (atoms, codes on the real rows, hence "
             f"its frequencies, L0, co-firing, outlier rows and massive dimensions) plus Gaussian noise of the "
             f"residual's covariance. The saturating fit S(T) = s_max·T/(T + t_half) runs through every (budget, "
             f"seed) count of the real run.")
    for curve in res.budget:
        rows = []
        for i, p in enumerate(curve.points):
            row = [f"{p.tokens:,}", f"{p.epochs:.2f}", _ci(p.fvu, fmt="{:.4f}"), _ci(p.fvu_typical, fmt="{:.4f}")]
            for name, r in runs.items():
                c = budget_curve(r, curve.layer)
                if c is None or i >= len(c.points):
                    row.append("—")
                    continue
                q = c.points[i]
                cell = f"{_worst(q.atoms.stable_orthogonal.values):,} ({q.atoms.stable_orthogonal.mean:,.0f})"
                if q.recovered is not None:
                    cell += f"; recovered {_worst(q.recovered.values):,} of {c.planted_atoms:,}"
                row.append(cell)
            rows.append(row)
        rep.text(f"**Layer {curve.layer}** ({curve.n_atoms:,} atoms; d = {d}):")
        rep.table(["tokens", "epochs", "real held-out FVU", "(typical rows)", *[f"{n}: worst seed (mean)" for n in runs]],
                  rows)
    fig, axes = plt.subplots(1, len(res.budget), figsize=(5.5 * len(res.budget), 4), squeeze=False)
    for ax, curve in zip(axes[0], res.budget):
        for name, r in runs.items():
            c = budget_curve(r, curve.layer)
            if c is None:
                continue
            t = [p.tokens for p in c.points]
            ax.plot(t, [_worst(p.atoms.stable_orthogonal.values) for p in c.points], "o",
                    ls=STYLES.get(r.config.control, "-"), label=name)
        f = curve.fit
        if f is not None and f.identified:  # an unidentified fit is not a curve worth drawing
            t = np.geomspace(curve.points[0].tokens, max(curve.points[-1].tokens, f.crosses_d_at or 0) * 1.05, 100)
            ax.plot(t, f.s_max * t / (t + f.t_half), color="k", lw=0.8, label="saturating fit (real)")
        ax.axhline(d, color="gray", ls=":", label="d")
        ax.set(xscale="log", xlabel="training tokens", ylabel="stable, nearly orthogonal atoms (worst seed)",
               title=f"layer {curve.layer}")
    axes[0][0].legend(fontsize=7)
    rep.figure(fig, "budget.png", "Stable nearly orthogonal atoms against training tokens: the real layer, the "
                                  "nulls and both plants, with the real curve's saturating fit where it "
                                  "identifies a level")
    for curve in res.budget:
        rep.text("- " + describe_budget(curve, d))
    rep.text("Criterion (ii)'s sensitivity at the largest budget: stable nearly orthogonal atoms (worst seed) when a "
             "partner must reach each |cos| and the atom must be found in m seeds, itself included.")
    for curve in res.budget:
        rows = []
        for name, r in runs.items():
            c = budget_curve(r, curve.layer)
            if c is None:
                continue
            g = c.points[-1].grid
            rows += [[name, f"{t:g}", *[f"{_worst(g.stable_orthogonal[i][j].values):,}" for j in range(len(g.min_seeds))]]
                     for i, t in enumerate(g.stable_cos)]
        grid = curve.points[-1].grid
        rep.text(f"**Layer {curve.layer}**, {curve.points[-1].tokens:,} tokens:")
        rep.table(["run", "partner |cos| ≥", *[f"m = {m}" for m in grid.min_seeds]], rows)


def _capacity(rep: Report, res, plt) -> None:
    """ln N against d ε² per set (uncapped filled, capped hollow) with the spherical-code references."""
    cap = res.capacity
    rep.heading("(c) Capacity against d")
    rep.text("Greedy packings (pairwise |cos| ≤ ε) of each set after a Gaussian random projection to d' "
             "dimensions (d itself unprojected). A count is *capped* when the packing was still growing as the "
             "candidates ran out: it is then only a floor (hollow markers, left out of the fits). References at the "
             "same (d', ε): the random-code existence bound (alteration, exact tail), the relative bound (dε² < 1) "
             "or cap-packing bound above, and the Kabatiansky–Levenshtein asymptotic rate (no finite-d guarantee). "
             "Sources in docs/orthogonality.md.")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    markers = "osd^v"
    for (name, kept), color in zip(cap.kept.items(), ["C0", "C1", "C2", "C3"]):
        for i, x in enumerate(cap.dims):
            xs = [x * e * e for e in cap.eps]
            for xv, k, c in zip(xs, kept[i], cap.capped[name][i]):
                ax.plot(xv, np.log(max(k, 1)), markers[i % 5], color=color, mfc="none" if c else color, ms=6)
        ax.plot([], [], "o", color=color, label=f"{name} ({describe_fit(cap.fits[name])})")
    for i, x in enumerate(cap.dims):
        xs = [x * e * e for e in cap.eps]
        ax.plot(xs, np.log(cap.lower_bound[i]), color="gray", lw=0.8, ls="--")
        ax.plot(xs, [x * r for r in cap.kl_rate], color="k", lw=0.6, ls=":")
    ax.plot([], [], color="gray", ls="--", label="random-code lower bound (each d')")
    ax.plot([], [], color="k", ls=":", label="KL asymptotic upper rate (each d')")
    top = max(np.log(max(k, 1)) for kept in cap.kept.values() for row in kept for k in row)
    ax.set(xlabel="d'·ε²", ylabel="ln N (directions kept)", ylim=(0, 1.6 * top + 1),  # the bounds run far above
           title="markers: " + ", ".join(f"{markers[i % 5]} d'={x}" for i, x in enumerate(cap.dims)))
    ax.legend(fontsize=7)
    rep.figure(fig, "capacity_vs_d.png", "How many nearly orthogonal directions fit, against d·ε²")
    header = ["set", "d'", *[f"ε={e:g}" for e in cap.eps]]
    rows = [[name, x, *[f"{k:,}{'+' if c else ''}" for k, c in zip(kept[i], cap.capped[name][i])]]
            for name, kept in cap.kept.items() for i, x in enumerate(cap.dims)]
    rows += [["random-code lower bound", x, *[f"{v:.3g}" for v in cap.lower_bound[i]]] for i, x in enumerate(cap.dims)]
    rows += [["upper bound", x, *[f"{v:.3g}" for v in cap.upper_bound[i]]] for i, x in enumerate(cap.dims)]
    rep.table(header, rows)
    rep.text("'+': capped by the " + ", ".join(f"{n:,} {k}" for k, n in cap.n_candidates.items())
             + " candidates. Line fits of ln N on d'ε² over the uncapped points: "
             + "; ".join(f"{k}: {describe_fit(f)}" for k, f in cap.fits.items()) + ".")


def _tokens(rep: Report, res, out: Path, plt) -> None:
    """Each token vector's max |cos| to the others, against random vectors."""
    rep.heading("(d) Token directions")
    rep.text(f"Embedding and unembedding are {'tied (one matrix)' if res.tied_embeddings else 'separate'}. Each "
             f"vector's max |cos| to the other {res.tokens['embedding'].n - 1:,}; the random null is Gaussian with the "
             f"same count and dimension; theory = exact median for random unit vectors ({res.tokens_theory_median:.3f}).")
    rep.table(["set", "n", "median max|cos|", "95% CI", "p10", "p90", "seconds"],
              [[k, s.n, s.max_abs_cos.median, f"{s.max_abs_cos.ci[0]:.3f}–{s.max_abs_cos.ci[1]:.3f}",
                s.max_abs_cos.p10, s.max_abs_cos.p90, s.seconds] for k, s in res.tokens.items()])
    if (out / MAXCOS).exists():
        maxcos = np.load(out / MAXCOS)
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in maxcos.files:
            ax.hist(maxcos[name], bins=np.linspace(0, 1, 101), histtype="step", density=True, label=name)
        ax.axvline(res.tokens_theory_median, color="k", ls="--", label="theory (random, median)")
        ax.set(xlabel="max |cos| to any other token", ylabel="density")
        ax.legend(fontsize=8)
        rep.figure(fig, "maxcos_tokens.png", "Max |cos| of each token direction vs the random null")

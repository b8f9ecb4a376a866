"""The orthogonality report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...report import Report
from ..results import OrthogonalityResult


def write_report(res: OrthogonalityResult, maxcos: dict[str, np.ndarray], out: Path) -> Path:
    """report.md/.html and figures of an orthogonality run; ``maxcos`` holds each token set's max |cos| values
    (for the histogram; results.json keeps their summaries)."""
    import matplotlib.pyplot as plt

    rep = Report(f"exp(N_emb) near-orthogonality — {res.model}, layer {res.layer}")
    rep.verdict(res.verdict)
    rep.text(res.verdict.context)
    d, cfg = res.d_model, res.config

    rep.heading("(a) Token directions")
    rep.text(f"Embedding and unembedding are {'tied (one matrix)' if res.tied_embeddings else 'separate'}. "
             f"Each vector's max |cos| to the other {res.tokens['embedding'].n - 1:,}; the random null is "
             f"Gaussian with the same count and dimension; theory = exact median for random unit vectors "
             f"({res.tokens_theory_median:.3f}).")
    rep.table(["set", "n", "median max|cos|", "95% CI", "p10", "p90", "seconds"],
              [[k, s.n, s.max_abs_cos.median, f"{s.max_abs_cos.ci[0]:.3f}–{s.max_abs_cos.ci[1]:.3f}",
                s.max_abs_cos.p10, s.max_abs_cos.p90, s.seconds] for k, s in res.tokens.items()])
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 101)
    for name, mc in maxcos.items():
        ax.hist(mc, bins=bins, histtype="step", density=True, label=name)
    ax.axvline(res.tokens_theory_median, color="k", ls="--", label="theory (random, median)")
    ax.set(xlabel="max |cos| to any other token", ylabel="density")
    ax.legend(fontsize=8)
    rep.figure(fig, "maxcos_tokens.png", "Max |cos| of each token direction vs the random null")

    cap = res.capacity
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, kept in cap.kept.items():
        ax.plot(cap.eps, kept, "o-", label=name)
    ax.plot(cap.eps, cap.random_code_bound, "k--", label="exp(d ε²/4)")
    ax.axhline(d, color="gray", ls=":", label=f"d = {d}")
    ax.axhline(cap.n_candidates, color="gray", ls="-.", lw=0.8, label="candidates")
    ax.set(yscale="log", xlabel="ε (pairwise |cos| allowed)", ylabel="directions kept")
    ax.legend(fontsize=8)
    rep.figure(fig, "capacity.png", f"Greedy capacity over {cap.n_candidates:,} candidates vs exp(dε²/4)")
    rep.table(["ε", "random_code_bound", *cap.kept],
              [[e, cap.random_code_bound[i], *[kept[i] for kept in cap.kept.values()]] for i, e in enumerate(cap.eps)])

    rep.heading("(b) Dictionaries of growing size")
    sw = res.sweep
    rep.text(f"TopK SAEs (k = {cfg.k}, {cfg.fit_tokens:,} training tokens each) on layer {res.layer}; FVU on held-out "
             f"rows ({res.store.holdout_rows:,}). PCA with {cfg.k} components (equal L0): FVU {res.pca_fvu:.4f}.")
    rep.table(["size", "atoms", "FVU", "L0", "dead", "median max|cos|", "95% CI", "null", "theory", "> 0.9"],
              [[f"{r.expansion}×", r.n_atoms, r.fvu, r.l0, r.dead, r.max_abs_cos.median,
                f"{r.max_abs_cos.ci[0]:.3f}–{r.max_abs_cos.ci[1]:.3f}", r.null_median, r.theory_median,
                r.frac_above_0_9] for r in sw])
    n = [r.n_atoms for r in sw]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(n, [r.fvu for r in sw], "o-", label="TopK SAE")
    ax.axhline(res.pca_fvu, color="gray", ls="--", label=f"PCA, {cfg.k} components")
    ax.axvline(d, color="gray", ls=":", label="d")
    ax.set(xscale="log", xlabel="dictionary size (atoms)", ylabel="held-out FVU")
    ax.legend(fontsize=8)
    rep.figure(fig, "fvu_vs_size.png", "Reconstruction error vs dictionary size")
    fig, ax = plt.subplots(figsize=(7, 4))
    med = np.array([r.max_abs_cos.median for r in sw])
    ci = np.array([r.max_abs_cos.ci for r in sw]).T
    ax.errorbar(n, med, yerr=[med - ci[0], ci[1] - med], fmt="o-", label="learned atoms (median, 95% CI)")
    ax.plot(n, [r.null_median for r in sw], "s--", label="random null")
    ax.plot(n, [r.theory_median for r in sw], "k:", label="theory")
    ax.set(xscale="log", xlabel="dictionary size (atoms)", ylabel="median max |cos|", ylim=(0, 1))
    ax.legend(fontsize=8)
    rep.figure(fig, "maxcos_vs_size.png", "Atoms' max |cos| vs dictionary size, against random vectors")

    al = res.alignment
    rep.heading("(c) Do atoms line up with token embeddings?")
    diff = al.median_diff
    rep.text(f"For each atom of the {al.expansion}× SAE, the best |cos| to any token embedding: median "
             f"{al.atoms.median:.3f}, vs {al.null.median:.3f} for random directions drawn with the layer's "
             f"covariance; difference {diff[0]:+.3f} (95% CI {diff[1]:+.3f} to {diff[2]:+.3f}). "
             f"{100 * al.frac_atoms_above_null_p99:.1f}% of atoms exceed the null's 99th percentile.")
    rep.reproduce("orthogonality", cfg)
    rep.text(f"Run time: {res.timings.get('total_s', 0):.0f} s.")
    return rep.save(out)

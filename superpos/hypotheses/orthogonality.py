"""Hypothesis 1: exp(N_emb) near-orthogonality.

Does a d-dimensional residual stream hold far more than d nearly orthogonal directions, and does the
model use that regime? Three measurements (method and reading in docs/orthogonality.md):

(a) token embedding (and unembedding, if untied), raw and mean-centred: each vector's max |cos| to the
    others vs a Gaussian null of equal count and dimension and the exact random-vector median; greedy
    capacity curves (pairwise |cos| ≤ ε) vs exp(d ε²/4).
(b) TopK SAEs of growing size (1× … 32× d) on one layer: held-out FVU vs size, and the atoms' max |cos|
    vs the same null.
(c) do learned atoms line up with token embeddings more than random directions with the layer's
    covariance do?
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import geometry as g
from ..errors import SuperposError
from ..stats import bootstrap_ci
from .configs import OrthogonalityConfig



def _say(msg: str) -> None:
    print(f"[orthogonality] {msg}", file=sys.stderr, flush=True)


def _summary(values: np.ndarray, n_boot: int, seed: int) -> dict:
    med, lo, hi = bootstrap_ci(np.median, values, n_boot=n_boot, seed=seed)
    return {"median": med, "ci": [lo, hi], "p10": float(np.quantile(values, 0.1)),
            "p90": float(np.quantile(values, 0.9)), "mean": float(values.mean())}


def run(cfg: OrthogonalityConfig) -> dict:
    """``superpos run orthogonality``: embedding geometry, the dictionary-size sweep, the verdict and report."""
    from ..dictionaries.fitting import fit_dictionary
    from ..dictionaries import PCA, load_dictionary
    from ..dictionaries.io import CONFIG, write_json_atomic
    from ..harvest import HarvestConfig, harvest
    from ..metrics import reconstruction_metrics
    from ..models import load_model
    from ..store import ActivationStore

    if not cfg.expansions or min(cfg.expansions) <= 0:
        raise SuperposError("--expansions must be positive numbers")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    d = lm.d_model
    layer = cfg.layer if cfg.layer is not None else lm.n_layers // 2
    lm.check_layers([layer])
    if cfg.store:  # fail before the long token-geometry part, not after it
        with ActivationStore(cfg.store) as st:
            st.check_layer(layer)
            if st.d_model != d:
                raise SuperposError(f"store {cfg.store} has d_model {st.d_model}, model {lm.name} has {d}")
    W_E = lm.W_E_VD.detach().float().cpu().numpy()
    W_U = lm.W_U_VD.detach().float().cpu().numpy()
    tied = W_E.shape == W_U.shape and np.array_equal(W_E, W_U)
    res: dict = {"config": asdict(cfg), "model": lm.name, "d_model": d, "layer": layer, "tied_embeddings": tied}

    # (a) token directions -------------------------------------------------------------------------
    sets = {"embedding": W_E, "embedding (centred)": W_E - W_E.mean(0)}
    if not tied:
        sets.update({"unembedding": W_U, "unembedding (centred)": W_U - W_U.mean(0)})
    n_vocab = len(W_E)
    null = g.gaussian_null(n_vocab, d, seed=cfg.seed)
    res["tokens"] = {}
    maxcos = {}
    for name, V in {**sets, "random null": null}.items():
        t0 = time.perf_counter()
        mc = g.max_abs_cos(V).value
        secs = time.perf_counter() - t0
        maxcos[name] = mc
        res["tokens"][name] = {"n": len(V), "max_abs_cos": _summary(mc, cfg.n_boot, cfg.seed), "seconds": secs}
        _say(f"{name}: median max|cos| {np.median(mc):.3f} ({secs:.1f} s for {len(V):,} × {d})")
    res["tokens_theory_median"] = g.expected_max_abs_cos(n_vocab, d)
    sub = np.random.default_rng(cfg.seed).choice(n_vocab, size=min(cfg.capacity_sample, n_vocab), replace=False)
    res["capacity"] = {"eps": list(cfg.eps_grid), "n_candidates": len(sub),
                       "random_code_bound": g.random_code_size(d, cfg.eps_grid).tolist()}
    for name, V in {**sets, "random null": null}.items():
        caps = g.greedy_capacity(V[sub], cfg.eps_grid, seed=cfg.seed)
        res["capacity"][name] = caps.tolist()
        _say(f"capacity {name}: {dict(zip(cfg.eps_grid, caps.tolist()))}")

    # (b) dictionaries of growing size ---------------------------------------------------------------
    if cfg.store:
        store_path = Path(cfg.store)
    else:
        store_path = out / "acts.h5"
        harvest(HarvestConfig(model=cfg.model, layers=str(layer), tokens=cfg.harvest_tokens, device=cfg.device),
                store_path, lm=lm)
    with ActivationStore(store_path) as store:  # a given --store was checked on entry; harvest checks its own
        split = store.split_row(0.9)
        holdout = store.restrict(split, store.n_rows)
        res["store"] = {"path": str(store_path), "rows": store.n_rows, "holdout_rows": store.n_rows - split}
        pca = PCA(n_components=cfg.k).fit(store.restrict(0, split), layer=layer)
        res["pca_fvu"] = reconstruction_metrics(pca, holdout, layer, progress=False).fvu
        res["sweep"] = []
        largest = None
        for e in sorted(cfg.expansions):
            folder = out / "dicts" / f"topk_x{e}"
            if not (folder / CONFIG).exists():
                fit_dictionary(store_path, layer, "topk", folder, {"expansion": float(e), "k": cfg.k,
                               "n_tokens": cfg.fit_tokens, "seed": cfg.seed}, device=cfg.device)
            sae = load_dictionary(folder, device=cfg.device)
            ev = reconstruction_metrics(sae, holdout, layer, progress=False)
            atoms = sae.components_.detach().cpu().numpy()
            mc = g.max_abs_cos(atoms).value
            null_mc = g.max_abs_cos(g.gaussian_null(len(atoms), d, seed=cfg.seed + e)).value
            row = {"expansion": e, "n_atoms": len(atoms), "fvu": ev.fvu, "l0": ev.l0, "dead": ev.dead_fraction,
                   "max_abs_cos": _summary(mc, cfg.n_boot, cfg.seed), "null_median": float(np.median(null_mc)),
                   "theory_median": g.expected_max_abs_cos(len(atoms), d),
                   "frac_above_0_9": float((mc > 0.9).mean())}
            res["sweep"].append(row)
            _say(f"{e}×: FVU {ev.fvu:.4f}, median max|cos| {row['max_abs_cos']['median']:.3f} "
                 f"(null {row['null_median']:.3f})")
            largest = (e, atoms, mc)

        # (c) atoms vs token embeddings ----------------------------------------------------------------
        e, atoms, _ = largest
        best = g.best_abs_cos(atoms, W_E)
        sample = store.restrict(0, split).sample(layer, 20000, seed=cfg.seed)
        cov = np.cov(sample, rowvar=False)
        rng = np.random.default_rng(cfg.seed)
        null_dirs = rng.multivariate_normal(np.zeros(d), cov, size=len(atoms)).astype(np.float32)
        best_null = g.best_abs_cos(null_dirs, W_E)
        diff = bootstrap_ci(lambda a, b: np.median(a) - np.median(b), best, best_null, n_boot=cfg.n_boot, seed=cfg.seed)
        res["alignment"] = {"expansion": e, "atoms": _summary(best, cfg.n_boot, cfg.seed),
                            "null": _summary(best_null, cfg.n_boot, cfg.seed), "median_diff": diff,
                            "frac_atoms_above_null_p99": float((best > np.quantile(best_null, 0.99)).mean())}
    res["verdict"] = verdict(res)
    res["seconds"] = time.perf_counter() - t_start
    write_json_atomic(out / "results.json", res)
    write_report(res, maxcos, out)
    return res


def verdict(res: dict) -> dict:
    """Plain-words verdict from three criteria, each with its number."""
    d = res["d_model"]
    sweep = res["sweep"]
    first, last = sweep[0], sweep[-1]
    fvu_drop = 1 - last["fvu"] / first["fvu"]
    keeps_improving = fvu_drop >= 0.2 and last["n_atoms"] > 4 * d
    near_orth = last["max_abs_cos"]["median"] <= 0.5
    eps = res["capacity"]["eps"]
    i3 = min(range(len(eps)), key=lambda i: abs(eps[i] - 0.3))
    cap = res["capacity"]["embedding (centred)"][i3]
    many_tokens = cap >= 4 * d
    supported = keeps_improving and near_orth and many_tokens
    lines = [
        f"(i) More atoms keep paying off: held-out FVU falls from {first['fvu']:.3f} at {first['n_atoms']} atoms "
        f"({first['expansion']}×) to {last['fvu']:.3f} at {last['n_atoms']} atoms ({last['expansion']}×), a "
        f"{100 * fvu_drop:.0f}% drop {'(≥ 20%: yes)' if keeps_improving else '(needs ≥ 20% beyond 4× d: no)'}.",
        f"(ii) The {last['n_atoms']} atoms stay nearly orthogonal: median max |cos| "
        f"{last['max_abs_cos']['median']:.3f} (95% CI {last['max_abs_cos']['ci'][0]:.3f}–"
        f"{last['max_abs_cos']['ci'][1]:.3f}) vs {last['null_median']:.3f} for random directions "
        f"{'(≤ 0.5: yes)' if near_orth else '(> 0.5: no)'}.",
        f"(iii) Token directions: a greedy packing of the mean-centred embedding keeps {cap:,} of "
        f"{res['capacity']['n_candidates']:,} tokens with pairwise |cos| ≤ {eps[i3]} — {cap / d:.1f}× d "
        f"{'(≥ 4× d: yes)' if many_tokens else '(< 4× d: no)'}; random vectors keep "
        f"{res['capacity']['random null'][i3]:,}.",
    ]
    tok = res["tokens"]
    lines.append(
        f"Context: the token embeddings themselves are far from random-like — median max |cos| "
        f"{tok['embedding']['max_abs_cos']['median']:.3f} raw and {tok['embedding (centred)']['max_abs_cos']['median']:.3f} "
        f"mean-centred vs {tok['random null']['max_abs_cos']['median']:.3f} for random vectors (near-duplicate tokens such "
        f"as case and leading-space variants share directions); the many directions live in the residual stream's "
        f"learned features more than in the raw vocabulary.")
    if supported:
        head = (f"SUPPORTED: layer {res['layer']} of {res['model']} uses far more than d = {d} directions that stay "
                "nearly orthogonal — the over-complete (exp(d)-like) regime, not the d regime.")
    else:
        head = f"NOT SUPPORTED on these criteria for layer {res['layer']} of {res['model']} (d = {d})."
    return {"supported": supported, "headline": head, "criteria": lines[:3], "context": lines[3], "fvu_drop": fvu_drop}


def write_report(res: dict, maxcos: dict, out: Path) -> Path:
    """report.md/.html and figures of an orthogonality run."""
    import matplotlib.pyplot as plt

    from ..report import Report

    rep = Report(f"exp(N_emb) near-orthogonality — {res['model']}, layer {res['layer']}")
    v = res["verdict"]
    rep.heading("Verdict")
    rep.text(v["headline"])
    for line in v["criteria"]:
        rep.text(line)
    rep.text(v["context"])
    d = res["d_model"]

    rep.heading("(a) Token directions")
    rep.text(f"Embedding and unembedding are {'tied (one matrix)' if res['tied_embeddings'] else 'separate'}. "
             f"Each vector's max |cos| to the other {res['tokens']['embedding']['n'] - 1:,}; the random null is "
             f"Gaussian with the same count and dimension; theory = exact median for random unit vectors "
             f"({res['tokens_theory_median']:.3f}).")
    rep.table(["set", "n", "median max|cos|", "95% CI", "p10", "p90", "seconds"],
              [[k, s["n"], s["max_abs_cos"]["median"], f"{s['max_abs_cos']['ci'][0]:.3f}–{s['max_abs_cos']['ci'][1]:.3f}",
                s["max_abs_cos"]["p10"], s["max_abs_cos"]["p90"], s["seconds"]] for k, s in res["tokens"].items()])
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 101)
    for name, mc in maxcos.items():
        ax.hist(mc, bins=bins, histtype="step", density=True, label=name)
    ax.axvline(res["tokens_theory_median"], color="k", ls="--", label="theory (random, median)")
    ax.set(xlabel="max |cos| to any other token", ylabel="density")
    ax.legend(fontsize=8)
    rep.figure(fig, "maxcos_tokens.png", "Max |cos| of each token direction vs the random null")

    cap = res["capacity"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in [k for k in cap if k not in ("eps", "n_candidates", "random_code_bound")]:
        ax.plot(cap["eps"], cap[name], "o-", label=name)
    ax.plot(cap["eps"], cap["random_code_bound"], "k--", label="exp(d ε²/4)")
    ax.axhline(d, color="gray", ls=":", label=f"d = {d}")
    ax.axhline(cap["n_candidates"], color="gray", ls="-.", lw=0.8, label="candidates")
    ax.set(yscale="log", xlabel="ε (pairwise |cos| allowed)", ylabel="directions kept")
    ax.legend(fontsize=8)
    rep.figure(fig, "capacity.png", f"Greedy capacity over {cap['n_candidates']:,} candidates vs exp(dε²/4)")
    rep.table(["ε", *[k for k in cap if k not in ("eps", "n_candidates")]],
              [[e, *[cap[k][i] for k in cap if k not in ("eps", "n_candidates")]] for i, e in enumerate(cap["eps"])])

    rep.heading("(b) Dictionaries of growing size")
    sw = res["sweep"]
    rep.text(f"TopK SAEs (k = {res['config']['k']}, {res['config']['fit_tokens']:,} training tokens each) on layer "
             f"{res['layer']}; FVU on held-out rows ({res['store']['holdout_rows']:,}). PCA with {res['config']['k']} "
             f"components (equal L0): FVU {res['pca_fvu']:.4f}.")
    rep.table(["size", "atoms", "FVU", "L0", "dead", "median max|cos|", "95% CI", "null", "theory", "> 0.9"],
              [[f"{r['expansion']}×", r["n_atoms"], r["fvu"], r["l0"], r["dead"], r["max_abs_cos"]["median"],
                f"{r['max_abs_cos']['ci'][0]:.3f}–{r['max_abs_cos']['ci'][1]:.3f}", r["null_median"],
                r["theory_median"], r["frac_above_0_9"]] for r in sw])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["n_atoms"] for r in sw], [r["fvu"] for r in sw], "o-", label="TopK SAE")
    ax.axhline(res["pca_fvu"], color="gray", ls="--", label=f"PCA, {res['config']['k']} components")
    ax.axvline(d, color="gray", ls=":", label="d")
    ax.set(xscale="log", xlabel="dictionary size (atoms)", ylabel="held-out FVU")
    ax.legend(fontsize=8)
    rep.figure(fig, "fvu_vs_size.png", "Reconstruction error vs dictionary size")
    fig, ax = plt.subplots(figsize=(7, 4))
    n = [r["n_atoms"] for r in sw]
    med = np.array([r["max_abs_cos"]["median"] for r in sw])
    ci = np.array([r["max_abs_cos"]["ci"] for r in sw]).T
    ax.errorbar(n, med, yerr=[med - ci[0], ci[1] - med], fmt="o-", label="learned atoms (median, 95% CI)")
    ax.plot(n, [r["null_median"] for r in sw], "s--", label="random null")
    ax.plot(n, [r["theory_median"] for r in sw], "k:", label="theory")
    ax.set(xscale="log", xlabel="dictionary size (atoms)", ylabel="median max |cos|", ylim=(0, 1))
    ax.legend(fontsize=8)
    rep.figure(fig, "maxcos_vs_size.png", "Atoms' max |cos| vs dictionary size, against random vectors")

    al = res["alignment"]
    rep.heading("(c) Do atoms line up with token embeddings?")
    diff = al["median_diff"]
    rep.text(f"For each atom of the {al['expansion']}× SAE, the best |cos| to any token embedding: median "
             f"{al['atoms']['median']:.3f}, vs {al['null']['median']:.3f} for random directions drawn with the layer's "
             f"covariance; difference {diff[0]:+.3f} (95% CI {diff[1]:+.3f} to {diff[2]:+.3f}). "
             f"{100 * al['frac_atoms_above_null_p99']:.1f}% of atoms exceed the null's 99th percentile.")
    rep.reproduce("orthogonality", res["config"])
    rep.text(f"Run time: {res.get('seconds', 0):.0f} s.")
    return rep.save(out)

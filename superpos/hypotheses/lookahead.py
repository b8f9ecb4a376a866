"""Lookahead: probes at position i for the tokens at i+1, i+2, i+3 per layer, against what the current token
alone predicts (a bigram table and a probe on its embedding). Method and reading in docs/probes.md."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import SuperposError
from ..stats import cluster_bootstrap_mean
from .configs import LookaheadConfig
from .probes import _say, conditional_mode_baseline, fit_ridge_probe, frequent_classes, probe_accuracy, probe_by_depth


def run_lookahead(cfg: LookaheadConfig) -> dict:
    """Probes at position i for the token at i + k, per layer, against what the current token alone gives:
    the best conditional-mode guess (bigram table from the training split) and a probe on the current
    token's embedding. Lookahead = accuracy above both, at the same held-out positions."""
    if any(o <= 0 for o in cfg.offsets):
        raise SuperposError("run lookahead takes positive offsets (tokens after the probed position)")
    from ..dictionaries.io import write_json_atomic
    from ..models import load_model
    from ..residuals import contexts_from_corpus, sample_residuals

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    tokens = contexts_from_corpus(lm, cfg.corpus, cfg.contexts, cfg.context_length)
    sample = sample_residuals(lm, tokens, cfg.per_context, seed=cfg.seed, max_offset=max(cfg.offsets))
    train, test = sample.split_contexts(0.75, seed=cfg.seed)
    W_E = lm.W_E_VD.detach().float().cpu()
    res: dict = {"config": asdict(cfg), "model": lm.name, "layers": sample.layers, "n_positions": sample.n_positions,
                 "offsets": {}}
    for k in cfg.offsets:
        _say(f"lookahead +{k}")
        r = probe_by_depth(sample, k, cfg.n_classes, cfg.ridge, cfg.seed, cfg.n_boot)
        r.pop("probes")
        classes = np.sort(frequent_classes(train.offset_tokens(k), cfg.n_classes))
        y_tr, y_te = train.offset_tokens(k), test.offset_tokens(k)
        keep = np.isin(y_te, classes)
        ctx = test.ctx_P[keep]
        guess = conditional_mode_baseline(train.token_P, y_tr, test.token_P[keep], classes)
        r["bigram"] = dict(zip(("mean", "lo", "hi"), cluster_bootstrap_mean(
            (guess == y_te[keep]).astype(float), ctx, n_boot=cfg.n_boot, seed=cfg.seed)))
        emb_probe = fit_ridge_probe(W_E[train.token_P], y_tr, classes, cfg.ridge)
        correct, _ = probe_accuracy(emb_probe, W_E[test.token_P], y_te)
        r["embedding_probe"] = dict(zip(("mean", "lo", "hi"), cluster_bootstrap_mean(
            correct, ctx, n_boot=cfg.n_boot, seed=cfg.seed)))
        base = np.maximum((guess == y_te[keep]).astype(float), correct)  # per position: either baseline right
        r["baseline_either"] = float(base.mean())
        # best layer minus the stronger baseline, paired per position
        best = int(np.argmax(r["acc"]["mean"]))
        j = sample.layers.index(sample.layers[best])
        probe = fit_ridge_probe(train.resid_LPD[j], y_tr, classes, cfg.ridge)
        c_best, _ = probe_accuracy(probe, test.resid_LPD[j], y_te)
        stronger = (guess == y_te[keep]).astype(float) if r["bigram"]["mean"] >= r["embedding_probe"]["mean"] else correct
        m, lo, hi = cluster_bootstrap_mean(c_best - stronger, ctx, n_boot=cfg.n_boot, seed=cfg.seed)
        r["best_layer"] = sample.layers[best]
        r["gain_over_baseline"] = {"mean": m, "lo": lo, "hi": hi}
        res["offsets"][f"+{k}"] = r
    lines = []
    for name, r in res["offsets"].items():
        g = r["gain_over_baseline"]
        lines.append(f"token {name}: best probe (layer {r['best_layer']}) {max(r['acc']['mean']):.3f} vs current-token "
                     f"baselines {r['bigram']['mean']:.3f} (bigram table) / {r['embedding_probe']['mean']:.3f} "
                     f"(embedding probe); gain {g['mean']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}]")
    far = [r for name, r in res["offsets"].items() if name != "+1"]
    beyond = [r["gain_over_baseline"]["lo"] > 0 for r in far]
    head = ("Lookahead beyond bigram statistics: YES — the residual at i predicts tokens i+2/i+3 better than the "
            "current token alone does." if beyond and all(beyond) else
            "Lookahead beyond bigram statistics: " + ("PARTLY" if any(beyond) else "NO") +
            " — see the per-offset gains.")
    res["verdict"] = {"headline": head, "criteria": lines}
    res["timings"] = {"total_s": time.perf_counter() - t0}
    write_json_atomic(out / "results.json", res)
    _write_lookahead_report(res, out)
    return res


def _write_lookahead_report(res: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    from ..report import Report, band

    cfg = res["config"]
    rep = Report(f"Lookahead probes — {res['model']}")
    rep.heading("Verdict")
    rep.text(res["verdict"]["headline"])
    for line in res["verdict"]["criteria"]:
        rep.text(line)
    x = res["layers"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in res["offsets"].items():
        band(ax, x, r["acc"], f"probe for token {name}")
        ax.axhline(max(r["bigram"]["mean"], r["embedding_probe"]["mean"]), ls=":", color=ax.lines[-1].get_color(),
                   lw=1)
    ax.set(xlabel="residual layer at position i", ylabel="held-out top-1 accuracy")
    ax.legend(fontsize=8)
    rep.figure(fig, "lookahead.png", "Probes from position i for the tokens at i+1, i+2, i+3 (95% CIs over held-out "
               "contexts); dotted: the stronger current-token-only baseline for each")
    rep.table(["token", "best layer", "best acc", "bigram table", "embedding probe", "gain", "95% CI", "coverage"],
              [[name, r["best_layer"], max(r["acc"]["mean"]), r["bigram"]["mean"], r["embedding_probe"]["mean"],
                r["gain_over_baseline"]["mean"], f"{r['gain_over_baseline']['lo']:+.3f} to {r['gain_over_baseline']['hi']:+.3f}",
                r["coverage"]] for name, r in res["offsets"].items()])
    rep.reproduce("lookahead", cfg)
    return rep.save(out)

"""Lookahead: probes at position i for the tokens at i+1, i+2, i+3 per layer, against what the current token
alone predicts (a bigram table and a probe on its embedding). Method and reading in docs/probes.md."""
from __future__ import annotations

import time

import numpy as np

from ..errors import ConfigError
from ..stats import cluster_interval
from .configs import LookaheadConfig
from .results import LookaheadResult, LookaheadTarget
from .probes import _say, conditional_mode_baseline, fit_ridge_probe, frequent_classes, probe_accuracy, probe_by_depth


def run_lookahead(cfg: LookaheadConfig) -> LookaheadResult:
    """Probes at position i for the token at i + k, per layer, against what the current token alone gives:
    the best conditional-mode guess (bigram table from the training split) and a probe on the current
    token's embedding. Lookahead = accuracy above both, at the same held-out positions."""
    if any(o <= 0 for o in cfg.offsets):
        raise ConfigError("offsets", "{field} must be positive for lookahead (tokens after the probed position)")
    from ..residuals import sample_residuals
    from .opening import open_experiment
    from .reports.lookahead import write_report
    from .verdicts import lookahead as verdict

    t0 = time.perf_counter()
    out, lm, tokens = open_experiment(cfg)
    sample = sample_residuals(lm, tokens, cfg.per_context, seed=cfg.seed, max_offset=max(cfg.offsets))
    train, test = sample.split_contexts(0.75, seed=cfg.seed)
    W_E = lm.W_E_VD.detach().float().cpu()
    res = LookaheadResult(config=cfg, model=lm.name, layers=sample.layers, n_positions=sample.n_positions,
                          offsets={})
    for k in cfg.offsets:
        _say(f"lookahead +{k}")
        r, _ = probe_by_depth(sample, k, cfg.n_classes, cfg.ridge, cfg.seed, cfg.n_boot)
        classes = np.sort(frequent_classes(train.offset_tokens(k), cfg.n_classes))
        y_tr, y_te = train.offset_tokens(k), test.offset_tokens(k)
        keep = np.isin(y_te, classes)
        ctx = test.ctx_P[keep]
        bigram_right = (conditional_mode_baseline(train.token_P, y_tr, test.token_P[keep], classes)
                        == y_te[keep]).astype(float)
        emb_probe = fit_ridge_probe(W_E[train.token_P], y_tr, classes, cfg.ridge)
        emb_right, _ = probe_accuracy(emb_probe, W_E[test.token_P], y_te)
        bigram = cluster_interval(bigram_right, ctx, n_boot=cfg.n_boot, seed=cfg.seed)
        embedding = cluster_interval(emb_right, ctx, n_boot=cfg.n_boot, seed=cfg.seed)
        # best layer minus the stronger baseline, paired per position
        best = int(np.argmax(r.acc.mean))
        probe = fit_ridge_probe(train.resid_LPD[best], y_tr, classes, cfg.ridge)
        best_right, _ = probe_accuracy(probe, test.resid_LPD[best], y_te)
        stronger = bigram_right if bigram.mean >= embedding.mean else emb_right
        res.offsets[f"+{k}"] = LookaheadTarget(
            **vars(r), bigram=bigram, embedding_probe=embedding,
            baseline_either=float(np.maximum(bigram_right, emb_right).mean()),  # per position: either one right
            best_layer=sample.layers[best],
            gain_over_baseline=cluster_interval(best_right - stronger, ctx, n_boot=cfg.n_boot, seed=cfg.seed))
    res.verdict = verdict(res)
    res.timings["total_s"] = time.perf_counter() - t0
    res.save(out)
    write_report(res, out)
    return res

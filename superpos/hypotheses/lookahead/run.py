"""Lookahead: probes at position i for the tokens at i+1, i+2, i+3 per layer, against baselines that see the
context: the back-off n-gram over the preceding tokens (n = 2, 3 or 4) and a probe on the model's own next-token
distribution at i. The layer and the n are chosen on validation contexts; the chosen probe must beat both
baselines on test contexts. Method and reading in docs/probes.md."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from superpos.errors import ConfigError
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.lookahead.ngrams import BackoffNgram
from superpos.hypotheses.lookahead.result import LookaheadResult, LookaheadTarget
from superpos.hypotheses.probes.probe import _say, fit_ridge_probe, frequent_classes, probe_accuracy, probe_by_depth
from superpos.model.residuals import ResidualSample
from superpos.stats import Interval, cluster_interval

NGRAM_ORDERS = (2, 3, 4)


def guess_features(lm, sample: ResidualSample, classes: np.ndarray, chunk: int = 512) -> torch.Tensor:
    """(P, len(classes)) log-probabilities of the model's own next-token distribution at the sampled positions,
    on the probed classes: what "the model's guess" offers a linear read-out."""
    from superpos.hypotheses.lenses.lens import unembed

    h, cols = sample.at(lm.n_layers), torch.from_numpy(classes)
    with torch.no_grad():
        return torch.cat([F.log_softmax(unembed(lm, h[i:i + chunk]), -1).cpu()[:, cols]
                          for i in range(0, len(h), chunk)])


def _right(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (pred == y).astype(np.float64)


def lookahead_target(lm, sample: ResidualSample, k: int, cfg: LookaheadConfig) -> LookaheadTarget:
    """One offset: the per-layer curve (train → test), the layer and the n-gram order chosen on validation contexts
    (fit → validation), then the paired gains of that layer over each baseline on test contexts."""
    curve, _ = probe_by_depth(sample, k, cfg.n_classes, cfg.ridge, cfg.seed, cfg.n_boot)
    train, test = sample.split_contexts(0.75, seed=cfg.seed)
    fit, val = train.split_contexts(0.8, seed=cfg.seed + 1)
    classes = np.sort(frequent_classes(train.offset_tokens(k), cfg.n_classes))
    rows = {name: np.flatnonzero(np.isin(s.offset_tokens(k), classes)) for name, s in
            (("fit", fit), ("val", val), ("test", test))}
    y = {"fit": fit.offset_tokens(k), "val": val.offset_tokens(k), "train": train.offset_tokens(k),
         "test": test.offset_tokens(k)}
    yv, yt = y["val"][rows["val"]], y["test"][rows["test"]]

    def ctx_tokens(s):  # every position of the split's contexts counts for the n-gram tables
        return s.tokens_NC[np.unique(s.ctx_P)]

    def ngram(order, on, s, r):
        return BackoffNgram(order, k, classes).fit(ctx_tokens(on)).predict(s.tokens_NC, s.ctx_P[r], s.pos_P[r])

    # choices on validation
    val_acc = [probe_accuracy(fit_ridge_probe(fit.resid_LPD[j], y["fit"], classes, cfg.ridge), val.resid_LPD[j],
                              y["val"])[0].mean() for j in range(len(sample.layers))]
    best = int(np.argmax(val_acc))
    order = max(NGRAM_ORDERS, key=lambda n: _right(ngram(n, fit, val, rows["val"]), yv).mean())

    # scored on test, fitted on all training contexts
    ctx = test.ctx_P[rows["test"]]
    ngram_right = {n: _right(ngram(n, train, test, rows["test"]), yt) for n in NGRAM_ORDERS}
    g_train, g_test = guess_features(lm, train, classes), guess_features(lm, test, classes)
    guess_right = _right(fit_ridge_probe(g_train, y["train"], classes, cfg.ridge).predict(g_test[rows["test"]]), yt)
    probe_right = _right(fit_ridge_probe(train.resid_LPD[best], y["train"], classes, cfg.ridge)
                         .predict(test.resid_LPD[best][rows["test"]]), yt)

    def iv(v) -> Interval:
        return cluster_interval(v, ctx, n_boot=cfg.n_boot, seed=cfg.seed)

    return LookaheadTarget(**vars(curve), ngram={n: iv(v) for n, v in ngram_right.items()}, ngram_order=order,
                           model_guess=iv(guess_right), best_layer=sample.layers[best], best_layer_acc=iv(probe_right),
                           gain_over_ngram=iv(probe_right - ngram_right[order]),
                           gain_over_guess=iv(probe_right - guess_right))


def run(cfg: LookaheadConfig) -> LookaheadResult:
    """Probes at position i for the token at i + k, per layer, against the context-aware baselines."""
    if any(o <= 0 for o in cfg.offsets):
        raise ConfigError("offsets", "{field} must be positive for lookahead (tokens after the probed position)")
    from superpos.hypotheses.common import open_experiment
    from superpos.model.residuals import sample_residuals

    out, lm, tokens = open_experiment(cfg)
    sample = sample_residuals(lm, tokens, cfg.per_context, seed=cfg.seed, max_offset=max(cfg.offsets))
    res = LookaheadResult(config=cfg, model=lm.name, layers=sample.layers, n_positions=sample.n_positions,
                          offsets={})
    for k in cfg.offsets:
        _say(f"lookahead +{k}")
        res.offsets[f"+{k}"] = lookahead_target(lm, sample, k, cfg)
    return res

"""Lookahead: is the token at i + k held in the residual at i beyond what the context's n-grams and the model's own
next-token distribution at i already give? One nested comparison per offset k: a logistic probe on [n-gram features
+ the model's log-probs at i] against the same probe with the residual at i added (the layer, the L2 strengths and
the n of the n-gram floor chosen on validation contexts), scored on test contexts as the paired per-position gain in
log-likelihood. The n-gram tables are counted on every token read except the test contexts. Method and reading in
docs/probes.md."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from superpos.errors import ConfigError
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.lookahead.logistic import Features, LogisticProbe, fit_logistic, ngram_features
from superpos.hypotheses.lookahead.ngrams import NgramCounts, backoff_guess
from superpos.hypotheses.lookahead.result import LookaheadResult, LookaheadTarget, NestedGain
from superpos.hypotheses.probes.probe import _say, fit_ridge_probe, frequent_classes, probe_by_depth
from superpos.model.residuals import ResidualSample
from superpos.stats import Interval, cluster_interval

NGRAM_ORDERS = (2, 3, 4)  # the n-gram floors; the features use histories of 0 .. max − 1 tokens


def model_guess(lm, sample: ResidualSample, classes: np.ndarray, chunk: int = 512) -> tuple[torch.Tensor, np.ndarray]:
    """The model's own next-token distribution at the sampled positions: its log-probabilities on the probed
    classes (P, K) and its top guess over the whole vocabulary (P,)."""
    from superpos.hypotheses.lenses.lens import unembed

    h, cols = sample.at(lm.n_layers), torch.from_numpy(classes)
    logp, top = [], []
    with torch.no_grad():
        for i in range(0, len(h), chunk):
            lp = F.log_softmax(unembed(lm, h[i:i + chunk]), -1).cpu()
            logp.append(lp[:, cols])
            top.append(lp.argmax(-1).numpy())
    return torch.cat(logp), np.concatenate(top)


def ngram_table(k: int, classes: np.ndarray, counted: list[np.ndarray]) -> NgramCounts:
    """The n-gram counts for offset ``k``, on the rows of every array in ``counted`` (rows of one length)."""
    return NgramCounts(max(NGRAM_ORDERS), k, classes).fit(np.concatenate([c for c in counted if len(c)]))


def context_rows(s: ResidualSample) -> np.ndarray:
    """Every token of the contexts a split samples from (whole rows)."""
    return s.tokens_NC[np.unique(s.ctx_P)]


def choose_l2(f_fit: Features, y_fit: np.ndarray, f_val: Features, y_val: np.ndarray, n_classes: int,
              grid: list[float], device: str) -> tuple[float, LogisticProbe]:
    """The L2 strength of ``grid`` whose probe, fitted on ``f_fit``, has the best mean validation log-likelihood,
    and that probe."""
    fitted = {l2: fit_logistic(f_fit, y_fit, n_classes, l2, device) for l2 in grid}
    best = max(grid, key=lambda l2: fitted[l2].log_likelihood(f_val, y_val).mean())
    return best, fitted[best]


def nested_gain(base_tr: Features, extra_tr: torch.Tensor, y_tr: np.ndarray, base_te: Features,
                extra_te: torch.Tensor, y_te: np.ndarray, ctx_te: np.ndarray, n_classes: int, l2_base: float,
                l2_full: float, n_boot: int, seed: int, device: str = "cpu") -> dict:
    """Fit the base probe and the base + ``extra`` probe on the training rows and score both on the test rows:
    per-position log-likelihoods and right/wrong, and the paired gains with intervals over test contexts."""
    base = fit_logistic(base_tr, y_tr, n_classes, l2_base, device)
    full = fit_logistic(base_tr.with_block(extra_tr), y_tr, n_classes, l2_full, device)
    full_te = base_te.with_block(extra_te)
    ll_b, ll_f = base.log_likelihood(base_te, y_te), full.log_likelihood(full_te, y_te)
    ok_b = (base.predict(base_te) == y_te).astype(float)
    ok_f = (full.predict(full_te) == y_te).astype(float)

    def iv(v) -> Interval:
        return cluster_interval(v, ctx_te, n_boot=n_boot, seed=seed)

    return dict(base_loglik=iv(ll_b), full_loglik=iv(ll_f), gain=iv(ll_f - ll_b), base_acc=iv(ok_b),
                full_acc=iv(ok_f), acc_gain=iv(ok_f - ok_b))


def _right(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (pred == y).astype(np.float64)


def lookahead_target(lm, sample: ResidualSample, k: int, cfg: LookaheadConfig,
                     extra_NC: np.ndarray | None = None) -> LookaheadTarget:
    """One offset: the per-layer curve of ridge probes on the residual alone (train → test, for the figure), then
    the nested comparison: choices on validation contexts (fit → val), scored on test contexts (train → test).

    ``extra_NC``: token rows read besides the probed contexts, counted in every n-gram table (the test contexts
    never are; training positions' n-gram features leave their own context out)."""
    extra = [] if extra_NC is None else [extra_NC]
    curve, _ = probe_by_depth(sample, k, cfg.n_classes, cfg.ridge, cfg.seed, cfg.n_boot)
    train, test = sample.split_contexts(0.75, seed=cfg.seed)
    fit, val = train.split_contexts(0.8, seed=cfg.seed + 1)
    classes = np.sort(frequent_classes(train.offset_tokens(k), cfg.n_classes))
    K, device = len(classes), str(getattr(lm, "device", "cpu"))
    split = {"fit": fit, "val": val, "train": train, "test": test}
    rows = {n: np.flatnonzero(np.isin(s.offset_tokens(k), classes)) for n, s in split.items()}
    y = {n: np.searchsorted(classes, s.offset_tokens(k)[rows[n]]) for n, s in split.items()}
    guess = {n: model_guess(lm, s, classes) for n, s in split.items()}

    def features(table: NgramCounts, name: str, own: bool) -> tuple[Features, np.ndarray]:
        s, r = split[name], rows[name]
        counts = table.counts(s.tokens_NC, s.ctx_P[r], s.pos_P[r], exclude_own=own)
        return Features(*ngram_features(counts), guess[name][0][r]), counts

    # choices on validation: tables without the validation contexts
    fit_table = ngram_table(k, classes, extra + [context_rows(fit)])
    f_fit, _ = features(fit_table, "fit", own=True)
    f_val, c_val = features(fit_table, "val", own=False)
    order = max(NGRAM_ORDERS, key=lambda n: (backoff_guess(c_val, classes, n) == classes[y["val"]]).mean())
    l2_base, base = choose_l2(f_fit, y["fit"], f_val, y["val"], K, cfg.l2, device)
    z_fit, z_val = base.logits(f_fit).detach().cpu(), base.logits(f_val).detach().cpu()
    screen = []
    for j in range(len(sample.layers)):  # the layer whose residual adds most to the base probe's logits (ridge)
        X_fit = torch.cat([z_fit, fit.resid_LPD[j][torch.from_numpy(rows["fit"])]], 1)
        X_val = torch.cat([z_val, val.resid_LPD[j][torch.from_numpy(rows["val"])]], 1)
        ridge = fit_ridge_probe(X_fit, y["fit"], np.arange(K), cfg.ridge)
        screen.append(float((ridge.predict(X_val) == y["val"]).mean()))
    best = int(np.argmax(screen))

    def resid(name: str) -> torch.Tensor:
        return split[name].resid_LPD[best][torch.from_numpy(rows[name])]

    l2_full, _ = choose_l2(f_fit.with_block(resid("fit")), y["fit"], f_val.with_block(resid("val")), y["val"], K,
                        cfg.l2, device)

    # scored on test: tables of every token read except the test contexts
    table = ngram_table(k, classes, extra + [context_rows(train)])
    f_train, _ = features(table, "train", own=True)
    f_test, c_test = features(table, "test", own=False)
    ctx, yt = test.ctx_P[rows["test"]], classes[y["test"]]
    g = nested_gain(f_train, resid("train"), y["train"], f_test, resid("test"), y["test"], ctx, K, l2_base, l2_full,
                    cfg.n_boot, cfg.seed, device)

    def iv(v) -> Interval:
        return cluster_interval(v, ctx, n_boot=cfg.n_boot, seed=cfg.seed)

    ngram_right = {n: _right(backoff_guess(c_test, classes, n), yt) for n in NGRAM_ORDERS}
    if k == 1:
        floor, floor_name = iv(_right(guess["test"][1][rows["test"]], yt)), "the model's own top guess"
    else:
        floor, floor_name = ngram_right[order], f"the back-off {order}-gram (n chosen on validation)"
        floor = iv(floor)
    nested = NestedGain(layer=sample.layers[best], layer_screen=screen, l2_base=l2_base, l2_full=l2_full, **g,
                        floor=floor, floor_name=floor_name, train_positions=len(rows["train"]),
                        test_positions=len(rows["test"]))
    return LookaheadTarget(**vars(curve), ngram={n: iv(v) for n, v in ngram_right.items()}, ngram_order=order,
                           nested=nested)


def run(cfg: LookaheadConfig) -> LookaheadResult:
    """Per offset, the nested comparison of [n-grams + the model's log-probs] with and without the residual."""
    if any(o <= 0 for o in cfg.offsets):
        raise ConfigError("offsets", "{field} must be positive for lookahead (tokens after the probed position)")
    if not cfg.l2:
        raise ConfigError("l2", "{field} needs at least one strength")
    from superpos.hypotheses.common import open_experiment
    from superpos.model.residuals import contexts_from_corpus, sample_residuals

    out, lm, tokens = open_experiment(cfg)
    more = -(-cfg.ngram_tokens // cfg.context_length)  # whole contexts after the probed ones
    read = contexts_from_corpus(lm, cfg.corpus, len(tokens) + more, cfg.context_length) if more else tokens
    extra = read[len(tokens):]
    sample = sample_residuals(lm, tokens, cfg.per_context, seed=cfg.seed, max_offset=max(cfg.offsets))
    train, test = sample.split_contexts(0.75, seed=cfg.seed)
    _, top = model_guess(lm, test, np.zeros(1, dtype=np.int64))
    res = LookaheadResult(config=cfg, model=lm.name, layers=sample.layers, n_positions=sample.n_positions,
                          offsets={}, ngram_tokens=int(extra.size + context_rows(train).size),
                          model_top1=cluster_interval(_right(top, test.next_P), test.ctx_P, n_boot=cfg.n_boot,
                                                      seed=cfg.seed))
    for k in cfg.offsets:
        _say(f"lookahead +{k}")
        res.offsets[f"+{k}"] = lookahead_target(lm, sample, k, cfg, extra)
    return res

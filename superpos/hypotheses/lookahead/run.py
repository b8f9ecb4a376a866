"""Lookahead: is the token at i + k held in the residual at i beyond what the context's n-grams and the model's own
next-token distribution at i already give? One nested comparison per offset k: a logistic probe on [n-gram features
+ the model's log-probs at i + the embedding of token i (layer 0, calibrated first)] against the same probe with
the residual at i at a later layer added (the layer, the L2 strengths and
the n of the n-gram floor chosen on validation contexts), scored on test contexts as the paired per-position gain in
log-likelihood, beside a planted positive control (the same comparison with a weak noisy one-hot of the target
appended to the residual). Train, validation and test are split by document where the contexts hold enough
documents (by context otherwise), and the n-gram tables are counted on every token read except those of the
held-out documents. Method and reading in docs/probes.md."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from superpos.errors import ConfigError, SuperposError
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.lookahead.logistic import Features, LogisticProbe, fit_logistic, ngram_features
from superpos.hypotheses.lookahead.ngrams import NgramCounts, backoff_guess
from superpos.hypotheses.lookahead.result import MIN_DOCUMENTS, LookaheadResult, LookaheadTarget, NestedGain
from superpos.hypotheses.probes.probe import _say, fit_ridge_probe, frequent_classes, probe_by_depth
from superpos.model.residuals import ResidualSample
from superpos.stats import Interval, cluster_interval

NGRAM_ORDERS = (2, 3, 4)  # the n-gram floors; the features use histories of 0 .. max − 1 tokens
SHARES = {"test": 0.25, "val": 0.15}  # of the positions, in whole units; the rest fits (val + fit: "train")


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
    """The n-gram counts for offset ``k``, on the rows of every array in ``counted`` (rows of one length; tokens
    written -1 are left out)."""
    return NgramCounts(max(NGRAM_ORDERS), k, classes).fit(np.concatenate([c for c in counted if len(c)]))


def context_rows(s: ResidualSample) -> np.ndarray:
    """Every token of the contexts a split samples from (whole rows)."""
    return s.tokens_NC[np.unique(s.ctx_P)]


@dataclass
class Split:
    """Which unit (a document, or a context when the contexts hold too few documents) each token belongs to, and
    which units are held out for validation and for test; every other unit fits."""

    unit_NC: np.ndarray  # unit id of every token of the probed contexts
    by: str  # "documents" or "contexts"
    val: np.ndarray  # unit ids
    test: np.ndarray

    def part(self, s: ResidualSample) -> np.ndarray:
        """Per position of ``s``: "fit", "val" or "test" (by the unit of the token at i)."""
        u = self.unit_NC[s.ctx_P, s.pos_P]
        return np.where(np.isin(u, self.test), "test", np.where(np.isin(u, self.val), "val", "fit"))

    def counted(self, tokens_NC: np.ndarray, left_out: np.ndarray) -> np.ndarray:
        """``tokens_NC`` (the probed contexts) with the tokens of the ``left_out`` units written -1."""
        return np.where(np.isin(self.unit_NC, left_out), -1, tokens_NC)


def split_units(tokens_NC: np.ndarray, doc_NC: np.ndarray | None, s: ResidualSample, seed: int) -> Split:
    """Assign whole units to test and validation, about ``SHARES`` of the sampled positions each (at least one
    unit each, and one left to fit): documents when the contexts hold at least ``MIN_DOCUMENTS`` of them,
    contexts otherwise."""
    by_doc = doc_NC is not None and len(np.unique(doc_NC[s.ctx_P, s.pos_P])) >= MIN_DOCUMENTS
    unit_NC = np.asarray(doc_NC) if by_doc else np.broadcast_to(np.arange(len(tokens_NC))[:, None], tokens_NC.shape)
    units, n = np.unique(unit_NC[s.ctx_P, s.pos_P], return_counts=True)
    if len(units) < 3:
        raise SuperposError("lookahead needs at least 3 contexts to split into fit, validation and test")
    order = np.random.default_rng(seed).permutation(len(units))
    cum = np.cumsum(n[order]) / n.sum()
    n_test = min(max(1, int(np.searchsorted(cum, SHARES["test"]) + 1)), len(units) - 2)
    n_val = min(max(1, int(np.searchsorted(cum, SHARES["test"] + SHARES["val"]) + 1) - n_test),
                len(units) - 1 - n_test)
    return Split(unit_NC, "documents" if by_doc else "contexts", units[order[n_test:n_test + n_val]],
                 units[order[:n_test]])


L2_EXTENSIONS = 4  # how far choose_l2 goes past the largest L2 of the grid (×10 each)


def choose_l2(f_fit: Features, y_fit: np.ndarray, f_val: Features, y_val: np.ndarray, n_classes: int,
              grid: list[float], device: str, base: LogisticProbe | None = None,
              l2_base: float | None = None) -> tuple[float, LogisticProbe]:
    """The L2 strength of ``grid`` whose probe, fitted on ``f_fit``, has the best mean validation log-likelihood,
    and that probe. With ``base`` (fitted with ``l2_base`` on the first columns), the grid is the added block's
    L2: each fit starts at ``base`` and keeps ``l2_base`` on the shared block. While the best is the largest
    strength tried, the grid goes on upward by factors of 10 (at most ``L2_EXTENSIONS`` times): a strength at the
    edge of what was tried is not a choice, and an under-regularised probe reads a block that carries the target
    as a loss."""
    fitted, score = {}, {}

    def fit(l2: float) -> None:
        fitted[l2] = (fit_logistic(f_fit, y_fit, n_classes, l2, device) if base is None else
                      fit_logistic(f_fit, y_fit, n_classes, l2_base, device, init=base, l2_extra=l2))
        score[l2] = float(fitted[l2].log_likelihood(f_val, y_val).mean())

    for l2 in sorted(grid):
        fit(l2)
    for _ in range(L2_EXTENSIONS):
        if max(score, key=score.get) != max(score):
            break
        fit(10 * max(score))
    best = max(score, key=score.get)
    return best, fitted[best]


def nested_gain(base_tr: Features, extra_tr: torch.Tensor, y_tr: np.ndarray, base_te: Features,
                extra_te: torch.Tensor, y_te: np.ndarray, ctx_te: np.ndarray, n_classes: int, l2_base: float,
                l2_full: float, n_boot: int, seed: int, device: str = "cpu",
                base: LogisticProbe | None = None) -> tuple[dict, LogisticProbe, LogisticProbe]:
    """Fit the base probe (unless given) and the base + ``extra`` probe on the training rows, the latter from the
    former (warm start, the base's L2 on the shared block, ``l2_full`` on ``extra``), and score both on the test
    rows: per-position log-likelihoods and right/wrong, the paired gains with intervals over test contexts, and
    whether each fit converged (and, under "ll", each position's log-likelihood under both); and the base and full
    probes."""
    base = base or fit_logistic(base_tr, y_tr, n_classes, l2_base, device)
    full = fit_logistic(base_tr.with_block(extra_tr), y_tr, n_classes, l2_base, device, init=base, l2_extra=l2_full)
    full_te = base_te.with_block(extra_te)
    ll_b, ll_f = base.log_likelihood(base_te, y_te), full.log_likelihood(full_te, y_te)
    ok_b = (base.predict(base_te) == y_te).astype(float)
    ok_f = (full.predict(full_te) == y_te).astype(float)

    def iv(v) -> Interval:
        return cluster_interval(v, ctx_te, n_boot=n_boot, seed=seed)

    return dict(base_loglik=iv(ll_b), full_loglik=iv(ll_f), gain=iv(ll_f - ll_b), base_acc=iv(ok_b),
                full_acc=iv(ok_f), acc_gain=iv(ok_f - ok_b),
                converged={"base": base.converged, "full": full.converged},
                iterations={"base": base.iterations, "full": full.iterations}, ll={"base": ll_b, "full": ll_f}), \
        base, full


def brier(probe: LogisticProbe, f: Features, y_P: np.ndarray) -> float:
    """The probe's mean Brier score ‖p − e_y‖² on the rows (how much a new read of y can still add)."""
    with torch.no_grad():
        p = F.softmax(probe.logits(f), -1).double().cpu()
    p[torch.arange(len(y_P)), torch.from_numpy(np.asarray(y_P))] -= 1
    return float(p.pow(2).sum(-1).mean())


def planted_amplitude(needed_gain: float, base_brier: float) -> float:
    """The amplitude a of the planted block a·e_y + N(0, I): a read of y adding, to a base whose Brier score is
    B, about a²·B / 2 nats per position when a is small (the second-order expansion of the expected
    log-likelihood gain), so a = √(2 g / B) plants a gain of about ``needed_gain`` g."""
    return float(np.sqrt(2 * needed_gain / max(base_brier, 1e-6)))


def planted_block(y_P: np.ndarray, n_classes: int, amplitude: float, seed: int) -> torch.Tensor:
    """(P, K) a weak noisy one-hot of the target: amplitude · e_y + standard normal noise (seeded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(y_P), n_classes, generator=g)
    x[torch.arange(len(y_P)), torch.from_numpy(np.asarray(y_P, dtype=np.int64))] += amplitude
    return x


def _right(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (pred == y).astype(np.float64)


def lookahead_target(lm, sample: ResidualSample, k: int, cfg: LookaheadConfig, split: Split,
                     extra_NC: np.ndarray | None = None, extra_unit_NC: np.ndarray | None = None) -> LookaheadTarget:
    """One offset: the per-layer curve of ridge probes on the residual alone (train → test, for the figure), then
    the nested comparison: choices on the validation units (fit → val), scored on the test units (train → test),
    with the planted control beside it.

    ``extra_NC``: token rows read besides the probed contexts, counted in every n-gram table except for the tokens
    of held-out units (``extra_unit_NC``: their units; None: nothing of them is held out). Positions whose target
    lies in another unit than the token at i are not probed. Training positions' n-gram features leave their own
    unit out."""
    tgt = sample.offset_tokens(k)
    u = split.unit_NC
    inside = np.flatnonzero(tgt >= 0)
    same = np.zeros(sample.n_positions, bool)
    same[inside] = u[sample.ctx_P[inside], sample.pos_P[inside]] == u[sample.ctx_P[inside], sample.pos_P[inside] + k]
    sample = sample.subset(same)
    part = split.part(sample)
    fit, val, test = (sample.subset(part == n) for n in ("fit", "val", "test"))
    train = sample.subset(part != "test")
    curve, _ = probe_by_depth(train, k, cfg.n_classes, cfg.ridge, cfg.seed, cfg.n_boot, held_out=test)
    classes = np.sort(frequent_classes(train.offset_tokens(k), cfg.n_classes))
    K, device = len(classes), str(getattr(lm, "device", "cpu"))
    splits = {"fit": fit, "val": val, "train": train, "test": test}
    rows = {n: np.flatnonzero(np.isin(s.offset_tokens(k), classes)) for n, s in splits.items()}
    y = {n: np.searchsorted(classes, s.offset_tokens(k)[rows[n]]) for n, s in splits.items()}
    guess = {n: model_guess(lm, s, classes) for n, s in splits.items()}

    def table_without(left_out: np.ndarray) -> tuple[NgramCounts, np.ndarray]:
        counted = split.counted(sample.tokens_NC, left_out)
        more = [] if extra_NC is None else [extra_NC if extra_unit_NC is None else
                                            np.where(np.isin(extra_unit_NC, left_out), -1, extra_NC)]
        return ngram_table(k, classes, more + [counted]), counted

    def features(table: NgramCounts, counted: np.ndarray, name: str, own: bool) -> tuple[Features, np.ndarray]:
        s, r = splits[name], rows[name]
        counts = table.counts(s.tokens_NC, s.ctx_P[r], s.pos_P[r], exclude_own=own, counted_NC=counted, unit_NC=u)
        return Features(*ngram_features(counts), guess[name][0][r]), counts

    # choices on validation: tables without the validation and test units
    fit_table, fit_counted = table_without(np.concatenate([split.val, split.test]))
    f_fit, _ = features(fit_table, fit_counted, "fit", own=True)
    f_val, c_val = features(fit_table, fit_counted, "val", own=False)
    order = max(NGRAM_ORDERS, key=lambda n: (backoff_guess(c_val, classes, n) == classes[y["val"]]).mean())

    def resid(name: str, j: int) -> torch.Tensor:
        return splits[name].resid_LPD[j][torch.from_numpy(rows[name])]

    l2_base, base = choose_l2(f_fit, y["fit"], f_val, y["val"], K, cfg.l2, device)
    # Layer 0 is the embedding of token i: what it adds can only be the input token itself, never a token the
    # model worked out. It joins the base, so the gain is what a later layer adds beyond it; its own gain (over the
    # n-grams and log-probs) is the calibration.
    emb = sample.layers.index(0) if 0 in sample.layers and len(sample.layers) > 1 else None
    l2_emb = None
    if emb is not None:
        l2_emb, base = choose_l2(f_fit.with_block(resid("fit", emb)), y["fit"], f_val.with_block(resid("val", emb)),
                                 y["val"], K, cfg.l2, device, base=base, l2_base=l2_base)
        f_fit, f_val = f_fit.with_block(resid("fit", emb)), f_val.with_block(resid("val", emb))
    z_fit, z_val = base.logits(f_fit).detach().cpu(), base.logits(f_val).detach().cpu()
    screen = []
    for j in range(len(sample.layers)):  # the layer whose residual adds most to the base probe's logits (ridge)
        ridge = fit_ridge_probe(torch.cat([z_fit, resid("fit", j)], 1), y["fit"], np.arange(K), cfg.ridge)
        screen.append(float((ridge.predict(torch.cat([z_val, resid("val", j)], 1)) == y["val"]).mean()))
    best = int(np.argmax([-np.inf if j == emb else v for j, v in enumerate(screen)]))
    l2_full, full_val = choose_l2(f_fit.with_block(resid("fit", best)), y["fit"],
                                  f_val.with_block(resid("val", best)), y["val"], K, cfg.l2, device, base=base,
                                  l2_base=l2_base)
    # the plant is read against the probe with the residual, so its size is set from that probe's Brier score
    amplitude = planted_amplitude(cfg.needed_gain, brier(full_val, f_val.with_block(resid("val", best)), y["val"]))

    def planted(name: str) -> torch.Tensor:
        seed = cfg.seed + 1000 * k + ("train", "test").index(name)
        return torch.cat([resid(name, best), planted_block(y[name], K, amplitude, seed)], 1)

    def null(name: str, draw: int) -> torch.Tensor:  # the same rows, shuffled across positions: no relation
        seed = cfg.seed + 1000 * k + 100 * (draw + 1) + ("train", "test").index(name)
        r = resid(name, best)
        return r[torch.from_numpy(np.random.default_rng(seed).permutation(len(r)))]

    # scored on test: tables of every token read except the test units
    table, counted = table_without(split.test)
    f_train, _ = features(table, counted, "train", own=True)
    f_test, c_test = features(table, counted, "test", own=False)
    ctx, yt = test.ctx_P[rows["test"]], classes[y["test"]]
    embedding_gain, first = None, None
    if emb is not None:  # the calibration: the n-grams and log-probs, then the embedding added (nested)
        g0, first, base = nested_gain(f_train, resid("train", emb), y["train"], f_test, resid("test", emb),
                                      y["test"], ctx, K, l2_base, l2_emb, cfg.n_boot, cfg.seed, device)
        embedding_gain = g0["gain"]
        f_train, f_test = f_train.with_block(resid("train", emb)), f_test.with_block(resid("test", emb))
    args = (K, l2_base, l2_full, cfg.n_boot, cfg.seed, device)
    g, base, _ = nested_gain(f_train, resid("train", best), y["train"], f_test, resid("test", best), y["test"], ctx,
                             *args, base=base if emb is not None else None)
    p, _, _ = nested_gain(f_train, planted("train"), y["train"], f_test, planted("test"), y["test"], ctx, *args,
                          base=base)
    draws = [nested_gain(f_train, null("train", d), y["train"], f_test, null("test", d), y["test"], ctx, *args,
                         base=base)[0] for d in range(cfg.null_draws)]
    (ll_b, ll), ll_p = g.pop("ll").values(), p.pop("ll")["full"]
    ll_z = np.mean([z.pop("ll")["full"] for z in draws], 0)  # per position, over the draws
    g["converged"]["null"] = all(z["converged"]["full"] for z in draws)
    g["iterations"]["null"] = max(z["iterations"]["full"] for z in draws)
    g["converged"]["planted"], g["iterations"]["planted"] = p["converged"]["full"], p["iterations"]["full"]
    if first is not None:
        g["converged"] = {"n-grams": first.converged, **g["converged"]}
        g["iterations"] = {"n-grams": first.iterations, **g["iterations"]}

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
                        test_positions=len(rows["test"]), test_contexts=len(np.unique(ctx)), split=split.by,
                        test_units=len(split.test), planted_gain=p["gain"], planted_amplitude=amplitude,
                        ngram_tokens=table.n_tokens_, embedding_gain=embedding_gain, l2_embedding=l2_emb,
                        null_gain=iv(ll_z - ll_b), null_draws=[z["gain"].mean for z in draws],
                        beyond_null=iv(ll - ll_z), planted_beyond=iv(ll_p - ll))
    return LookaheadTarget(**vars(curve), ngram={n: iv(v) for n, v in ngram_right.items()}, ngram_order=order,
                           nested=nested)


def run(cfg: LookaheadConfig) -> LookaheadResult:
    """Per offset, the nested comparison of [n-grams + the model's log-probs + the embedding] with and without the
    residual at a later layer."""
    if any(o <= 0 for o in cfg.offsets):
        raise ConfigError("offsets", "{field} must be positive for lookahead (tokens after the probed position)")
    if not cfg.l2:
        raise ConfigError("l2", "{field} needs at least one strength")
    from superpos.hypotheses.common import open_experiment
    from superpos.model.residuals import packed_from_corpus, sample_residuals

    out, lm, tokens = open_experiment(cfg)
    more = -(-cfg.ngram_tokens // cfg.context_length)  # whole contexts after the probed ones
    packed = packed_from_corpus(lm, cfg.corpus, len(tokens) + more, cfg.context_length)
    extra, doc_NC = packed.tokens_NC[len(tokens):], packed.doc_NC
    sample = sample_residuals(lm, tokens, cfg.per_context, seed=cfg.seed, max_offset=max(cfg.offsets))
    split = split_units(tokens, doc_NC[:len(tokens)], sample, cfg.seed)
    test = sample.subset(split.part(sample) == "test")
    _, top = model_guess(lm, test, np.zeros(1, dtype=np.int64))
    res = LookaheadResult(config=cfg, model=lm.name, layers=sample.layers, n_positions=sample.n_positions,
                          offsets={}, model_top1=cluster_interval(_right(top, test.next_P), test.ctx_P,
                                                                  n_boot=cfg.n_boot, seed=cfg.seed))
    for k in cfg.offsets:
        _say(f"lookahead +{k}")
        res.offsets[f"+{k}"] = lookahead_target(lm, sample, k, cfg, split, extra,
                                                doc_NC[len(tokens):] if split.by == "documents" else None)
    res.ngram_tokens = next(iter(res.offsets.values())).nested.ngram_tokens
    return res

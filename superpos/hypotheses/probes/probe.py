"""Linear probes on the residual stream: which token is here (input reconstruction) and which came before
(lookahead, the tokens that come next, is in ``lookahead.py`` and reuses these probes).

Probes are ridge least-squares classifiers onto one-hot targets over the ``n_classes`` most frequent
tokens of the training split (closed form, one solve per layer; rows whose target is outside the
subset are left out of training and scoring, and the kept fraction is reported). Residuals are
standardised per layer with training statistics, so one ridge strength fits all layers. The
trade-off: the full 49k vocabulary would need a 576 × 49k solve per layer and tens of thousands of
examples per class; the frequent subset covers most running text (coverage is in the report).
Method and reading in docs/probes.md.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from superpos.errors import SuperposError
from superpos.hypotheses.probes.config import ProbeConfig
from superpos.hypotheses.probes.geometry import (
    calibrated_tail,
    class_sums,
    energy_profile,
    frequency_basis,
    nmf_energy,
    procrustes_test,
    tail_shares,
)
from superpos.hypotheses.probes.result import FullVocab, GuessTest, ProbeGeometry, ProbeTarget, ProcrustesTest
from superpos.hypotheses.token_table import decodable, table_from_sample
from superpos.model.residuals import ResidualSample
from superpos.stats import Band, cluster_band, cluster_interval, per_context_difference


@dataclass
class RidgeProbe:
    """``predict(x) = argmax((x - mean) / std @ W + b)`` over ``classes`` (token ids)."""

    classes: np.ndarray
    W_DK: torch.Tensor
    b_K: torch.Tensor
    mean_D: torch.Tensor
    std_D: torch.Tensor

    def scores(self, X_PD: torch.Tensor) -> torch.Tensor:
        """Class scores of standardised rows."""
        return ((X_PD - self.mean_D) / self.std_D) @ self.W_DK + self.b_K

    def predict(self, X_PD: torch.Tensor) -> np.ndarray:
        """The most likely class of each row."""
        return self.classes[self.scores(X_PD).argmax(1).numpy()]

    @property
    def read_directions_KD(self) -> torch.Tensor:
        """Each class's read-out direction in the raw residual basis (W scaled back by 1/std)."""
        return (self.W_DK / self.std_D[:, None]).T


def frequent_classes(targets: np.ndarray, n_classes: int) -> np.ndarray:
    """The ``n_classes`` most frequent tokens among ``targets``."""
    ids, counts = np.unique(targets[targets >= 0], return_counts=True)
    return ids[np.argsort(-counts, kind="stable")[:n_classes]]


def fit_ridge_probe(X_PD: torch.Tensor, y_P: np.ndarray, classes: np.ndarray, ridge: float = 1e-2) -> RidgeProbe:
    """Closed-form ridge regression onto one-hot(y) for rows with y in ``classes`` (float64 solve)."""
    keep = np.isin(y_P, classes)
    if keep.sum() < 2:
        raise SuperposError("too few probe training rows with a target among the probed tokens")
    X = X_PD[torch.from_numpy(np.flatnonzero(keep))].double()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = torch.cat([(X - mean) / std, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    col = torch.from_numpy(np.searchsorted(classes, y_P[keep]))
    Y = torch.zeros(len(X), len(classes), dtype=X.dtype)
    Y[torch.arange(len(X)), col] = 1.0
    gram = Z.T @ Z
    reg = ridge * len(X) * torch.eye(len(gram), dtype=X.dtype)
    reg[-1, -1] = 0  # no penalty on the bias
    Wb = torch.linalg.solve(gram + reg, Z.T @ Y)
    return RidgeProbe(classes, Wb[:-1].float(), Wb[-1].float(), mean.float(), std.float())


def probe_accuracy(probe: RidgeProbe, X_PD: torch.Tensor, y_P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct per scored row as 0/1, mask of the rows scored = target among the probe's classes)."""
    keep = np.isin(y_P, probe.classes)
    pred = probe.predict(X_PD[torch.from_numpy(np.flatnonzero(keep))])
    return (pred == y_P[keep]).astype(np.float64), keep


# ------------------------------------------------------------------------------------------------------
# experiments
# ------------------------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(f"[probes] {msg}", file=sys.stderr, flush=True)


def probe_by_depth(sample: ResidualSample, offset: int, n_classes: int, ridge: float, seed: int, n_boot: int,
                   pooled: bool = False,
                   held_out: ResidualSample | None = None) -> tuple[ProbeTarget, list[RidgeProbe]]:
    """Held-out top-1 accuracy per layer of probes for the token at pos + offset (split by context; with
    ``held_out``, ``sample`` is the training part and ``held_out`` the test part of a split made elsewhere).

    Returns the per-layer accuracy with CIs, the coverage and (``pooled``) the accuracy per layer of one probe
    trained on rows from all layers together; and the probes, one per layer.
    """
    train, test = sample.split_contexts(0.75, seed=seed) if held_out is None else (sample, held_out)
    y_tr, y_te = train.offset_tokens(offset), test.offset_tokens(offset)
    classes = np.sort(frequent_classes(y_tr, n_classes))
    probes, per_layer = [], []
    for j in range(len(sample.layers)):
        probe = fit_ridge_probe(train.resid_LPD[j], y_tr, classes, ridge)
        per_layer.append(probe_accuracy(probe, test.resid_LPD[j], y_te)[0])
        probes.append(probe)
    ctx = test.ctx_P[np.isin(y_te, classes)]
    target = ProbeTarget(offset=offset, n_classes=len(classes), coverage=float(np.isin(y_te, classes).mean()),
                         layers=sample.layers, acc=cluster_band(np.stack(per_layer, 1), ctx, n_boot=n_boot, seed=seed),
                         majority=float(np.mean(y_te[np.isin(y_te, classes)] == frequent_classes(y_tr, 1)[0])))
    if pooled:
        X = train.resid_LPD.reshape(-1, train.resid_LPD.shape[-1])
        probe = fit_ridge_probe(X, np.tile(y_tr, len(sample.layers)), classes, ridge)
        acc = [probe_accuracy(probe, test.resid_LPD[j], y_te)[0] for j in range(len(sample.layers))]
        target.pooled_acc = cluster_band(np.stack(acc, 1), ctx, n_boot=n_boot, seed=seed)
    return target, probes


def nearest_embedding_accuracy(sample: ResidualSample, W_E: np.ndarray, classes: np.ndarray) -> list[float]:
    """Per layer: share of positions whose input token is the nearest (cosine) embedding among ``classes``."""
    y = sample.token_P
    keep = np.isin(y, classes)
    E = torch.from_numpy(W_E[classes])
    E = E / E.norm(dim=1, keepdim=True)
    out = []
    for j in range(len(sample.layers)):
        X = sample.resid_LPD[j][torch.from_numpy(np.flatnonzero(keep))]
        pred = classes[(X @ E.T).argmax(1).numpy()]
        out.append(float((pred == y[keep]).mean()))
    return out


def model_guesses(lm, tokens_NC: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """(N, C) the model's top next-token guess at every position: ``guess[:, p]`` is its guess for token p+1."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(tokens_NC), batch_size):
            tok = torch.from_numpy(tokens_NC[i:i + batch_size].astype(np.int64)).to(lm.device)
            out.append(lm.model(tok).logits.argmax(-1).cpu().numpy())
    return np.concatenate(out)


def guess_test(probes: list[RidgeProbe], test: ResidualSample, guesses_NC: np.ndarray, n_boot: int,
               seed: int) -> GuessTest:
    """Is the input token held via the model's own guess for it? Per layer, the current-token probe's accuracy
    where the guess (made at p−1) was right minus where it was wrong, paired by context, and that gap minus layer
    0's (where no guess is involved); plus how often a wrong read-out names the guess."""
    y = test.token_P
    g = guesses_NC[test.ctx_P, test.pos_P - 1]
    keep = np.isin(y, probes[0].classes) & (test.pos_P >= 1)
    y, g, ctx = y[keep], g[keep], test.ctx_P[keep]
    right_guess = g == y
    rows = torch.from_numpy(np.flatnonzero(keep))
    gaps, per_ctx, to_guess = [], [], []
    for j, probe in enumerate(probes):
        pred = probe.predict(test.resid_LPD[j][rows])
        ok = (pred == y).astype(float)
        d, ids = per_context_difference(ok, ctx, right_guess, ~right_guess)
        gaps.append(cluster_interval(d, ids, n_boot=n_boot, seed=seed))
        per_ctx.append(dict(zip(ids.tolist(), d)))
        wrong = ~right_guess & (pred != y)
        to_guess.append(float((pred[wrong] == g[wrong]).mean()) if wrong.any() else float("nan"))
    vs0 = []
    for j in range(len(probes)):
        common = sorted(set(per_ctx[j]) & set(per_ctx[0]))
        vs0.append(cluster_interval(np.array([per_ctx[j][c] - per_ctx[0][c] for c in common]), np.array(common),
                                    n_boot=n_boot, seed=seed))
    return GuessTest(guess_accuracy=cluster_interval(right_guess.astype(float), ctx, n_boot=n_boot, seed=seed),
                     right_minus_wrong=Band.of(gaps), vs_layer0=Band.of(vs0), errors_to_guess=to_guess)


def full_vocabulary(train: ResidualSample, test: ResidualSample, vocab: int, n_boot: int, seed: int) -> FullVocab:
    """The nearest-token-representation read-out over every token seen in the training contexts (no fitting):
    accuracy per layer on test positions whose token was seen, and that coverage."""
    table = table_from_sample(train, vocab)
    right = [decodable(table, test.resid_LPD[j], torch.from_numpy(test.token_P), layer)
             for j, layer in enumerate(test.layers)]
    scored = ~np.isnan(right[0])
    return FullVocab(tokens=len(table.counts_R), coverage=float(scored.mean()),
                     acc=cluster_band(np.stack([r[scored] for r in right], 1), test.ctx_P[scored], n_boot=n_boot,
                                      seed=seed))


def embedding_geometry(sample: ResidualSample, W_E: np.ndarray, classes: np.ndarray, cfg: ProbeConfig) -> ProbeGeometry:
    """Class-mean geometry against the embedding, calibrated at layer 0 and against a random basis
    (``probe_geometry``)."""
    from superpos.dictionaries import NMF

    seen = np.isin(classes, sample.token_P)
    classes = classes[seen]
    layer_sums, counts = class_sums(sample, classes)
    E = W_E - W_E.mean(0)
    _, svals, Vt = np.linalg.svd(E, full_matrices=False)
    var = svals ** 2 / (svals ** 2).sum()
    head = int(np.searchsorted(np.cumsum(var), 0.5)) + 1  # components holding the first 50% of the variance
    tail = torch.from_numpy(Vt[head:].T.copy()).float()
    nmf = NMF(n_components=min(64, E.shape[1]), seed=cfg.seed, max_iter=200, device="cpu", progress=False).fit(W_E)
    nmf_C = np.asarray(nmf.components_, dtype=np.float64)
    nmf_C = nmf_C[np.argsort(-np.asarray(nmf.transform(W_E)).mean(0) * np.linalg.norm(nmf_C, axis=1))]
    coord_order = np.argsort(-E.var(0))
    ids, freq = np.unique(sample.tokens_NC, return_counts=True)
    freq_basis = frequency_basis(W_E, ids[np.argsort(-freq, kind="stable")])
    bases = {"pca": Vt, "coord": np.eye(E.shape[1])[coord_order], "frequency": freq_basis}
    mid, last = len(sample.layers) // 2, len(sample.layers) - 1
    geo = ProbeGeometry(layers=sample.layers, classes=len(classes), tail_components=E.shape[1] - head,
                        random_share=0.0, tail=Band([], [], []), tail_vs_layer0=Band([], [], []),
                        embedding={name: energy_profile(E[classes], b).tolist() for name, b in bases.items()},
                        profiles={name: [] for name in [*bases, "nmf"]}, procrustes={})
    geo.embedding["nmf"] = nmf_energy(E[classes], nmf_C).tolist()
    values, boots = [], []
    for j in range(len(sample.layers)):
        sums = layer_sums(j)
        v, b = tail_shares(sums, counts, tail, cfg.n_boot, cfg.seed)
        values.append(v)
        boots.append(b)
        M = (sums.sum(0) / torch.from_numpy(counts.sum(0)).float()[:, None]).double().numpy()
        for name, b_ in bases.items():
            geo.profiles[name].append(energy_profile(M, b_).tolist())
        geo.profiles["nmf"].append(nmf_energy(M - M.mean(0), nmf_C).tolist())
        if j in (0, mid, last) or j % 3 == 0:  # the tested layers with the full count, a curve elsewhere
            n = cfg.n_shuffle if j in (0, mid, last) else max(20, cfg.n_shuffle // 50)
            fit, null_mean, null_p05, p = procrustes_test(M, W_E[classes], n, cfg.seed)
            geo.procrustes[sample.layers[j]] = ProcrustesTest(residual=fit, null_mean=null_mean, null_p05=null_p05,
                                                              p_value=p, shuffles=n)
    geo.tail, geo.tail_vs_layer0, geo.random_share = calibrated_tail(values, boots, E.shape[1] - head, E.shape[1])
    return geo

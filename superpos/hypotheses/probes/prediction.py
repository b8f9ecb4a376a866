"""Is the input x_i held through the prediction made at i? Decode x_i from the model's next-token distribution at
position i — its own output, and the logit-lens and tuned-lens distributions at each layer — against the same
decoding from the distribution at i − 1, which is the model's guess *for* x_i.

The decoder is the ridge probe of ``probe.py`` on the distribution's log-probabilities over the probed classes
(standardised features; fitted on training contexts, scored on test contexts). Per layer and lens: the accuracy
from i, from i − 1, and their difference paired per position, with intervals over test contexts. The last residual
layer is the model's own prediction (both lenses are the identity there).

The prediction at i is computed from x_i and the one at i − 1 never saw it, so "read better from i than from i − 1"
holds for any model whose output depends on its input. The null that asks more: a **bigram table** p(· | x_i),
counted on the training contexts, decoded the same way — a distribution that depends on x_i with no model
computation at all. Positions have i ≥ 2, so the distribution at i − 1 never reads the fixed BOS at 0.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from superpos.hypotheses.probes.probe import fit_ridge_probe
from superpos.hypotheses.probes.result import PredictionTest
from superpos.model.residuals import ResidualSample
from superpos.stats import Band, cluster_band, cluster_interval


def decoding_layers(layers: list[int]) -> list[int]:
    """The layers read: 0, every third, the middle and the last (the Procrustes schedule of the probes)."""
    mid, last = len(layers) // 2, len(layers) - 1
    return [layer for j, layer in enumerate(layers) if j in (0, mid, last) or j % 3 == 0]


def some_positions(s: ResidualSample, n: int, seed: int) -> ResidualSample:
    """At most ``n`` of the sample's positions with i ≥ 2 (i − 1 is a token of the text, not the BOS at 0), drawn
    at random across all its contexts (the model still runs over every context; the lenses read only these
    positions)."""
    ok = np.flatnonzero(s.pos_P >= 2)
    pick = np.sort(np.random.default_rng(seed).choice(ok, size=min(n, len(ok)), replace=False))
    return s.subset(np.isin(np.arange(s.n_positions), pick))


def prediction_features(lm, s: ResidualSample, classes: np.ndarray, layers: list[int], lens=None,
                        batch_size: int = 8) -> dict[tuple[str, int, int], torch.Tensor]:
    """Log-probabilities on ``classes`` of the lens distributions at each sampled position i (``shift`` 0) and at
    i − 1 (``shift`` 1): ``{(lens, layer, shift): (P, K) float16}`` for lens "logit" and, when ``lens`` is given,
    "tuned". Positions must have i ≥ 1."""
    from superpos.hypotheses.lenses.lens import lens_logits

    if (s.pos_P < 1).any():
        raise ValueError("decoding from the prediction at i − 1 needs positions i ≥ 1")
    lenses = {"logit": None} if lens is None else {"logit": None, "tuned": lens}
    cols = torch.from_numpy(np.asarray(classes, dtype=np.int64))
    ctx = np.unique(s.ctx_P)
    out: dict[tuple[str, int, int], list[torch.Tensor]] = {(n, layer, sh): [] for n in lenses for layer in layers
                                                           for sh in (0, 1)}
    order = []
    with torch.inference_mode(), lm.capture(layers) as acts:
        for i in range(0, len(ctx), batch_size):
            batch = ctx[i:i + batch_size]
            lm.model(torch.from_numpy(s.tokens_NC[batch].astype(np.int64)).to(lm.device))
            rows = np.flatnonzero(np.isin(s.ctx_P, batch))
            order.append(rows)
            b = torch.from_numpy(np.searchsorted(batch, s.ctx_P[rows])).to(lm.device)
            for layer in layers:
                for shift in (0, 1):
                    p = torch.from_numpy(s.pos_P[rows] - shift).to(lm.device)
                    h = acts[layer][b, p].float()
                    for name, ln in lenses.items():
                        lp = F.log_softmax(lens_logits(lm, h, layer, ln), -1).cpu()[:, cols]
                        out[(name, layer, shift)].append(lp.half())
    back = np.argsort(np.concatenate(order))  # batches follow contexts; rows back in the sample's order
    return {key: torch.cat(v)[torch.from_numpy(back)] for key, v in out.items()}


def bigram_features(rows_NC: np.ndarray, x_P: np.ndarray, classes: np.ndarray) -> torch.Tensor:
    """(P, K) log p(c | x) of a bigram table counted on ``rows_NC`` (every next token within a row), add-½ smoothed
    over the K classes and one bucket for every other token: log((n(x, c) + ½) / (n(x) + ½ (K + 1)))."""
    rows_NC = np.asarray(rows_NC, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    prev, nxt = rows_NC[:, :-1].ravel(), rows_NC[:, 1:].ravel()
    ux, inv = np.unique(np.concatenate([prev, np.asarray(x_P, dtype=np.int64)]), return_inverse=True)
    px, qx = inv[:len(prev)], inv[len(prev):]
    col = np.searchsorted(classes, nxt).clip(0, len(classes) - 1)
    known = classes[col] == nxt
    n = np.zeros((len(ux), len(classes)))
    np.add.at(n, (px[known], col[known]), 1)
    total = np.bincount(px, minlength=len(ux)).astype(np.float64)
    logp = np.log((n + 0.5) / (total[:, None] + 0.5 * (len(classes) + 1)))
    return torch.from_numpy(logp[qx]).float()


def prediction_test(lm, train: ResidualSample, test: ResidualSample, classes: np.ndarray, lens, ridge: float,
                    n_boot: int, seed: int, max_positions: int) -> PredictionTest:
    """Decode x_i from the lens distributions at i and at i − 1, per layer (see the module docstring), at
    ``max_positions`` positions in all, three quarters of them from the training contexts, drawn across every
    context of each split."""
    train = some_positions(train, int(0.75 * max_positions), seed)
    test = some_positions(test, max_positions - int(0.75 * max_positions), seed + 1)
    layers = decoding_layers(train.layers)
    f_tr = prediction_features(lm, train, classes, layers, lens)
    f_te = prediction_features(lm, test, classes, layers, lens)
    y_tr, y_te = train.token_P, test.token_P
    keep = np.isin(y_te, classes)
    y_te, ctx = y_te[keep], test.ctx_P[keep]
    rows = torch.from_numpy(np.flatnonzero(keep))
    right: dict[tuple[str, int, int], np.ndarray] = {}
    for key in f_tr:
        probe = fit_ridge_probe(f_tr[key].float(), y_tr, classes, ridge)
        right[key] = (probe.predict(f_te[key][rows].float()) == y_te).astype(float)
    text = train.tokens_NC[np.unique(train.ctx_P)]  # the training contexts' text
    probe = fit_ridge_probe(bigram_features(text, train.token_P, classes), y_tr, classes, ridge)
    bigram = (probe.predict(bigram_features(text, test.token_P[keep], classes)) == y_te).astype(float)
    names = sorted({n for n, _, _ in f_tr})
    label = {"logit": "logit lens", "tuned": "tuned lens"}

    def band(values: list[np.ndarray]) -> Band:
        return cluster_band(np.stack(values, 1), ctx, n_boot=n_boot, seed=seed)

    return PredictionTest(
        layers=layers, n_classes=len(classes), train_positions=int(np.isin(y_tr, classes).sum()),
        test_positions=int(keep.sum()),
        at_i={label[n]: band([right[(n, layer, 0)] for layer in layers]) for n in names},
        at_previous={label[n]: band([right[(n, layer, 1)] for layer in layers]) for n in names},
        difference={label[n]: band([right[(n, layer, 0)] - right[(n, layer, 1)] for layer in layers])
                    for n in names},
        bigram=cluster_interval(bigram, ctx, n_boot=n_boot, seed=seed),
        vs_bigram={label[n]: band([right[(n, layer, 0)] - bigram for layer in layers]) for n in names},
        test_contexts=len(np.unique(ctx)))

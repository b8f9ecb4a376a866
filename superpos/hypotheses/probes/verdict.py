"""The verdict of ``superpos run probes``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

import numpy as np

from superpos.hypotheses.common import fmt_ci, pct
from superpos.hypotheses.probes.result import ProbesResult, ProbesVerdict


def verdict(res: ProbesResult) -> ProbesVerdict:
    """Three answers at the middle layer, each against its calibration: decodability (vs layer 0 and the
    nearest-embedding read-out); "off to the side" — the class means' tail share above layer 0's (interval over
    contexts above 0) and above a random basis's; "via the guess" — the probe's accuracy gap between positions
    whose input the model had guessed and those it had not, larger than at layer 0 (interval above 0)."""
    cur, g, geo, voc = res.targets["current token"], res.guess, res.geometry, res.vocabulary
    acc, layers, near = cur.acc, res.layers, res.nearest_embedding_acc
    mid = len(layers) // 2
    lm = layers[mid]
    tail, d0 = geo.tail.at(mid), geo.tail_vs_layer0.at(mid)
    side = bool(d0.lo > 0 and tail.mean > geo.random_share)
    gv = g.vs_layer0.at(mid)
    via = bool(gv.lo > 0)
    pr0, prm = geo.procrustes[layers[0]], geo.procrustes[lm]
    lines = [
        f"Input token (top-{cur.n_classes} tokens, {100 * cur.coverage:.0f}% of held-out positions): probe accuracy "
        f"{acc.mean[0]:.3f} at layer {layers[0]}, {acc.mean[mid]:.3f} [{acc.lo[mid]:.3f}, {acc.hi[mid]:.3f}] at layer "
        f"{lm}, {acc.mean[-1]:.3f} at layer {layers[-1]} (majority class {cur.majority:.3f}); nearest-embedding "
        f"read-out {near[0]:.3f} → {near[mid]:.3f}.",
        f"Whole vocabulary ({voc.tokens:,} tokens seen in training, {100 * voc.coverage:.0f}% of test positions): "
        f"nearest-token-representation read-out {voc.acc.mean[0]:.3f} at layer {layers[0]}, {voc.acc.mean[mid]:.3f} at "
        f"layer {lm}, {voc.acc.mean[-1]:.3f} at layer {layers[-1]}.",
        f"Off to the side: class means at layer {lm} put {pct(tail.mean)} [{pct(tail.lo)}, {pct(tail.hi)}] of their "
        f"energy on the {geo.tail_components} PCA components holding the embedding's last 50% of variance; at layer 0 "
        f"(the embedding itself) {pct(geo.tail.mean[0])}; difference {d0.mean:+.3f} [{d0.lo:+.3f}, {d0.hi:+.3f}]; "
        f"a random basis of that size holds {pct(geo.random_share)}.",
        f"Procrustes (class means vs embedding rows, unit rows): {pr0.residual:.3f} at layer 0, {prm.residual:.3f} at "
        f"layer {lm} vs shuffled {prm.null_mean:.3f} (p = {prm.p_value:.4f}, {prm.shuffles} shuffles).",
        f"Via the guess: the model's top guess names the input {pct(g.guess_accuracy.mean)} of the time; probe accuracy "
        f"where it did minus where it did not: {g.right_minus_wrong.mean[0]:+.3f} at layer 0, "
        f"{g.right_minus_wrong.mean[mid]:+.3f} at layer {lm} (difference {fmt_ci(gv)}); wrong read-outs name the "
        f"guess {pct(g.errors_to_guess[mid])} of the time at layer {lm} ({pct(g.errors_to_guess[0])} at layer 0).",
    ]
    if "previous token" in res.targets:
        prev = res.targets["previous token"].acc.mean
        lines.append(f"Previous token: {prev[0]:.3f} at layer {layers[0]}, peak {max(prev):.3f} at layer "
                     f"{layers[int(np.argmax(prev))]}.")
    more = d0.lo > 0
    if side:
        where = "held more off to the side of the embedding's main directions than at layer 0, and more than a random "
        where += "orientation would put there"
    elif more:
        where = ("moved away from the embedding's main directions relative to layer 0, but no further than a random "
                 "orientation would put it — not concentrated in the components the embedding barely uses")
    else:
        where = "not held more off to the side of the embedding's main directions than at layer 0"
    head = (f"The input token stays linearly decodable through the stack (layer {lm}: {acc.mean[mid]:.3f}). At layer "
            f"{lm} it is {where} (tail share {tail.mean:.2f} vs {geo.tail.mean[0]:.2f} at layer 0, difference "
            f"{fmt_ci(d0)}; random orientation {geo.random_share:.2f}), and "
            f"{'partly held via the model' + chr(39) + 's guess' if via else 'not held via the model' + chr(39) + 's guess'} "
            f"(accuracy gap guessed − not guessed, minus layer 0's: {fmt_ci(gv)}).")
    return ProbesVerdict(headline=head, criteria=lines, decodable_mid=float(acc.mean[mid]), off_to_the_side=side,
                           via_guess=via)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    acc, mid, geo = res.targets["current token"].acc, len(res.layers) // 2, res.geometry
    d0, gv = geo.tail_vs_layer0.at(mid), res.guess.vs_layer0.at(mid)
    return {"input-token acc, layer 0 / mid / last": f"{acc.mean[0]:.3f} / {acc.mean[mid]:.3f} / {acc.mean[-1]:.3f}",
            "mid tail share − layer 0's": fmt_ci(d0), "via the guess (gap − layer 0's)": fmt_ci(gv)}

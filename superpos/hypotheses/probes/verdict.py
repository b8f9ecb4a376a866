"""The verdict of ``superpos run probes``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

import numpy as np

from superpos.hypotheses.common import fmt_ci, pct
from superpos.hypotheses.probes.result import ProbesResult, ProbesVerdict
from superpos.stats import MIN_CLUSTERS, min_detectable


def _prediction(res: ProbesResult) -> tuple[bool | None, str, list[str]]:
    """What the decoding of x_i from the prediction made at i shows: (answer, headline clause, criteria lines).

    Reading x_i better from the prediction at i than from the guess made at i − 1 holds for any model whose output
    depends on its input (the prediction at i is computed from x_i; the guess never saw it), so it decides nothing
    alone. The answer is True when x_i is read from the model's prediction at i better than from a bigram table
    p(·|x_i) (a distribution that depends on x_i with no model computation) and than from the guess at i − 1;
    False when not beyond the bigram table, with power (the minimum detectable difference at most --needed-difference,
    or an interval wholly below it); None when not tested or not judged (fewer than ``MIN_CLUSTERS`` test contexts,
    or not beyond the table while neither holds)."""
    pt = res.prediction
    if pt is None:
        return None, ("whether it is held through the prediction made at i was not tested (this result predates "
                      "that decoding)"), []
    last = len(pt.layers) - 1
    d = pt.difference["logit lens"].at(last)  # the last layer: the model's own prediction (no lens involved)
    at_i, prev = pt.at_i["logit lens"].at(last), pt.at_previous["logit lens"].at(last)
    resid = res.targets["current token"].acc.mean[res.layers.index(pt.layers[last])]
    lines = [f"Via the prediction made at i: a ridge probe reads x_i from the model's next-token distribution at i "
             f"{at_i.mean:.3f} [{at_i.lo:.3f}, {at_i.hi:.3f}] of the time, from its guess for x_i made at i−1 "
             f"{prev.mean:.3f} (difference {fmt_ci(d)}; the residual at layer {pt.layers[last]} itself: "
             f"{resid:.3f}; {pt.test_positions:,} test positions, top-{pt.n_classes} tokens)."]
    for lens, band in pt.difference.items():
        by = ", ".join(f"{layer}: {band.mean[j]:+.3f}" for j, layer in enumerate(pt.layers))
        lo = [f"{layer}" for j, layer in enumerate(pt.layers) if band.lo[j] > 0]
        lines.append(f"By layer, {lens} distribution at i minus at i−1 (accuracy of reading x_i): {by}; interval "
                     f"above 0 at layers {', '.join(lo) or 'none'}.")
    if pt.vs_bigram is None:
        return None, (f"whether x_i is carried by the prediction made at i beyond what any distribution that depends "
                      f"on x_i carries was not tested (this result predates the bigram null; read from the "
                      f"prediction at i {at_i.mean:.3f} vs {prev.mean:.3f} from the guess made at i−1, which any "
                      f"model whose output depends on its input shows)"), lines
    bg = pt.vs_bigram["logit lens"].at(last)
    share = at_i.mean / resid if resid > 0 else float("nan")
    need = res.config.needed_difference
    mde = min_detectable(bg)
    lines.append(f"Against a bigram table p(·|x_i) counted on the training contexts and decoded the same way (a "
                 f"distribution that depends on x_i with no model computation): {pt.bigram.mean:.3f}; the model's "
                 f"prediction at i minus it {fmt_ci(bg)} (minimum detectable difference {mde:.3f} against the "
                 f"{need:g} the question counts; {pt.test_contexts} test contexts). The prediction at i is read "
                 f"{100 * share:.0f}% as well as the residual at layer {pt.layers[last]} (the residual probe's "
                 f"accuracy on all test positions).")
    for lens, band in pt.vs_bigram.items():
        lines.append(f"By layer, {lens} distribution at i minus the bigram table: "
                     + ", ".join(f"{layer}: {band.mean[j]:+.3f}" for j, layer in enumerate(pt.layers)) + ".")
    nums = (f"x_i read from the model's prediction at i {at_i.mean:.3f}, from a bigram table p(·|x_i) "
            f"{pt.bigram.mean:.3f} (difference {fmt_ci(bg)}), from the guess made at i−1 {prev.mean:.3f}")
    if pt.test_contexts is not None and pt.test_contexts < MIN_CLUSTERS:
        return None, (f"whether the prediction made at i carries x_i beyond a bigram table is not judged "
                      f"(INSUFFICIENT POWER: {pt.test_contexts} test contexts, fewer than {MIN_CLUSTERS}; {nums})"), lines
    if bg.lo > 0 and d.lo > 0:
        return True, (f"the model's prediction made at i carries x_i beyond what a bigram table p(·|x_i) carries "
                      f"({nums})"), lines
    if bg.lo > 0:  # beyond the table, not beyond the guess made before x_i was seen
        return False, (f"x_i is read from the model's prediction made at i better than from a bigram table but no "
                       f"better than from its guess made at i−1, before x_i was seen ({nums})"), lines
    if mde > need and not bg.hi < need:  # an interval wholly below what the question needs rules it out anyway
        return None, (f"whether the prediction made at i carries x_i beyond a bigram table is not judged "
                      f"(INSUFFICIENT POWER: minimum detectable difference {mde:.3f} above {need:g}; {nums})"), lines
    bound = (f"; the interval rules out the {need:g} the question counts" if bg.hi < need else
             f"; minimum detectable difference {mde:.3f}")
    return False, (f"x_i is read from the model's prediction made at i no better than from a bigram table p(·|x_i): "
                   f"that it is read there shows only that the prediction depends on x_i ({nums}{bound})"), lines


def verdict(res: ProbesResult) -> ProbesVerdict:
    """Four answers, each against its calibration: decodability at the middle layer (vs layer 0 and the
    nearest-embedding read-out); "off to the side" — the class means' tail share above layer 0's (interval over
    contexts above 0) and above a random basis's; "carried by the prediction made at i" — x_i read by a ridge
    probe from the model's next-token distribution at i better than from a bigram table p(·|x_i) and than from the
    distribution at i−1, its guess for x_i (paired differences' intervals above 0; see ``_prediction``); and the older "via the guess
    made at i−1" — the probe's accuracy gap between positions whose input the model had guessed at i−1 and those it
    had not, larger than at layer 0 (interval above 0)."""
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
        f"Via the guess made at i−1 (right vs wrong): the model's top guess names the input "
        f"{pct(g.guess_accuracy.mean)} of the time; probe accuracy where it did minus where it did not: "
        f"{g.right_minus_wrong.mean[0]:+.3f} at layer 0, "
        f"{g.right_minus_wrong.mean[mid]:+.3f} at layer {lm} (difference {fmt_ci(gv)}); wrong read-outs name the "
        f"guess {pct(g.errors_to_guess[mid])} of the time at layer {lm} ({pct(g.errors_to_guess[0])} at layer 0).",
    ]
    if "previous token" in res.targets:
        prev = res.targets["previous token"].acc.mean
        lines.append(f"Previous token: {prev[0]:.3f} at layer {layers[0]}, peak {max(prev):.3f} at layer "
                     f"{layers[int(np.argmax(prev))]}.")
    held, clause, pred_lines = _prediction(res)
    lines[4:4] = pred_lines  # before the older test of the guess made at i−1
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
            f"{clause}; where the model's guess made at i−1 was right, it is {'more' if via else 'not more'} "
            f"decodable than where it was wrong, beyond layer 0's gap ({fmt_ci(gv)}).")
    return ProbesVerdict(headline=head, criteria=lines, decodable_mid=float(acc.mean[mid]), off_to_the_side=side,
                         via_guess=via, via_prediction=held)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    acc, mid, geo = res.targets["current token"].acc, len(res.layers) // 2, res.geometry
    d0, gv = geo.tail_vs_layer0.at(mid), res.guess.vs_layer0.at(mid)
    return {"input-token acc, layer 0 / mid / last": f"{acc.mean[0]:.3f} / {acc.mean[mid]:.3f} / {acc.mean[-1]:.3f}",
            "mid tail share − layer 0's": fmt_ci(d0), "via the guess at i−1 (gap − layer 0's)": fmt_ci(gv),
            **({} if res.prediction is None else
               {"x_i from the prediction at i − at i−1": fmt_ci(res.prediction.difference["logit lens"].at(-1))}),
            **({} if res.prediction is None or res.prediction.vs_bigram is None else
               {"x_i from the prediction at i − from a bigram table":
                fmt_ci(res.prediction.vs_bigram["logit lens"].at(-1))})}

"""The verdict of ``superpos run donation``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

import numpy as np

from superpos.experiment.result import Verdict
from superpos.hypotheses.common import fmt_ci
from superpos.hypotheses.donation.result import DonationResult


def verdict(res: DonationResult) -> Verdict:
    """Descriptive, calibrated against the two simple pictures: the later/own ratio ≈ k (every later loss pushes
    like the own loss, aligned: exponent 1) or ≈ √k (equal, independent pushes: exponent ½). The sink (position 0)
    is out of every number and reported apart."""
    nN = max(res.share)
    b, c = res.ratio_fit.exponent, res.decay_fit.exponent
    med = res.share_median[nN]
    picture = ("rejects the linear picture (exponent 1)" if b.hi < 1 else "is consistent with the linear picture")
    if b.lo <= 0.5 <= b.hi:
        picture += " and is consistent with independent pushes (½)"
    elif b.hi < 0.5:
        picture += " and grows more slowly than independent pushes (½)"
    n_ctx = res.config.contexts
    head = (f"Leaving out the attention sink, later positions donate a median {100 * med.mean:.0f}% "
            f"[{100 * med.lo:.0f}, {100 * med.hi:.0f}] of the gradient on a position's keys and values at N = {nN} "
            f"({n_ctx} contexts); the later/own ratio grows like k^{b.mean:.2f} [{b.lo:.2f}, {b.hi:.2f}] with the "
            f"number k of later losses, which {picture}.")
    lines = [f"N = {n}: median share from later losses {100 * res.share_median[n].mean:.1f}% "
             f"[{100 * res.share_median[n].lo:.1f}, {100 * res.share_median[n].hi:.1f}] (per-layer means "
             f"{100 * min(s.mean):.1f}–{100 * max(s.mean):.1f}%)" for n, s in res.share.items()]
    lines.append(f"Mean ratio later/own at N = {nN} (positions 1..N−3): {res.mean_ratio.mean:.2f} "
                 f"[{res.mean_ratio.lo:.2f}, {res.mean_ratio.hi:.2f}], against {np.mean(res.later_count):.1f} (the "
                 f"mean k) if every later loss pushed like the own loss, in the same direction.")
    lines.append(f"One later loss at distance δ pushes ≈ {res.decay_fit.prefactor:.2f} · δ^{c.mean:.2f} "
                 f"[{c.lo:.2f}, {c.hi:.2f}] of the own loss's push (median over positions, layers and contexts); such "
                 f"pushes, added in line, would make the ratio grow like k^{1 + c.mean:.2f} (measured: k^{b.mean:.2f}); "
                 f"added in random directions, it would level off.")
    lines.append(f"The sink (position 0), apart: median share from later losses {100 * res.sink.share.mean:.0f}% "
                 f"[{100 * res.sink.share.lo:.0f}, {100 * res.sink.share.hi:.0f}], ratio later/own "
                 f"{res.sink.ratio.mean:.1f} [{res.sink.ratio.lo:.1f}, {res.sink.ratio.hi:.1f}] at k = {nN - 2}.")
    return Verdict(headline=head, criteria=lines)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    n, b = max(res.share), res.ratio_fit.exponent
    return {f"median share from later losses, N = {n} (no sink)": fmt_ci(res.share_median[n]),
            "ratio ~ k^b": fmt_ci(b), "sink: ratio later/own": fmt_ci(res.sink.ratio)}

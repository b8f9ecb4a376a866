"""The gradient-donation report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from superpos.experiment.report import Report, band
from superpos.hypotheses.donation.result import DonationResult


def write_report(res: DonationResult, out: Path) -> Path:
    """report.md/.html and figures of a donation run."""
    import matplotlib.pyplot as plt

    rep = Report(f"Gradient donation to keys and values — {res.model}")
    rep.verdict(res.verdict, res)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    for n, s in res.share.items():
        band(axes[0], res.layers, s, f"N = {n}")
    axes[0].set(xlabel="layer (block)", ylabel="share of the k/v gradient from later losses", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    k, r = np.asarray(res.later_count), res.ratio_by_later
    axes[1].fill_between(k, r.lo, r.hi, alpha=0.25)
    axes[1].loglog(k, r.mean, "o-", ms=3, label=f"measured (median); fit k^{res.ratio_fit.exponent.mean:.2f}")
    axes[1].loglog(k, k, "k--", label="ratio = k (aligned, equal pushes)")
    axes[1].loglog(k, np.sqrt(k), "k:", label="ratio = √k (independent pushes)")
    axes[1].axhline(res.sink.ratio.mean, color="tab:red", lw=1, label="the sink (position 0), apart")
    axes[1].set(xlabel="k = number of later losses", ylabel="‖later gradient‖ / ‖own gradient‖")
    axes[1].legend(fontsize=8)
    d, dec = np.asarray(res.distance), res.decay
    axes[2].fill_between(d, dec.lo, dec.hi, alpha=0.25)
    axes[2].loglog(d, dec.mean, "o-", ms=3, label=f"median; fit δ^{res.decay_fit.exponent.mean:.2f}")
    axes[2].set(xlabel="distance δ of the later loss", ylabel="push of the loss at i+δ / push of the own loss")
    axes[2].legend(fontsize=8)
    rep.figure(fig, "donation.png", "Left: share of the gradient on keys/values that comes from later positions, per "
               "layer and context length (means, 95% CIs over contexts; the sink left out). Middle: the ratio "
               "against the number of later losses (median, 95% CI over contexts) with the two simple pictures. "
               "Right: how one later loss's push decays with its distance")
    rep.reproduce("donation", res.config)
    return rep.save(out)

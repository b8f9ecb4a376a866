"""The gradient-donation report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...report import Report, band
from ..results import DonationResult


def write_report(res: DonationResult, out: Path) -> Path:
    """report.md/.html and figures of a donation run."""
    import matplotlib.pyplot as plt

    rep = Report(f"Gradient donation to keys and values — {res.model}")
    rep.verdict(res.verdict)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for n, s in res.share.items():
        band(axes[0], res.layers, s, f"N = {n}")
    axes[0].set(xlabel="layer (block)", ylabel="share of the k/v gradient from later losses", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    k = np.asarray(res.later_count)
    axes[1].loglog(k, res.ratio_vs_later.median_over_layers_and_contexts, "o-", ms=3, label="measured (median)")
    axes[1].loglog(k, k, "k--", label="ratio = k (aligned, equal pushes)")
    axes[1].loglog(k, np.sqrt(k), "k:", label="ratio = √k (independent pushes)")
    axes[1].set(xlabel="k = number of later losses", ylabel="‖later gradient‖ / ‖own gradient‖")
    axes[1].legend(fontsize=8)
    rep.figure(fig, "donation.png", "Left: share of the gradient on keys/values that comes from later positions, per "
               "layer and context length (95% CIs over contexts). Right: the ratio against the number of later losses")
    rep.reproduce("donation", res.config)
    return rep.save(out)

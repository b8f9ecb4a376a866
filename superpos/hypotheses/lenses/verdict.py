"""The verdict of ``superpos run lenses``: a pure function of its typed result (no model, no torch), so a stored result can be judged again."""
from __future__ import annotations

import numpy as np

from superpos.experiment.result import Verdict
from superpos.hypotheses.lenses.result import LensesResult


def verdict(res: LensesResult) -> Verdict:
    """Headline: at how many layers before the last the tuned lens is closer to the output than the logit lens."""
    kl_logit = np.asarray(res.lenses.logit_lens.kl.mean)
    kl_tuned = np.asarray(res.lenses.tuned_lens.kl.mean)
    inner = slice(0, len(res.layers) - 1)  # the last layer is the output itself: both lenses are exact there
    headline = (f"The tuned lens is closer to the final output than the logit lens at "
                f"{int((kl_tuned < kl_logit)[inner].sum())} of {len(res.layers) - 1} layers before the last (mean KL "
                f"{kl_tuned[inner].mean():.3f} vs {kl_logit[inner].mean():.3f} nats on held-out positions).")
    return Verdict(headline=headline, criteria=res.summary)


def numbers(res) -> dict[str, str]:
    """The few numbers the verdict rests on, formatted, for tables that put runs side by side."""
    v = res.verdict  # noqa: F841
    inner = slice(0, len(res.layers) - 1)
    kl_t, kl_l = res.lenses.tuned_lens.kl.mean[inner], res.lenses.logit_lens.kl.mean[inner]
    return {"tuned closer at": f"{sum(t < g for t, g in zip(kl_t, kl_l))} of {len(kl_t)} layers",
            "mean KL tuned / logit": f"{np.mean(kl_t):.3f} / {np.mean(kl_l):.3f}"}

"""The settings of ``superpos run lookahead``: one documented dataclass whose fields are the flags."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.hypotheses.common import device_setting, n_boot_setting, out_setting, seed_setting
from superpos.hypotheses.probes.config import ProbeSettings
from superpos.settings import setting


@dataclass
class LookaheadConfig(ProbeSettings):
    """Probes at position i for the tokens at i+1, i+2, i+3, against current-token baselines."""

    offsets: list[int] = setting(help="target token offsets after the probed position", parse="offset_list",
                                 factory=lambda: [1, 2, 3])
    ngram_tokens: int = setting(1_000_000, "corpus tokens read after the probed contexts for the n-gram tables, "
                                           "besides the training contexts (the test contexts are never counted); 0: "
                                           "the training contexts only", parse="nonneg_int")
    l2: list[float] = setting(help="L2 strengths tried for the nested logistic probes; each probe takes the one with "
                                   "the best validation log-likelihood (while that is the largest tried, ten times it "
                                   "is tried too, up to 4 times)", parse="positive_float_list",
                              factory=lambda: [1e-4, 1e-3, 1e-2])
    needed_gain: float = setting(0.01, "the smallest nested gain (nats per position) the question counts as "
                                        "lookahead: a run that finds none beyond +1 reads INSUFFICIENT POWER, not NO, "
                                        "when its own minimum detectable gain is larger at every such offset, when a "
                                        "planted control of about this size is not detected at some such offset, or "
                                        "when a fit did not converge", parse="positive_float")
    null_draws: int = setting(5, "shuffles of the residual's rows for the null control; the gain is read beyond their "
                                  "mean, per position", parse="positive_int")
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/lookahead")

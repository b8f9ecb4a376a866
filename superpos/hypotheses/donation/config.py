"""The settings of ``superpos run donation``: one documented dataclass whose fields are the flags."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.hypotheses.common import (
    corpus_setting,
    device_setting,
    model_setting,
    n_boot_setting,
    out_setting,
    seed_setting,
)
from superpos.settings import setting


@dataclass
class DonationConfig:
    """Share of the gradient on a position's keys and values that later positions' losses donate."""

    model: str | None = model_setting()
    corpus: str | None = corpus_setting()
    contexts: int = setting(64, "contexts (the unit every interval resamples)", parse="positive_int")
    context_length: int = setting(64, "longest context N; shorter lengths are prefixes (memory grows like N²)",
                                  parse="positive_int")
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/donation")

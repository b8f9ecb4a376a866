"""The settings of ``superpos run lenses``: one documented dataclass whose fields are the flags."""
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


def tuned_lens_setting():
    return setting(None, "folder of a saved tuned lens; empty: train one on the training contexts")


def lens_steps_setting():
    return setting(300, "at most this many tuned-lens training steps when no --lens (it stops earlier once its "
                        "held-out KL stops falling)", parse="positive_int")


@dataclass
class LensesConfig:
    """Logit lens vs a tuned lens (trained here and saved to OUT/tuned_lens), per layer, on held-out contexts."""

    model: str | None = model_setting()
    corpus: str | None = corpus_setting()
    contexts: int = setting(64, "contexts to read", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    per_context: int = setting(48, "positions sampled per context", parse="positive_int")
    steps: int = setting(300, "at most this many tuned-lens training steps (it stops earlier once its held-out KL "
                                "stops falling)", parse="positive_int")
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/lenses")

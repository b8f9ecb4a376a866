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


def tuned_lens_setting(saved_to: str = ""):
    """The ``--lens`` setting of an experiment that reads a tuned lens (``saved_to``: where a lens it trains goes)."""
    return setting(None, "folder of a saved tuned lens; empty: train one on the training contexts"
                         + (f" (saved to {saved_to})" if saved_to else ""))


def lens_steps_setting(when: str = " when no --lens"):
    """The tuned lens's training budget, declared once: ``--lens-steps`` of the experiments that read a lens, and
    ``--steps`` of ``lenses`` itself (``when`` "": it always trains one)."""
    return setting(300, f"at most this many tuned-lens training steps{when} (it stops earlier once its held-out KL "
                        "stops falling)", parse="positive_int")


@dataclass
class LensesConfig:
    """Logit lens vs a tuned lens (trained here and saved to OUT/tuned_lens), per layer, on held-out contexts."""

    model: str | None = model_setting()
    corpus: str | None = corpus_setting()
    contexts: int = setting(64, "contexts to read", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    per_context: int = setting(48, "positions sampled per context", parse="positive_int")
    steps: int = lens_steps_setting(when="")
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/lenses")

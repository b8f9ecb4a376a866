"""The settings of ``superpos run reinject``: one documented dataclass whose fields are the flags."""
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
class ReinjectConfig:
    """Re-injection as the seed means it: a premise test (do late layers lose track of surprising input tokens?),
    then late residuals interpolated toward the true token's own representation, teacher-forced and cached."""

    model: str | None = model_setting()
    corpus: str | None = corpus_setting()
    contexts: int = setting(48, "evaluation contexts (the unit every interval resamples)", parse="positive_int")
    reference_contexts: int = setting(96, "further contexts, from documents the evaluation contexts do not hold "
                                          "(where the corpus has them), that give each token's mean residual per "
                                          "layer (its representation there)", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    layers: list[int] | None = setting(None, "residual layers to interpolate at; empty: every other block output of "
                                             "the last quarter, not the final residual", parse="int_list")
    weights: list[float] = setting(help="interpolation weights w: r ← (1−w)·r + w·‖r‖·t̂ (w = 1 replaces)",
                                   parse="unit_list", factory=lambda: [0.1, 0.25, 0.5, 1.0])
    targets: list[str] = setting(help="what r moves toward: mean (the token's mean residual at that layer) and/or "
                                      "embedding (its input embedding), both norm-matched",
                                 parse="reinject_targets", factory=lambda: ["mean", "embedding"])
    min_count: int = setting(2, "a token needs this many occurrences in the reference contexts to have a "
                                "representation (others are left alone and not scored)", parse="positive_int")
    n_bins: int = setting(5, "surprisal bins (equal counts)", parse="positive_int")
    n_bands: int = setting(3, "token-frequency bands (equal position counts, by the input token's count in the "
                              "reference contexts) within which the premise and the matched nulls are compared too",
                           parse="positive_int")
    needed_advantage: float = setting(0.02, "the smallest advantage over the matched nulls (nats per position, most "
                                             "surprising fifth) the question counts as re-injection helping: a run "
                                             "that finds none while its own minimum detectable advantage is larger "
                                             "reads INSUFFICIENT POWER, not NOT SUPPORTED", parse="positive_float")
    min_contexts: int = setting(10, "fewest contexts the judging half needs for a verdict; fewer read INSUFFICIENT "
                                    "POWER (intervals over a handful of contexts are not to be trusted)",
                                parse="positive_int")
    entropy_tolerance: float = setting(0.01, "a matched null whose mean output entropy in the most surprising fifth "
                                             "(judging half) differs from the setting's by more than this many nats "
                                             "is not matched, and re-injection cannot be SUPPORTED against it",
                                       parse="positive_float")
    samples: int = setting(3, "prompts to sample continuations from, clean and intervened (KV-cached)",
                           parse="nonneg_int")
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/reinject")

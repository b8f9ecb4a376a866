"""The settings of ``superpos run probes``: one documented dataclass whose fields are the flags."""
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
from superpos.hypotheses.lenses.config import lens_steps_setting, tuned_lens_setting
from superpos.settings import setting


@dataclass
class ProbeSettings:
    """What probes and lookahead probes share: the sample and the ridge probes."""

    model: str | None = model_setting()
    corpus: str | None = corpus_setting()
    contexts: int = setting(96, "contexts to read", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    per_context: int = setting(256, "positions sampled per context (at most all of them)", parse="positive_int")
    n_classes: int = setting(1024, "probe the N most frequent tokens (coverage is reported)", parse="positive_int",
                             flag="classes")
    ridge: float = setting(1e-2, "ridge strength", parse="positive_float")


@dataclass
class ProbeConfig(ProbeSettings):
    """Linear probes for the input (and previous) token by depth, and the probe against the embedding."""

    offsets: list[int] = setting(help="target token offsets from the probed position (0 = current, -1 = previous)",
                                 parse="offset_list", factory=lambda: [0, -1])
    n_shuffle: int = setting(1000, "shuffled-token permutations for the Procrustes null at layer 0, the middle and "
                                   "the last layer (1/50 of it, at least 20, at every third layer for the curve)",
                             parse="positive_int")
    guess_positions: int = setting(4096, "positions (drawn across all contexts, three quarters from the training "
                                         "ones) at which the input is decoded from the model's predictions at i and "
                                         "at i-1; 0: not run", parse="nonneg_int")
    needed_difference: float = setting(0.02, "the smallest accuracy difference (x_i read from the model's prediction "
                                              "at i minus from a bigram table p(.|x_i)) the question counts: a run "
                                              "that finds none while its own minimum detectable difference is larger "
                                              "reads INSUFFICIENT POWER on that answer", parse="positive_float")
    lens: str | None = tuned_lens_setting()
    lens_steps: int = lens_steps_setting()
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/probes")

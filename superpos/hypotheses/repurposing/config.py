"""The settings of ``superpos run repurposing``: one documented dataclass whose fields are the flags."""
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

CHANNEL_TOP = 16  # directions chosen per layer, on the tokens' side and on the random side
CHANNEL_MIN_MEMBER = 0.9  # a candidate token is near-impossible at this share of the selection positions or more
RARE_MIN_MEMBER = 0.9  # a token near-impossible at this share of the selection positions or more is a rare token (its mean
# scanned direction is the rare-token direction that ``--rare-direction`` projects out)


@dataclass
class RepurposingConfig:
    """Hypothesis 2: are near-impossible tokens' directions used mid-stack and removed before the output?"""

    model: str | None = model_setting()
    corpus: str | None = corpus_setting()
    contexts: int = setting(64, "contexts to read", parse="positive_int")
    context_length: int = setting(256, "tokens per context", parse="positive_int")
    per_context: int = setting(48, "positions sampled per context", parse="positive_int")
    unlikely: float = setting(1e-6, "final probability below which a token is near-impossible", parse="probability")
    likely: float = setting(1e-2, "final probability from which a token is likely", parse="probability")
    exclude_recent: int = setting(0, "leave the last N input tokens out of the near-impossible group (0: every "
                                     "token of the context so far)", parse="nonneg_int")
    basis: str = setting("output", "token directions criterion (i) scans: output (rows of γ ⊙ W_U, γ the final "
                                   "norm's gain: what the logits read) or unembedding (raw W_U rows, as before)",
                         parse="token_basis")
    remove_shared: bool = setting(True, "project the shared token direction (the mean of the scanned rows) out of "
                                        "every scanned token direction and random direction")
    context_cos: float = setting(0.5, "near-impossible groups also leave out every token whose scanned direction is "
                                      "within this |cos| of what a context token writes into the stream (its "
                                      "embedding, in the scanned space); 1: only the context tokens themselves",
                                 parse="unit")
    rare_direction: bool = setting(True, "also read criterion (i) at the chosen layer with the rare-token direction "
                                         "(the mean scanned direction of tokens near-impossible at ≥ "
                                         f"{100 * RARE_MIN_MEMBER:.0f} % of the selection positions) projected out")
    needed_push: float = setting(0.2, "largest minimum detectable push (× ‖r − μ‖, 80 % power) at which 'not found' "
                                      "is a verdict; a run whose own is larger (or has none) reads INSUFFICIENT POWER",
                                 parse="positive_float")
    z_high: float = setting(5.0, "z threshold for counting strong pushes", parse="float")
    lens: str | None = tuned_lens_setting(saved_to="OUT/tuned_lens")
    lens_steps: int = lens_steps_setting()
    dictionary: str | None = setting(None, "SAE folder for the dictionary view (its layer is read from its metadata)")
    control: str = setting("none", "plant a control written at layer n/3 and removed at 2n/3: scanned token "
                                   "directions (positive), random directions (negative), token directions of the "
                                   "other basis (gamma), a span of 4 tokens (subspace), 8 fixed tokens (consistent), "
                                   "token directions written by an attention or MLP output (attn, mlp), removed by a "
                                   "gate (gated), or reversed rather than removed (anti); one of none, positive, "
                                   "negative, gamma, subspace, consistent, attn, mlp, gated, anti", parse="control")
    control_alpha: float = setting(1.0, "size of the planted vector, as a multiple of the residual norm",
                                   parse="positive_float")
    select_fraction: float = setting(0.5, "share of the contexts that chooses the verdict's layer; the verdict is "
                                          "tested on the others", parse="probability")
    power_alphas: list[float] = setting(help="planted push sizes (× residual norm) for the power curve at the "
                                             "chosen layer", parse="unit_list",
                                        factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    power_draws: int = setting(10, "draws per size for the power curve (0: no power curve)", parse="nonneg_int")
    ablation_rank: int = setting(16, "rank of the subspaces projected out at the chosen layer (0: no ablation)",
                                 parse="nonneg_int")
    ablation_contexts: int = setting(16, "held-out contexts for the causal ablation", parse="positive_int")
    mechanism_alphas: list[float] = setting(help="sizes (× residual norm) at which every planted control (see "
                                                 "--control) is run through criterion (i) at the chosen layer",
                                            parse="unit_list", factory=lambda: [0.1, 0.25, 0.5])
    mechanism_contexts: int = setting(16, "held-out contexts for the planted controls (0: none run)",
                                      parse="nonneg_int")
    write_contexts: int = setting(16, "held-out contexts for the per-component write/cancel decomposition (0: none)",
                                  parse="nonneg_int")
    n_boot: int = n_boot_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    out: str = out_setting("runs/repurposing")

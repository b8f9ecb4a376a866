"""The typed result of ``superpos run lookahead`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.probes.result import ProbeTarget
from superpos.stats import Interval

#: the probed contexts must hold this many documents to be split by document (else by context)
MIN_DOCUMENTS = 8


@dataclass(kw_only=True)
class NestedGain:
    """One nested comparison on test contexts: a logistic probe on [n-gram features + the model's log-probs at i
    + the embedding of token i (layer 0; absent in older results)] (base) against the same features plus the
    residual at i at a later layer (full), each scored per position."""

    layer: int  # the residual layer, chosen on validation contexts
    layer_screen: list[float]  # per layer: validation accuracy of the ridge screen that chose it
    l2_base: float  # L2 strengths chosen on validation
    l2_full: float
    base_loglik: Interval  # mean log-likelihood of the true token (nats)
    full_loglik: Interval
    gain: Interval  # full − base log-likelihood, paired per position: the verdict's number
    base_acc: Interval  # top-1 accuracy over the probed classes
    full_acc: Interval
    acc_gain: Interval  # full − base accuracy, paired per position
    floor: Interval  # accuracy of the floor every probe is shown against (on the same positions)
    floor_name: str  # what the floor is: the model's own top guess (+1) or the back-off n-gram (beyond +1)
    train_positions: int
    test_positions: int
    # (None in results from before the planted control, the warm-started fit and the split by document)
    converged: dict[str, bool] | None = None  # "base", "full", "planted": did each fit converge
    iterations: dict[str, int] | None = None  # ... and its L-BFGS iterations
    planted_gain: Interval | None = None  # the nested gain of [residual + a weak noisy one-hot of the target]
    planted_amplitude: float | None = None  # its one-hot's amplitude, set to plant about --needed-gain nats
    split: str | None = None  # the split unit: "documents" or "contexts"
    test_units: int | None = None  # held-out documents (or contexts) for test
    test_contexts: int | None = None  # test contexts the intervals resample
    ngram_tokens: int | None = None  # tokens the test-time n-gram tables were counted on
    # (None in results from before the embedding joined the base: their base is the n-grams and log-probs only)
    embedding_gain: Interval | None = None  # layer 0 (the embedding of token i) added to the n-grams and log-probs:
    # the calibration; where set, the base above holds the embedding too and ``gain`` is read beyond it
    l2_embedding: float | None = None  # the embedding block's L2, chosen on validation
    # (None in results from before the null control)
    null_gain: Interval | None = None  # the nested gain of the residual's rows shuffled across positions (per
    # position, the mean over the draws)
    null_draws: list[float] | None = None  # each draw's mean gain (None: one draw, in results from before the draws)
    beyond_null: Interval | None = None  # gain minus that null's, paired per position: where set, the verdict's number
    planted_beyond: Interval | None = None  # the planted control's log-likelihood minus the real full probe's, paired


@dataclass(kw_only=True)
class LookaheadTarget(ProbeTarget):
    """Probes for token i + k against baselines that see the context (test contexts; choices on validation).

    ``nested`` is the comparison the verdict reads; runs before it held the two separate ridge-probe gains
    (``model_guess``, ``best_layer``, ``best_layer_acc``, ``gain_over_ngram``, ``gain_over_guess``), kept so those
    results still read back."""

    ngram: dict[int, Interval]  # n -> accuracy of the back-off n-gram over the tokens up to i
    ngram_order: int  # the n chosen on validation
    nested: NestedGain | None = None
    model_guess: Interval | None = None  # (older runs) a ridge probe on the model's next-token log-probs at i
    best_layer: int | None = None  # (older runs) chosen on validation
    best_layer_acc: Interval | None = None
    gain_over_ngram: Interval | None = None  # (older runs) that layer's ridge probe minus the chosen n-gram
    gain_over_guess: Interval | None = None  # (older runs) ... minus the ridge probe on the model's log-probs

    @property
    def gain(self) -> Interval | None:
        """The nested gain; in older runs, the smaller of the two separate gains (by its lower bound)."""
        if self.nested is not None:
            return self.nested.gain
        if self.gain_over_ngram is None or self.gain_over_guess is None:
            return None
        return min(self.gain_over_ngram, self.gain_over_guess, key=lambda g: g.lo)


@dataclass(kw_only=True)
class LookaheadResult(Result):
    """``run lookahead``."""

    config: LookaheadConfig
    layers: list[int]
    n_positions: int
    offsets: dict[str, LookaheadTarget]  # "+1", "+2", ...
    ngram_tokens: int | None = None  # tokens the test-time n-gram tables were counted on (no test context among them)
    model_top1: Interval | None = None  # the model's own top guess (whole vocabulary) naming the token at i+1

"""The typed result of ``superpos run lookahead`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.probes.result import ProbeTarget
from superpos.stats import Interval


@dataclass(kw_only=True)
class LookaheadTarget(ProbeTarget):
    """Probes for token i + k against baselines that see the context (test contexts; choices on validation)."""

    ngram: dict[int, Interval]  # n -> accuracy of the back-off n-gram over the tokens up to i
    ngram_order: int  # the n chosen on validation
    model_guess: Interval  # a probe on the model's own next-token log-probabilities at i
    best_layer: int  # chosen on validation
    best_layer_acc: Interval
    gain_over_ngram: Interval  # the chosen layer's probe minus the chosen n-gram, paired per position
    gain_over_guess: Interval  # ... minus the probe on the model's own next-token distribution

    @property
    def gain(self) -> Interval:
        """The smaller of the two gains (by its lower bound): lookahead must beat both baselines."""
        return min(self.gain_over_ngram, self.gain_over_guess, key=lambda g: g.lo)


@dataclass(kw_only=True)
class LookaheadResult(Result):
    """``run lookahead``."""

    config: LookaheadConfig
    layers: list[int]
    n_positions: int
    offsets: dict[str, LookaheadTarget]  # "+1", "+2", ...

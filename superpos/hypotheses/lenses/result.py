"""The typed result of ``superpos run lenses`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass, field

from superpos.experiment.result import Result
from superpos.hypotheses.lenses.config import LensesConfig
from superpos.stats import Band


@dataclass(kw_only=True)
class LensScores:
    """One lens, per layer on held-out positions: KL to the final output, top-1 agreement, CE on the next token."""

    kl: Band
    top1: Band
    ce: Band


@dataclass(kw_only=True)
class LensComparison:
    """Logit lens vs tuned lens (``lenses.compare_lenses``); CIs over held-out contexts."""

    held_out_positions: int
    train_positions: int
    history: list[float]  # tuned-lens training loss per step (empty when a saved lens was given)
    logit_lens: LensScores = field(metadata={"json": "logit lens"})
    tuned_lens: LensScores = field(metadata={"json": "tuned lens"})
    training: dict = field(default_factory=dict)  # the tuned lens's meta: steps run, held-out KL, whether it converged


@dataclass(kw_only=True)
class LensesResult(Result):
    """``run lenses``."""

    config: LensesConfig
    n_positions: int
    n_contexts: int
    layers: list[int]
    lenses: LensComparison
    summary: list[str]

"""The typed result of ``superpos run reinject`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result, Verdict
from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.stats import Band, Interval


@dataclass(kw_only=True)
class AlphaEffect:
    """Δ loss on the following token at one re-injection setting: overall, per surprisal bin, top − bottom."""

    overall: Interval
    bins: list[Interval]
    top_minus_bottom: Interval


@dataclass(kw_only=True)
class Premise:
    """Is the input token still decodable late, by how surprising it was? (nearest token representation)"""

    layers: list[int]
    coverage: float  # share of evaluation positions whose token has a representation (min_count)
    decodable: dict[int, Band]  # layer -> decodability per surprisal fifth (CIs over contexts)
    gap: Band  # per layer: most- minus least-surprising fifth, paired by context
    late_minus_early: Interval  # the gap at the re-injection layers minus the gap at layer 1, paired by context


@dataclass(kw_only=True)
class CachedCheck:
    """The interpolation fed one token at a time with a KV cache (the sampler's loop) against whole windows."""

    contexts: int
    tokens: int
    max_abs_diff: float  # per-position loss, cached loop vs teacher-forced, same intervention
    delta: float  # mean Δ loss of the chosen setting in the cached loop


@dataclass(kw_only=True)
class ReinjectSample:
    """A greedy continuation of a real prompt, clean and with the chosen interpolation (KV-cached)."""

    prompt: str
    clean: str
    intervened: str


@dataclass(kw_only=True)
class ReinjectVerdict(Verdict):
    """The re-injection verdict: the premise and the judged setting."""

    premise_met: bool
    chosen: str


@dataclass(kw_only=True)
class ReinjectResult(Result):
    """``run reinject``."""

    config: ReinjectConfig
    verdict: ReinjectVerdict | None = None
    layers: list[int]
    clean_loss: float
    bin_edges: list[float]
    premise: Premise
    effects: dict[str, AlphaEffect]  # "mean w=0.5" -> Δ loss on the following token, every evaluation context
    chosen: str  # the setting with the lowest most-surprising-fifth Δ on the selection half
    judged: AlphaEffect  # that setting on the other half
    vs_null: Interval  # on the other half, most-surprising fifth: Δ toward the true token minus toward another token
    cached: CachedCheck
    samples: list[ReinjectSample]

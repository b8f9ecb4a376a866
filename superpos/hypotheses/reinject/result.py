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
    # the same, computed within each token-frequency band (low → high), so a fifth is not a different mix of token
    # types; None: a result from before the bands
    within_bands: Band | None = None
    # late_minus_early with each band's mean decodability removed per layer (positions centred within their band):
    # what is left within token types, all bands pooled; None: a result from before it
    within: Interval | None = None


@dataclass(kw_only=True)
class CachedCheck:
    """The interpolation fed one token at a time with a KV cache (the sampler's loop) against whole windows."""

    contexts: int
    tokens: int
    max_abs_diff: float  # per-position loss, cached loop vs teacher-forced, same intervention
    delta: float  # mean Δ loss of the chosen setting in the cached loop


@dataclass(kw_only=True)
class MatchedNull:
    """A null matched to one setting: it changes the output distribution as much, without the true token.
    ``temperature``: the clean final logits divided by T; ``layer mean``: the same interpolation (layers, w,
    norm-matched) toward the layer's mean residual instead of the token's, its final logits divided by T. T is
    chosen within each surprisal fifth of each half (choosing, judging) so that the fifth's mean output entropy
    equals the setting's there (before ``temperatures``: one T for the temperature null, matched on the selection
    half's overall mean, and none for the layer mean)."""

    parameter: float  # the temperature null: T in the judging half's most surprising fifth; the layer mean: w
    entropy: float  # its mean output entropy on the selection half [nats]
    effect: AlphaEffect  # Δ loss on the following token, every evaluation context
    temperatures: list[list[float]] | None = None  # [choosing half, judging half] × surprisal fifth: T
    entropy_fifths: list[float] | None = None  # mean output entropy per surprisal fifth, judging half [nats]


@dataclass(kw_only=True)
class NullComparison:
    """The chosen setting's advantage over one matched null on the judging half: Δ(null) − Δ(true token), paired
    per position, intervals resampling contexts (> 0: the true token does better)."""

    by_fifth: Band  # surprisal fifths, low → high
    by_band: Band  # token-frequency bands, rare → frequent (every fifth)
    top_by_band: Band  # the most surprising fifth, within each frequency band


@dataclass(kw_only=True)
class Reconciliation:
    """Why the KV-cached check's Δ and the teacher-forced overall Δ differ: the chosen setting's mean Δ loss over
    position sets that widen step by step from the cached check's windows to the headline's (same run)."""

    steps: dict[str, Interval]  # what is averaged -> mean Δ loss (interval over contexts)


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
    # on the selection half, most-surprising fifth: the setting whose Δ is lowest against the stronger of its two
    # matched nulls (before the matched nulls: the lowest Δ)
    chosen: str
    judged: AlphaEffect  # that setting on the other half
    vs_null: Interval  # on the other half, most-surprising fifth: Δ toward the true token minus toward another token
    cached: CachedCheck
    samples: list[ReinjectSample]
    # the matched nulls (None: a result from before them, judged NOT SUPPORTED for want of them)
    entropy: dict[str, float] | None = None  # "clean" and each setting: mean output entropy, selection half [nats]
    # "clean" and each setting: mean output entropy per surprisal fifth, judging half [nats] (None: a result from
    # before the nulls were matched within fifths)
    entropy_fifths: dict[str, list[float]] | None = None
    matched: dict[str, dict[str, MatchedNull]] | None = None  # setting -> {"temperature": …, "layer mean": …}
    vs_matched: dict[str, NullComparison] | None = None  # the chosen setting against each matched null
    band_edges: list[float] | None = None  # reference-context counts that split the frequency bands
    reconcile: Reconciliation | None = None
    # documents of the evaluation contexts that the reference contexts also read (0: disjoint; None: a result from
    # before the split by document, whose reference contexts were the ones just before the evaluation contexts)
    shared_documents: int | None = None
    reference_read: int | None = None  # reference contexts read (fewer than asked where the corpus ends first)

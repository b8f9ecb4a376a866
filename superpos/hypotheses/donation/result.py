"""The typed result of ``superpos run donation`` (read back from results.json with ``read``)."""
from __future__ import annotations

from dataclasses import dataclass

from superpos.experiment.result import Result
from superpos.hypotheses.donation.config import DonationConfig
from superpos.stats import Band, Interval


@dataclass(kw_only=True)
class PowerLaw:
    """y ≈ prefactor · x^exponent, fitted on log–log medians; the exponent's interval resamples contexts."""

    exponent: Interval
    prefactor: float


@dataclass(kw_only=True)
class SinkDonation:
    """Position 0 (the attention sink), reported apart: its share from later losses and its later/own ratio at the
    longest N (medians over layers per context; median over contexts with a bootstrap CI)."""

    share: Interval
    ratio: Interval


@dataclass(kw_only=True)
class DonationResult(Result):
    """``run donation``. Every statistic leaves position 0 (the sink) out; ``sink`` reports it."""

    config: DonationConfig
    layers: list[int]
    lengths: list[int]
    share: dict[int, Band]  # context length -> per-layer mean share from later losses (CIs over contexts)
    share_median: dict[int, Interval]  # context length -> median over contexts of the per-context median share
    later_count: list[float]  # k = number of later losses, for positions 1 .. N-3 at the longest N
    ratio_by_later: Band  # per k: median over contexts (and layers) of ‖later‖ / ‖own‖
    ratio_fit: PowerLaw  # ratio ≈ c · k^b
    mean_ratio: Interval  # mean over positions and layers of ‖later‖ / ‖own‖ (against (N−2)/2 for the linear picture)
    distance: list[int]  # j − i
    decay: Band  # per distance: median ‖∂loss_{i+δ}/∂kv_i‖ / ‖∂loss_i/∂kv_i‖
    decay_fit: PowerLaw
    sink: SinkDonation

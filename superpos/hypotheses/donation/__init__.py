"""The share of the gradient on a position's keys and values that later positions' losses donate."""
from superpos.experiment.spec import Experiment
from superpos.hypotheses.donation.config import DonationConfig
from superpos.hypotheses.donation.result import DonationResult
from superpos.hypotheses.donation.verdict import numbers, verdict

EXPERIMENT = Experiment(
    name="donation", config=DonationConfig, result=DonationResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.donation.run:run", report="superpos.hypotheses.donation.report:write_report",
    docs="docs/probes.md",
    help="share of the gradient on keys/values donated by later positions' losses",
    description="Per layer, the gradient on a position's keys and values from the losses of later positions vs its "
                "own loss, by context length, with the attention sink apart; how the ratio grows with the number of "
                "later losses and how one loss's push decays with distance. See docs/probes.md.",
    presets={"quick": {"contexts": 2, "context_length": 16},
             "replication": {"contexts": 16, "context_length": 64}},
)

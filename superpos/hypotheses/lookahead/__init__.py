"""Probes at position i for the tokens at i+1, i+2, i+3, against n-grams and the model's own guess."""
from superpos.experiment.spec import Experiment
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.lookahead.result import LookaheadResult
from superpos.hypotheses.lookahead.verdict import numbers, verdict

EXPERIMENT = Experiment(
    name="lookahead", config=LookaheadConfig, result=LookaheadResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.lookahead.run:run", report="superpos.hypotheses.lookahead.report:write_report",
    docs="docs/probes.md",
    help="probes at position i for the tokens at i+1, i+2, i+3, vs n-grams and the model's own guess",
    description="Per layer, held-out accuracy of probes from position i for tokens i+k, against back-off n-grams (n = 2, "
                "3, 4) over the tokens up to i and a probe on the model's own next-token distribution; the layer and "
                "the baseline are chosen on validation contexts. See docs/probes.md.",
    presets={"quick": {"contexts": 12, "context_length": 64, "per_context": 32, "n_classes": 64},
             "replication": {"contexts": 32, "context_length": 128, "per_context": 64, "n_classes": 256}},
)

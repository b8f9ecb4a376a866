"""Is the token at i+k held in the residual at i beyond n-grams and the model's own next-token distribution?"""
from superpos.experiment.spec import Experiment
from superpos.hypotheses.lookahead.config import LookaheadConfig
from superpos.hypotheses.lookahead.result import LookaheadResult
from superpos.hypotheses.lookahead.verdict import numbers, verdict

EXPERIMENT = Experiment(
    name="lookahead", config=LookaheadConfig, result=LookaheadResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.lookahead.run:run", report="superpos.hypotheses.lookahead.report:write_report",
    docs="docs/probes.md",
    help="the tokens at i+1, i+2, i+3 from position i: [n-grams + the model's log-probs] with and without the residual",
    description="Per offset k, one nested comparison: a logistic probe on [n-gram features + the model's log-probs at "
                "i] against the same with the residual at i added (layer and L2 chosen on validation contexts), "
                "scored on test documents as the paired gain in log-likelihood of the token at i+k, beside a planted "
                "control (a noisy one-hot of the target added to the residual); n-grams counted on every token read "
                "except the held-out documents; the model's top guess (+1) or the n-gram as the floor. See "
                "docs/probes.md.",
    presets={"quick": {"contexts": 12, "context_length": 64, "per_context": 32, "n_classes": 64},
             "replication": {"contexts": 96, "context_length": 128, "per_context": 32, "n_classes": 256}},
)

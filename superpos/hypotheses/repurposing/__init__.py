"""Hypothesis 2: unlikely-token repurposing (docs/repurposing.md)."""
from superpos.experiment.spec import Control, Experiment
from superpos.hypotheses.repurposing.config import RepurposingConfig
from superpos.hypotheses.repurposing.result import RepurposingResult
from superpos.hypotheses.repurposing.verdict import numbers, verdict

EXPERIMENT = Experiment(
    name="repurposing", config=RepurposingConfig, result=RepurposingResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.repurposing.run:run", report="superpos.hypotheses.repurposing.report:write_report",
    docs="docs/repurposing.md",
    help="unlikely-token repurposing, with logit and tuned lens",
    description="Hypothesis 2: are directions of tokens that are near-impossible in context used mid-stack and removed "
                "before the output? Per-layer effect with nulls (Gaussian with the layer's covariance, random "
                "directions, shuffled contexts, same tokens where likely), the logit/tuned-lens view, and optionally a "
                "dictionary view. See docs/repurposing.md.",
    presets={"quick": {"contexts": 8, "context_length": 64, "per_context": 16, "lens_steps": 30,
                       "power_alphas": [0.2, 1.0], "power_draws": 2, "ablation_contexts": 4,
                       "mechanism_alphas": [0.5], "mechanism_contexts": 4, "write_contexts": 4},
             "replication": {"contexts": 32, "context_length": 128, "per_context": 16,
                             "power_alphas": [0.05, 0.1, 0.15, 0.2, 0.3, 0.5], "power_draws": 5, "ablation_contexts": 8,
                             "mechanism_alphas": [0.25, 0.5], "mechanism_contexts": 8, "write_contexts": 8}},
    controls=(Control(name="random directions", kind="null", settings={"control": "negative"}, expect_supported=False),
              Control(name="planted token directions", kind="planted", settings={"control": "positive"},
                      expect_supported=True)),
    reused={"lens": "tuned_lens"},
)

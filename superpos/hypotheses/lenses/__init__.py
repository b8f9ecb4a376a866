"""Logit lens vs tuned lens per layer; the tuned lens itself (``lens.TunedLens``) is used by repurposing."""
from superpos.experiment.spec import Experiment
from superpos.hypotheses.lenses.config import LensesConfig
from superpos.hypotheses.lenses.result import LensesResult
from superpos.hypotheses.lenses.verdict import numbers, verdict

EXPERIMENT = Experiment(
    name="lenses", config=LensesConfig, result=LensesResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.lenses.run:run", report="superpos.hypotheses.lenses.report:write_report",
    docs="docs/repurposing.md",
    help="logit lens vs tuned lens per layer (trains and saves a tuned lens)",
    description="Train a tuned lens (one affine translator per layer) and compare it with the logit lens on held-out "
                "contexts: KL to the final output, top-1 agreement and CE per layer. The lens is saved to "
                "OUT/tuned_lens and can be passed to `run repurposing --lens`.",
    presets={"quick": {"contexts": 8, "context_length": 64, "per_context": 16, "steps": 30},
             "replication": {"contexts": 24, "context_length": 128, "per_context": 32}},
)

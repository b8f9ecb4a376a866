"""Do late layers lose surprising tokens? Interpolate late residuals toward the true token."""
from superpos.experiment.spec import Experiment
from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.hypotheses.reinject.result import ReinjectResult
from superpos.hypotheses.reinject.verdict import numbers, verdict

EXPERIMENT = Experiment(
    name="reinject", config=ReinjectConfig, result=ReinjectResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.reinject.run:run", report="superpos.hypotheses.reinject.report:write_report",
    docs="docs/probes.md",
    help="do late layers lose surprising tokens? Interpolate late residuals toward the true token",
    description="First the premise: is the input token still decodable late, by its surprisal? Then, teacher-forced on "
                "real text, move late residuals at p toward token p's own representation (its mean residual there, or "
                "its embedding) and measure the change in loss on token p+1 by surprisal fifths and frequency bands, "
                "against nulls that change the output as much (a temperature matched on output entropy within each "
                "surprisal fifth; the same move toward the layer's mean residual, tempered as much); the setting is "
                "chosen on half the contexts and judged on the other, INSUFFICIENT POWER when that half could not "
                "have seen the advantage the question needs. The KV-cached sampler: "
                "superpos.hypotheses.reinject.run.generate. See docs/probes.md.",
    presets={"quick": {"contexts": 6, "reference_contexts": 6, "context_length": 64, "samples": 1},
             "replication": {"contexts": 24, "reference_contexts": 24, "context_length": 128, "samples": 1}},
)

"""The input (and previous) token by depth, the probe's geometry against the embedding, and whether the input is
held through the prediction made at i."""
from superpos.experiment.spec import Experiment
from superpos.hypotheses.probes.config import ProbeConfig
from superpos.hypotheses.probes.result import ProbesResult
from superpos.hypotheses.probes.verdict import numbers, verdict

EXPERIMENT = Experiment(
    name="probes", config=ProbeConfig, result=ProbesResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.probes.run:run", report="superpos.hypotheses.probes.report:write_report",
    docs="docs/probes.md",
    help="input (and previous) token by depth; geometry vs the embedding calibrated at layer 0; via the prediction?",
    description="Per layer, held-out accuracy of linear probes that recover the current and the previous input token, "
                "and a training-free read-out over the whole vocabulary; class means against the embedding (tail share "
                "vs layer 0 and a random basis, Procrustes vs shuffles, PCA / NMF / coordinate / frequency bases); "
                "whether the input is read from the model's prediction made at i (its output and the logit / tuned "
                "lens by layer) better than from its guess for it made at i-1; and the older i-1 right-vs-wrong "
                "gap. See docs/probes.md.",
    presets={"quick": {"contexts": 12, "context_length": 64, "per_context": 32, "n_classes": 64, "n_shuffle": 20},
             "replication": {"contexts": 32, "context_length": 128, "per_context": 64, "n_classes": 256,
                             "n_shuffle": 100}},
)

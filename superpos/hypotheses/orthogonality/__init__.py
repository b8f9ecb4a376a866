"""Hypothesis 1: exp(N_emb) near-orthogonality (docs/orthogonality.md)."""
from superpos.experiment.spec import Control, Experiment
from superpos.hypotheses.orthogonality.config import OrthogonalityConfig
from superpos.hypotheses.orthogonality.result import OrthogonalityResult
from superpos.hypotheses.orthogonality.verdict import calibrated_verdict, numbers, verdict

EXPERIMENT = Experiment(
    name="orthogonality", config=OrthogonalityConfig, result=OrthogonalityResult, verdict=verdict, numbers=numbers,
    compute="superpos.hypotheses.orthogonality.run:run", report="superpos.hypotheses.orthogonality.report:write_report",
    docs="docs/orthogonality.md",
    help="exp(N_emb) near-orthogonality of token directions and dictionaries",
    description="Hypothesis 1: does the residual stream hold far more than d nearly orthogonal directions? Token-"
                "embedding geometry vs random nulls and bounds, a sweep of TopK SAE sizes, and atom–token alignment. "
                "See docs/orthogonality.md.",
    presets={"quick": {"harvest_tokens": 8192, "expansions": [1, 2], "seeds": 2, "fit_tokens": 40000,
                       "capacity_sample": 1024, "capacity_dims": [8], "ce_contexts": 2,
                       "budgets": [10_000, 20_000, 40_000]},
             "replication": {"harvest_tokens": 32768, "expansions": [1, 4], "seeds": 2, "fit_tokens": 60_000,
                             "capacity_sample": 4096, "capacity_dims": [32, 128], "ce_contexts": 4,
                             "budgets": [60_000, 180_000, 540_000]}},
    controls=tuple(Control(name=name, kind=kind, settings={"control": control, "capacity": False, "external": None},
                           expect_supported=want)
                   for name, kind, control, want in (("gaussian", "null", "gaussian", False),
                                                     ("pc-shuffle", "null", "pc-shuffle", False),
                                                     ("planted superposition", "planted", "planted", True),
                                                     ("realistic plant", "power", "realistic", None))),
    reused={"store": "acts.h5", "plant_from": "plant.json"}, calibrated_verdict=calibrated_verdict,
)

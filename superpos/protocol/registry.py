"""The registry: every experiment folder under ``superpos.hypotheses``, by name. Adding an experiment is one folder
(config, result, verdict, run, report and its ``EXPERIMENT`` record) and one line here."""
from __future__ import annotations

from superpos.experiment.spec import Experiment
from superpos.hypotheses import donation, lenses, lookahead, orthogonality, probes, reinject, repurposing

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    orthogonality.EXPERIMENT,
    lenses.EXPERIMENT,
    repurposing.EXPERIMENT,
    probes.EXPERIMENT,
    lookahead.EXPERIMENT,
    donation.EXPERIMENT,
    reinject.EXPERIMENT,
)}

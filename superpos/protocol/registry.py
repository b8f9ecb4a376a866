"""The experiment protocol: one registry of experiments, each a documented ``Config`` dataclass
(``superpos.hypotheses.configs``), a ``run(config) -> Result`` function that writes results.json and its report,
its typed ``Result`` dataclass (``superpos.hypotheses.results``, read back with ``Experiment.read``), and its
``verdict(result)`` (``superpos.hypotheses.verdicts``: a pure function of the result, so a stored result can be
judged again). The CLI (``superpos run NAME``), ``run all`` and each report's reproduce line are generated from here, so
every setting has exactly one default — its dataclass field's.

This module is the library's; the CLI builds argparse flags from ``settings(name)`` and nothing here imports it.
"""
from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from superpos.hypotheses import configs as C
from superpos.hypotheses import results as R
from superpos.hypotheses import verdicts as V
from superpos.experiment.result import Result, Verdict, to_jsonable
from superpos.settings import format_value, settings


# ------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class Control:
    """A calibration run: the identical analysis with settings that remove the effect (a null) or plant one of
    known size; the verdict on it must come out as ``expect_supported``."""

    name: str
    kind: str  # "null" or "planted"
    settings: dict
    expect_supported: bool


@dataclass(frozen=True)
class Experiment:
    """An experiment: its config and result classes, where its run function lives, its verdict, what it is, and its
    preset settings (``run all --preset``)."""

    name: str
    config: type
    result: type
    run_path: str  # "module:function", imported on use (the registry stays light)
    verdict: Callable[[Result], Verdict]
    help: str
    description: str
    # preset name -> field values: "quick" a smoke run, "replication" the size of docs/results/replication.md
    presets: dict = field(default_factory=dict)
    controls: tuple[Control, ...] = ()  # its null and planted calibration runs (run_calibrated)
    reused: dict = field(default_factory=dict)  # field -> what the real run leaves in OUT that controls reuse
    # the verdict relative to the controls, (real, {control name: result}) -> Verdict; None: each judged alone
    calibrated_verdict: Callable[[Result, dict], Verdict] | None = None
    # "module:function"(real, out, controls=, calibrated=) rewriting the report with the controls side by side
    calibrated_report: str | None = None

    def run(self, cfg) -> Result:
        """Run it; returns its typed result (also written to cfg.out/results.json with the report)."""
        module, func = self.run_path.split(":")
        return getattr(importlib.import_module(module), func)(cfg)

    def read(self, folder) -> Result:
        """The typed result a run of this experiment stored in ``folder`` (or a results.json path)."""
        return self.result.read(folder)


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("orthogonality", C.OrthogonalityConfig, R.OrthogonalityResult,
               "superpos.hypotheses.orthogonality:run", V.orthogonality,
               "exp(N_emb) near-orthogonality of token directions and dictionaries",
               "Hypothesis 1: does the residual stream hold far more than d nearly orthogonal directions? Token-"
               "embedding geometry vs random nulls and bounds, a sweep of TopK SAE sizes, and atom–token alignment. "
               "See docs/orthogonality.md.",
               {"quick": {"harvest_tokens": 8192, "expansions": [1, 2], "seeds": 2, "fit_tokens": 40000,
                          "capacity_sample": 1024, "capacity_dims": [8], "ce_contexts": 2},
                "replication": {"harvest_tokens": 32768, "expansions": [1, 4], "seeds": 2, "fit_tokens": 60_000,
                                "capacity_sample": 4096, "capacity_dims": [32, 128], "ce_contexts": 4}},
               (Control("gaussian", "null", {"control": "gaussian", "capacity": False}, False),
                Control("pc-shuffle", "null", {"control": "pc-shuffle", "capacity": False}, False),
                Control("planted superposition", "planted", {"control": "planted", "capacity": False}, True)),
               {"store": "acts.h5"}, V.orthogonality_calibrated,
               "superpos.hypotheses.reports.orthogonality:write_report"),
    Experiment("lenses", C.LensesConfig, R.LensesResult,
               "superpos.hypotheses.lenses:run_lenses", V.lenses,
               "logit lens vs tuned lens per layer (trains and saves a tuned lens)",
               "Train a tuned lens (one affine translator per layer) and compare it with the logit lens on held-out "
               "contexts: KL to the final output, top-1 agreement and CE per layer. The lens is saved to "
               "OUT/tuned_lens and can be passed to `run repurposing --lens`.",
               {"quick": {"contexts": 8, "context_length": 64, "per_context": 16, "steps": 30},
                "replication": {"contexts": 24, "context_length": 128, "per_context": 32}}),
    Experiment("repurposing", C.RepurposingConfig, R.RepurposingResult,
               "superpos.hypotheses.repurposing:run", V.repurposing,
               "unlikely-token repurposing, with logit and tuned lens",
               "Hypothesis 2: are directions of tokens that are near-impossible in context used mid-stack and removed "
               "before the output? Per-layer effect with nulls (Gaussian with the layer's covariance, random "
               "directions, shuffled contexts, same tokens where likely), the logit/tuned-lens view, and optionally a "
               "dictionary view. See docs/repurposing.md.",
               {"quick": {"contexts": 8, "context_length": 64, "per_context": 16, "lens_steps": 30,
                          "power_alphas": [0.2, 1.0], "power_draws": 2, "ablation_contexts": 4,
                          "mechanism_alphas": [0.5], "mechanism_contexts": 4, "write_contexts": 4},
                "replication": {"contexts": 16, "context_length": 128, "per_context": 16,
                                "power_alphas": [0.1, 0.2, 0.5, 1.0], "power_draws": 3, "ablation_contexts": 8,
                                "mechanism_alphas": [0.25, 0.5], "mechanism_contexts": 8, "write_contexts": 8}},
               (Control("random directions", "null", {"control": "negative"}, False),
                Control("planted token directions", "planted", {"control": "positive"}, True)),
               {"lens": "tuned_lens"}),
    Experiment("probes", C.ProbeConfig, R.ProbesResult,
               "superpos.hypotheses.probes:run_probes", V.probes,
               "input (and previous) token by depth; geometry vs the embedding calibrated at layer 0; via the guess?",
               "Per layer, held-out accuracy of linear probes that recover the current and the previous input token, "
               "and a training-free read-out over the whole vocabulary; class means against the embedding (tail share "
               "vs layer 0 and a random basis, Procrustes vs shuffles, PCA / NMF / coordinate / frequency bases); and "
               "whether the input is held via the model's guess for it. See docs/probes.md.",
               {"quick": {"contexts": 12, "context_length": 64, "per_context": 32, "n_classes": 64, "n_shuffle": 20},
                "replication": {"contexts": 32, "context_length": 128, "per_context": 64, "n_classes": 256,
                                "n_shuffle": 100}}),
    Experiment("lookahead", C.LookaheadConfig, R.LookaheadResult,
               "superpos.hypotheses.lookahead:run_lookahead", V.lookahead,
               "probes at position i for the tokens at i+1, i+2, i+3, vs n-grams and the model's own guess",
               "Per layer, held-out accuracy of probes from position i for tokens i+k, against back-off n-grams (n = 2, "
               "3, 4) over the tokens up to i and a probe on the model's own next-token distribution; the layer and "
               "the baseline are chosen on validation contexts. See docs/probes.md.",
               {"quick": {"contexts": 12, "context_length": 64, "per_context": 32, "n_classes": 64},
                "replication": {"contexts": 32, "context_length": 128, "per_context": 64, "n_classes": 256}}),
    Experiment("donation", C.DonationConfig, R.DonationResult,
               "superpos.hypotheses.donation:run_donation", V.donation,
               "share of the gradient on keys/values donated by later positions' losses",
               "Per layer, the gradient on a position's keys and values from the losses of later positions vs its "
               "own loss, by context length, with the attention sink apart; how the ratio grows with the number of "
               "later losses and how one loss's push decays with distance. See docs/probes.md.",
               {"quick": {"contexts": 2, "context_length": 16},
                "replication": {"contexts": 16, "context_length": 64}}),
    Experiment("reinject", C.ReinjectConfig, R.ReinjectResult,
               "superpos.hypotheses.reinject:run_reinject", V.reinject,
               "do late layers lose surprising tokens? Interpolate late residuals toward the true token",
               "First the premise: is the input token still decodable late, by its surprisal? Then, teacher-forced on "
               "real text, move late residuals at p toward token p's own representation (its mean residual there, or "
               "its embedding) and measure the change in loss on token p+1 by surprisal fifths; the setting is chosen "
               "on half the contexts and judged on the other. The KV-cached sampler: "
               "superpos.hypotheses.reinject.generate. See docs/probes.md.",
               {"quick": {"contexts": 6, "reference_contexts": 6, "context_length": 64, "samples": 1},
                "replication": {"contexts": 12, "reference_contexts": 24, "context_length": 128, "samples": 1}}),
)}


def command_line(name: str, config: dict) -> str:
    """``python -m superpos run NAME`` with the flags that give ``config`` (settings at their default left out)."""
    parts = ["python -m superpos run", name]
    for s in settings(EXPERIMENTS[name].config):
        if s.name not in config:
            continue
        value = config[s.name]
        if value == s.default or (isinstance(value, (list, tuple)) and isinstance(s.default, (list, tuple))
                                  and list(value) == list(s.default)):
            continue
        parts += [s.flag] if isinstance(s.default, bool) else [s.flag, shlex.quote(format_value(value))]
    return " ".join(parts)


class Calibration(NamedTuple):
    """A real run and its controls: each result by run name, whether every control came out as it must, and (for
    an experiment that defines one) the verdict judged relative to the controls."""

    real: Result
    controls: dict[str, Result]
    calibrated: bool
    verdict: Verdict | None = None


def run_calibrated(name: str, cfg) -> Calibration:
    """``cfg`` and, through the identical analysis, each of the experiment's controls (same settings but the
    control's, into ``OUT/controls/<control>``; what the real run leaves for them — a tuned lens, a harvested
    store — is reused), then ``judge_calibration``."""
    from dataclasses import replace
    from pathlib import Path

    e = EXPERIMENTS[name]
    if not e.controls:
        raise ValueError(f"{name} declares no controls")
    out = Path(cfg.out)
    real = e.run(cfg)
    shared = {name: str(out / path) for name, path in e.reused.items()  # e.g. the real run's tuned lens or store
              if getattr(cfg, name) is None and (out / path).exists()}
    controls = {c.name: e.run(replace(cfg, **shared, **c.settings, out=str(control_folder(out, c))))
                for c in e.controls}
    return judge_calibration(name, real, controls, out)


def control_folder(out, control: Control):
    """Where a run with output folder ``out`` puts one of its controls."""
    from pathlib import Path

    return Path(out) / "controls" / control.name.replace(" ", "_")


def judge_calibration(name: str, real: Result, controls: dict[str, Result], out) -> Calibration:
    """Whether every control came out as it must and (where the experiment defines one) the verdict relative to the
    controls; writes ``OUT/calibration.md`` and ``calibration.json`` (real, nulls and planted side by side) and the
    experiment's calibrated report. Works as well on results read back from disk."""
    from pathlib import Path

    from superpos.files import write_json_atomic

    e = EXPERIMENTS[name]
    out = Path(out)
    rows = [("real", "—", real.verdict, None)]
    rows += [(c.name, c.kind, controls[c.name].verdict, c.expect_supported) for c in e.controls]
    ok = all(bool(v.supported) == want for _, _, v, want in rows if want is not None)

    def said(supported) -> str:
        return "SUPPORTED" if supported else "NOT SUPPORTED"

    md = [f"# {name}: real run and calibration controls", "",
          "The identical analysis on the real model, on a null (no effect) and on a planted effect of known size.",
          "", "| run | kind | verdict | expected | as expected |", "|---|---|---|---|---|"]
    for run_name, kind, v, want in rows:
        expected = "—" if want is None else said(want)
        as_expected = "—" if want is None else ("yes" if bool(v.supported) == want else "**no**")
        headline = v.headline if v.headline.startswith(said(v.supported)) else f"{said(v.supported)}: {v.headline}"
        md.append(f"| {run_name} | {kind} | {headline.replace('|', '/')} | {expected} | {as_expected} |")
    md += ["", "Calibrated: " + ("every control came out as it must." if ok else "**a control did not come out as it "
                                 "must; the real verdict cannot be trusted.**"), ""]
    verdict = e.calibrated_verdict(real, controls) if e.calibrated_verdict else None
    if verdict is not None:
        md += ["## The verdict relative to the controls", "", f"**{verdict.headline}**", "",
               *[f"- {line}" for line in verdict.criteria], ""]
    (out / "calibration.md").write_text("\n".join(md))
    write_json_atomic(out / "calibration.json", {
        "calibrated": ok, "runs": [{"run": r, "kind": k, "supported": bool(v.supported), "headline": v.headline,
                                    "expected": w} for r, k, v, w in rows],
        "verdict": None if verdict is None else to_jsonable(verdict)})
    if e.calibrated_report:
        module, func = e.calibrated_report.split(":")
        getattr(importlib.import_module(module), func)(real, out, controls=controls, calibrated=verdict)
    return Calibration(real, controls, ok, verdict)

"""Calibration: an experiment's real run beside its controls (a null with no effect, an effect planted at a known
size), each through the identical analysis, and the verdict judged relative to them."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

from superpos.experiment.result import Result, Verdict, to_jsonable
from superpos.experiment.spec import Control
from superpos.files import write_json_atomic
from superpos.protocol.registry import EXPERIMENTS


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
    return Path(out) / "controls" / control.name.replace(" ", "_")


def judge_calibration(name: str, real: Result, controls: dict[str, Result], out) -> Calibration:
    """Whether every control came out as it must and (where the experiment defines one) the verdict relative to the
    controls; writes ``OUT/calibration.md`` and ``calibration.json`` (real, nulls and planted side by side) and the
    experiment's calibrated report. Works as well on results read back from disk."""
    e = EXPERIMENTS[name]
    out = Path(out)
    rows = [("real", "—", real.verdict, None)]
    rows += [(c.name, c.kind, controls[c.name].verdict, c.expect_supported) for c in e.controls if c.name in controls]
    missing = [c for c in e.controls if c.name not in controls]  # e.g. results from before the control existed
    as_must = all(bool(v.supported) == want for _, _, v, want in rows if want is not None)
    ok = as_must and all(c.expect_supported is None for c in missing)

    def said(supported) -> str:
        return "SUPPORTED" if supported else "NOT SUPPORTED"

    def answer(v) -> str:  # a verdict's own words where it is neither yes nor no (NOT SHOWN AT THIS BUDGET …)
        return v.headline.split(":")[0] if v.supported is None and ":" in v.headline else said(v.supported)

    md = [f"# {name}: real run and calibration controls", "",
          "The identical analysis on the real model, on a null (no effect) and on a planted effect of known size.",
          "", "| run | kind | verdict | expected | as expected |", "|---|---|---|---|---|"]
    for run_name, kind, v, want in rows:
        expected = "—" if want is None else said(want)
        as_expected = "—" if want is None else ("yes" if bool(v.supported) == want else "**no**")
        headline = v.headline if v.headline.startswith(answer(v)) else f"{answer(v)}: {v.headline}"
        md.append(f"| {run_name} | {kind} | {headline.replace('|', '/')} | {expected} | {as_expected} |")
    md += [f"| {c.name} | {c.kind} | not run | — | — |" for c in missing]
    md += ["", "Calibrated: " + ("every control came out as it must." if ok else
                                 "**not fully: every control that ran came out as it must, but "
                                 + ", ".join(c.name for c in missing if c.expect_supported is not None)
                                 + " did not run.**" if as_must else
                                 "**a control did not come out as it must; the real verdict cannot be trusted.**"), ""]
    verdict = e.calibrated_verdict(real, controls) if e.calibrated_verdict else None
    if verdict is not None:
        md += ["## The verdict relative to the controls", "", f"**{verdict.headline}**", "",
               *[f"- {line}" for line in verdict.criteria], ""]
    (out / "calibration.md").write_text("\n".join(md))
    write_json_atomic(out / "calibration.json", {
        "calibrated": ok, "runs": [{"run": r, "kind": k, "supported": v.supported, "headline": v.headline,
                                    "expected": w} for r, k, v, w in rows],
        "verdict": None if verdict is None else to_jsonable(verdict)})
    if e.calibrated_verdict is not None:  # its report shows the controls beside the real run
        e.write_report(real, out, controls=controls, calibrated=verdict)
    return Calibration(real, controls, ok, verdict)

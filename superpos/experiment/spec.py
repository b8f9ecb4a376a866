"""What an experiment is: the one record each experiment folder declares (``EXPERIMENT`` in
``superpos/hypotheses/<name>/__init__.py``), and the one path every run takes — compute, judge, save, report.

A folder holds ``config.py`` (a documented dataclass: the flags), ``result.py`` (the typed result),
``verdict.py`` (``verdict(result)`` and ``numbers(result)``: pure, no torch), ``run.py`` (the computation only) and
``report.py`` (``write_report(result, folder)``). ``superpos.protocol.registry`` lists the folders' records; the
CLI, ``run all``, the replication grid and each report's reproduce line are generated from them.
"""
from __future__ import annotations

import importlib
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from superpos.experiment.result import Result, Verdict
from superpos.settings import format_value, settings


@dataclass(frozen=True, kw_only=True)
class Control:
    """A calibration run: the identical analysis with settings that remove the effect (a null) or plant one of
    known size; the verdict on it must come out as ``expect_supported`` (None: a power control, whose answer the
    experiment's calibrated verdict reads rather than requires)."""

    name: str
    kind: str  # "null", "planted" or "power"
    settings: dict
    expect_supported: bool | None


def _load(path: str) -> Callable:
    module, func = path.split(":")
    return getattr(importlib.import_module(module), func)


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """One experiment: what it is, its config and result classes, where its computation and report writer live
    (imported on use, so the registry stays light), its verdict and headline numbers, its docs page, presets and
    calibration controls."""

    name: str
    help: str  # one line, for ``superpos run --help``
    description: str  # a paragraph, for ``superpos run NAME --help``
    docs: str  # the docs page that states its method and verdict rule, e.g. "docs/probes.md"
    config: type
    result: type
    compute: str  # "module:function", config -> result (no verdict, no results.json, no report)
    verdict: Callable[[Result], Verdict]  # pure: a stored result can be judged again
    numbers: Callable[[Result], dict[str, str]]  # the few numbers the verdict rests on (the replication table)
    report: str  # "module:function"(result, folder, **kw) writing report.md/.html and figures
    # preset name -> field values: "quick" a smoke run, "replication" the size of docs/results/replication.md
    presets: dict = field(default_factory=dict)
    controls: tuple[Control, ...] = ()  # its null and planted calibration runs (superpos.protocol.calibration)
    reused: dict = field(default_factory=dict)  # field -> what the real run leaves in OUT that controls reuse
    # the verdict relative to the controls, (real, {control name: result}) -> Verdict; None: each judged alone
    calibrated_verdict: Callable[[Result, dict], Verdict] | None = None

    def run(self, cfg) -> Result:
        """Compute, judge, save ``cfg.out/results.json`` and write the report; returns the typed result."""
        t0 = time.perf_counter()
        res = _load(self.compute)(cfg)  # checks its settings before it writes anything
        res.verdict = self.verdict(res)
        res.timings["total_s"] = time.perf_counter() - t0
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        res.save(out)
        self.write_report(res, out)
        return res

    def write_report(self, res: Result, out, **kw) -> None:
        """report.md, report.html and the figures for ``res`` in ``out`` (``kw``: the calibrated report's controls)."""
        _load(self.report)(res, out, **kw)

    def read(self, folder) -> Result:
        """The typed result a run of this experiment stored in ``folder`` (or a results.json path)."""
        return self.result.read(folder)


def command_line(name: str, config) -> str:
    """``python -m superpos run NAME`` with the flags that give the config dataclass ``config`` (settings at their
    default left out)."""
    parts = ["python -m superpos run", name]
    for s in settings(type(config)):
        value = getattr(config, s.name)
        if value == s.default or (isinstance(value, (list, tuple)) and isinstance(s.default, (list, tuple))
                                  and list(value) == list(s.default)):
            continue
        parts += [s.flag] if isinstance(s.default, bool) else [s.flag, shlex.quote(format_value(value))]
    return " ".join(parts)

"""docs/architecture.md's recipe for a new experiment, followed literally with a toy experiment, and the check that
every registered experiment is a complete folder with its docs page."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

from superpos.experiment.result import Result
from superpos.protocol.registry import EXPERIMENTS

ROOT = Path(__file__).resolve().parents[1]

TOY = {
    "config.py": '''
        from dataclasses import dataclass

        from superpos.hypotheses.common import n_boot_setting, out_setting, seed_setting
        from superpos.settings import setting


        @dataclass
        class ToyConfig:
            """Is the mean of some draws above zero?"""

            draws: int = setting(200, "how many draws", parse="positive_int")
            shift: float = setting(0.5, "the true mean of the draws", parse="float")
            n_boot: int = n_boot_setting()
            seed: int = seed_setting()
            out: str = out_setting("runs/toy")
        ''',
    "result.py": '''
        from dataclasses import dataclass

        from superpos.experiment.result import Result
        from superpos.stats import Interval
        from toyexp.config import ToyConfig


        @dataclass(kw_only=True)
        class ToyResult(Result):
            """The mean of the draws with its interval."""

            config: ToyConfig
            mean: Interval
        ''',
    "verdict.py": '''
        from superpos.experiment.result import Verdict
        from superpos.hypotheses.common import fmt_ci


        def verdict(res):
            ok = res.mean.lo > 0
            return Verdict(headline=("SUPPORTED" if ok else "NOT SUPPORTED") + f": mean {fmt_ci(res.mean)}",
                           criteria=["the interval's lower end is above zero"], supported=ok)


        def numbers(res):
            return {"mean [95% CI]": fmt_ci(res.mean)}
        ''',
    "run.py": '''
        import numpy as np

        from superpos.errors import ConfigError
        from superpos.stats import Interval, bootstrap_ci
        from toyexp.result import ToyResult


        def run(cfg):
            if cfg.draws < 10:
                raise ConfigError("draws", "{field} must be at least 10")
            x = np.random.default_rng(cfg.seed).normal(cfg.shift, 1.0, cfg.draws)
            return ToyResult(config=cfg, model="none",
                             mean=Interval(*bootstrap_ci(np.mean, x, n_boot=cfg.n_boot, seed=cfg.seed)))
        ''',
    "report.py": '''
        from superpos.experiment.report import Report


        def write_report(res, out):
            rep = Report("Toy")
            rep.verdict(res.verdict)
            rep.reproduce("toy", res.config)
            return rep.save(out)
        ''',
    "__init__.py": '''
        from superpos.experiment.spec import Experiment
        from toyexp.config import ToyConfig
        from toyexp.result import ToyResult
        from toyexp.verdict import numbers, verdict

        EXPERIMENT = Experiment(
            name="toy", config=ToyConfig, result=ToyResult, verdict=verdict, numbers=numbers,
            compute="toyexp.run:run", report="toyexp.report:write_report", docs="docs/architecture.md",
            help="a toy", description="The recipe's toy experiment.", presets={"quick": {"draws": 50}})
        ''',
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "toyexp"
    pkg.mkdir(parents=True)
    for name, text in TOY.items():
        (pkg / name).write_text(textwrap.dedent(text).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    exp = importlib.import_module("toyexp").EXPERIMENT
    monkeypatch.setitem(EXPERIMENTS, "toy", exp)  # the recipe's one registry line
    yield exp
    for m in [m for m in list(importlib.sys.modules) if m.startswith("toyexp")]:
        del importlib.sys.modules[m]


def test_the_recipe_gives_a_command_a_verdict_a_report_and_a_reproduce_line(toy, tmp_path, capsys):
    from superpos.cli.main import main

    out = tmp_path / "run"
    assert main(["run", "toy", "--draws", "400", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("SUPPORTED: mean +0.")  # the draws' true mean is 0.5
    data = json.loads((out / "results.json").read_text())
    res = toy.read(out)
    assert 0.35 < res.mean.mean < 0.65 and res.mean.lo < res.mean.mean < res.mean.hi
    assert data["verdict"]["supported"] is True and res.timings["total_s"] >= 0
    assert toy.verdict(res) == res.verdict  # judged again from the stored numbers
    report = (out / "report.md").read_text()
    assert "python -m superpos run toy --draws 400 --out " in report and "Verdict" in report
    assert main(["run", "toy", "--shift", "0", "--draws", "400", "--out", str(tmp_path / "null")]) == 0
    assert "NOT SUPPORTED" in capsys.readouterr().out


def test_the_recipe_checks_settings_before_writing_anything(toy, tmp_path, capsys):
    from superpos.cli.main import main

    out = tmp_path / "bad"
    assert main(["run", "toy", "--draws", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--draws must be at least 10" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_registered_experiment_is_a_complete_folder(name):
    e = EXPERIMENTS[name]
    folder = ROOT / "superpos" / "hypotheses" / name
    assert {"__init__.py", "config.py", "result.py", "verdict.py", "run.py", "report.py"} <= {
        p.name for p in folder.iterdir()}
    assert is_dataclass(e.config) and e.config.__module__ == f"superpos.hypotheses.{name}.config"
    assert issubclass(e.result, Result) and e.result.__module__ == f"superpos.hypotheses.{name}.result"
    assert e.verdict.__module__ == e.numbers.__module__ == f"superpos.hypotheses.{name}.verdict"
    assert e.compute == f"superpos.hypotheses.{name}.run:run"
    assert e.report == f"superpos.hypotheses.{name}.report:write_report"
    run_mod, report_mod = (importlib.import_module(p.split(":")[0]) for p in (e.compute, e.report))
    assert callable(run_mod.run) and callable(report_mod.write_report)
    assert e.help and e.description and set(e.presets) == {"quick", "replication"}
    assert set(e.presets["quick"]) <= {f.name for f in fields(e.config)}
    docs = ROOT / e.docs
    assert docs.is_file() and f"run {name}" in docs.read_text(), f"{e.docs} does not describe `run {name}`"


def test_the_registry_and_every_verdict_load_without_torch():
    """Configs, results and verdicts are pure: a stored result is judged again without the model stack."""
    code = ("import sys; from superpos.protocol.registry import EXPERIMENTS; "
            "print(sorted(EXPERIMENTS), sorted(m for m in ('torch', 'transformers', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]"), out

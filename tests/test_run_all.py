"""`superpos run all`: experiments in sequence, the lens handed on, an index page linking every report."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _run_all(*args):
    return subprocess.run([sys.executable, "-m", "superpos", "run", "all", "--quick", "--device", "cpu", *map(str, args)],
                          capture_output=True, text=True)


def test_run_all_writes_an_index_linking_each_report(tiny_models, tiny_corpus, tmp_path):
    out = tmp_path / "all"
    r = _run_all("--model", tiny_models["llama"], "--corpus", tiny_corpus, "--only", "donation,lenses,repurposing",
                 "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    index = json.loads((out / "index.json").read_text())
    names = [e["name"] for e in index["experiments"]]
    assert names == ["lenses", "repurposing", "donation"] and not index["pending"]  # the package's order
    for e in index["experiments"]:
        res = json.loads((out / e["name"] / "results.json").read_text())
        assert e["status"] == "ok" and e["headline"] == res["verdict"]["headline"]
        assert (out / e["name"] / "report.html").exists() and (out / e["name"] / "report.md").exists()
    rep = next(e for e in index["experiments"] if e["name"] == "repurposing")
    assert f"--lens {out / 'lenses' / 'tuned_lens'}" in rep["command"]  # the tuned lens is trained once
    page = (out / "index.html").read_text()
    assert sorted(re.findall(r"href='([^']+)'", page)) == sorted(f"{n}/report.html" for n in names)
    assert all((out / link).exists() for link in re.findall(r"\]\(([^)]+)\)", (out / "index.md").read_text()))


def test_a_finished_repurposing_run_is_kept_without_the_lens_weights_and_a_new_one_gets_them(tiny_models, tiny_corpus,
                                                                                               tmp_path):
    """Committed results leave the tuned lens's weights out: resuming keeps lenses and repurposing as finished;
    once repurposing must run again, lenses runs first so that its --lens exists."""
    import shutil

    out = tmp_path / "all"
    args = ("--model", tiny_models["llama"], "--corpus", tiny_corpus, "--only", "lenses,repurposing", "--out", out,
            "--resume")
    assert _run_all(*args).returncode == 0
    first = json.loads((out / "index.json").read_text())["experiments"]
    shutil.rmtree(out / "lenses" / "tuned_lens")
    r = _run_all(*args)
    assert r.returncode == 0 and r.stdout.count("finished earlier with the same command; kept") == 2, r.stdout[-2000:]
    assert json.loads((out / "index.json").read_text())["experiments"] == first
    (out / "repurposing" / "results.json").unlink()
    r = _run_all(*args)
    assert r.returncode == 0 and "kept" not in r.stdout, r.stdout[-2000:]
    assert (out / "lenses" / "tuned_lens").is_dir()
    rep = next(e for e in json.loads((out / "index.json").read_text())["experiments"] if e["name"] == "repurposing")
    assert rep["status"] == "ok" and f"--lens {out / 'lenses' / 'tuned_lens'}" in rep["command"]


def test_run_all_records_a_failure_and_goes_on(tiny_models, tmp_path):
    out = tmp_path / "all"
    r = _run_all("--model", tiny_models["gpt2"], "--corpus", tmp_path / "missing.txt", "--only", "donation,reinject",
                 "--out", out)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    index = json.loads((out / "index.json").read_text())
    assert [e["status"] for e in index["experiments"]] == ["failed", "failed"]
    assert all("missing.txt" in e["headline"] for e in index["experiments"])
    assert "failed" in (out / "index.html").read_text()


def test_report_command_reproduces_the_settings():
    """The command in each report parses back (with the CLI itself) to exactly the config it was made from, for
    every registered experiment, with every field moved off its default."""
    import shlex
    from dataclasses import asdict, fields

    from superpos.cli.main import build_parser
    from superpos.experiment.spec import command_line
    from superpos.protocol.registry import EXPERIMENTS
    from superpos.settings import settings

    changed = {int: 7, float: 0.25, str: "x y"}
    for name, e in EXPERIMENTS.items():
        cfg = e.config()
        parse = {s.name: s.parse for s in settings(e.config)}
        values = {}
        for f in fields(cfg):
            default = getattr(cfg, f.name)
            if f.name == "offsets":
                values[f.name] = [0, -2] if name == "probes" else [2, 5]
            elif f.name == "control":
                values[f.name] = "planted" if name == "orthogonality" else "positive"
            elif f.name == "targets":
                values[f.name] = ["embedding"]
            elif f.name in ("unlikely", "likely"):
                values[f.name] = 1e-7 if f.name == "unlikely" else 0.05
            elif f.name == "external":
                values[f.name] = ["a/seed0", "b/seed1"]
            elif isinstance(default, list) or f.name in ("layers", "budget_layers"):
                values[f.name] = [3, 1] if f.name in ("expansions", "layers", "capacity_dims", "budgets",
                                                      "budget_layers") else [0.25, 0.5]
            elif isinstance(default, bool):
                values[f.name] = not default
            elif f.name in ("layer", "seed"):
                values[f.name] = 3
            elif getattr(parse[f.name], "options", None):  # one of a few words: another one of them
                values[f.name] = next(o for o in parse[f.name].options if o != default)
            else:
                values[f.name] = changed[type(default)] if default is not None else "some/path"
        want = asdict(e.config(**values))
        argv = shlex.split(command_line(name, e.config(**values)))
        assert argv[:5] == ["python", "-m", "superpos", "run", name]
        args = build_parser().parse_args(argv[3:])
        got = asdict(e.config(**{f.name: getattr(args, f.name) for f in fields(e.config)}))
        assert got == want, name
        assert command_line(name, e.config()) == f"python -m superpos run {name}"  # defaults: no flags


def test_every_setting_has_one_default_shown_everywhere(capsys):
    """--help of every `run` subcommand and of `harvest`, and the CLI reference, list every config field with its
    dataclass default."""
    from pathlib import Path

    from superpos.cli.main import main
    from superpos.model.harvest import HarvestConfig
    from superpos.protocol.registry import EXPERIMENTS
    from superpos.settings import format_value, settings

    reference = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    commands = [(["run", name], f"run {name}", e.config) for name, e in EXPERIMENTS.items()]
    for argv, title, config in [*commands, (["harvest"], "harvest", HarvestConfig)]:
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens
        section = reference.split(f"## {title}\n")[1].split("\n## ")[0]
        for s in settings(config):
            if isinstance(s.default, bool):  # a switch: its flag turns the default around
                assert f"{s.flag} {' '.join(s.help.split())}" in text and s.flag in section, (title, s)
                continue
            default = "not set" if s.default is None else format_value(s.default)
            metavar = s.flag.removeprefix("--").upper().replace("-", "_")
            assert f"{s.flag} {metavar} {' '.join(s.help.split())} (default {default})" in text, (title, s)
            assert s.flag in section and f"(default {default})" in section, (title, s.flag)


def test_the_default_model_and_corpus_give_one_command_however_named():
    """`run all --corpus pydoc_data.topics` and `replicate` (no --corpus) must resume each other's runs."""
    from superpos.experiment.spec import command_line
    from superpos.protocol.run_all import default_as_none, experiment_config

    assert default_as_none("smollm2-135m", "pydoc_data.topics") == (None, None)
    assert default_as_none("gemma3-270m", "default") == ("gemma3-270m", None)
    assert default_as_none("gemma3-270m", "shakespeare") == ("gemma3-270m", "shakespeare")
    named = command_line("probes", experiment_config("probes", Path("o"), *default_as_none("smollm2-135m", "pydoc"),
                                                     "auto", 0, "replication"))
    plain = command_line("probes", experiment_config("probes", Path("o"), None, None, "auto", 0, "replication"))
    assert named == plain and "--corpus" not in plain and "--model" not in plain

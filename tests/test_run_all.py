"""`superpos run all`: experiments in sequence, the lens handed on, an index page linking every report."""
from __future__ import annotations

import json
import re
import subprocess
import sys


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
    """The command in each report parses back (with the CLI itself) to the settings it was made from."""
    import shlex
    from dataclasses import asdict

    from superpos.cli import build_parser
    from superpos.hypotheses.orthogonality import OrthogonalityConfig
    from superpos.hypotheses.probes import ProbeConfig
    from superpos.hypotheses.repurposing import RepurposingConfig
    from superpos.report import command_line

    cases = {
        "probes": asdict(ProbeConfig(model="my model", contexts=5, offsets=[0, -2], n_classes=32, ridge=0.5, out="o")),
        "orthogonality": asdict(OrthogonalityConfig(expansions=[1, 4], eps_grid=[0.25], layer=3, out="o")),
        "repurposing": asdict(RepurposingConfig(control="positive", unlikely=1e-7, exclude_recent=0, out="o")),
    }
    for name, cfg in cases.items():
        argv = shlex.split(command_line(name, cfg))
        assert argv[:4] == ["python", "-m", "superpos", "run"]
        args = build_parser().parse_args(argv[3:])
        for dest, value in vars(args).items():
            key = {"classes": "n_classes", "eps": "eps_grid"}.get(dest, dest)
            if key in cfg and cfg[key] is not None:
                assert value == cfg[key], (name, dest, value, cfg[key])

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

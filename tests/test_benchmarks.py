"""Smoke run of the benchmark suite (tiny sizes, no timing assertions): it runs and writes every section."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_suite_quick(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only",
                        "sae,stream,geometry,scaling,ddp", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"machine", "sae", "stream", "geometry", "scaling"}
    assert res["sae"]["16x"]["fraction_of_roofline"] > 0 and res["geometry"]["atoms_1M"]["methods"]["pq"]["recall_at_1"] > 0.5
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ("TopK SAE training", "Store streaming", "Geometry", "Scaling"):
        assert heading in text

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


def test_frontier_quick_and_merge(tmp_path):
    """The frontier section at smoke sizes: every kind at each L0, the kinds that take an L0 exactly land on it, the
    figure is written; a later --merge run of another section keeps it."""
    run = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)]
    r = subprocess.run(run + ["--only", "frontier"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())["frontier"]
    kinds = {"topk", "batchtopk", "jumprelu", "relu", "nmf", "seminmf", "pca"}
    assert {(p["kind"], p["target_l0"]) for p in res["planted"]} == {(k, t) for k in kinds for t in res["planted_l0s"]}
    for p in res["planted"]:
        if p["kind"] in ("topk", "pca"):
            assert p["l0"] == p["target_l0"], p
        elif p["kind"] in ("batchtopk", "nmf", "seminmf"):
            assert 0.8 * p["target_l0"] <= p["l0"] <= p["target_l0"] * (1.2 if p["kind"] == "batchtopk" else 1), p
        assert 0 <= p["mmcs"] <= 1
    assert (tmp_path / "frontier.png").stat().st_size > 10_000
    r = subprocess.run(run + ["--only", "scaling", "--merge"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    merged = json.loads((tmp_path / "results.json").read_text())
    assert merged["frontier"] == res and "scaling" in merged
    assert [run["sections"] for run in merged["runs"]] == [["frontier"], ["scaling"]]
    assert "quality frontier" in (tmp_path / "RESULTS.md").read_text()


def test_keep_other_peers_marks_rows_from_the_earlier_run():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peers import PEERS, keep_other_peers

    sparsify, saelens, dl = PEERS
    new = {"planted": {"superpos": {"status": "ok"}, sparsify: {"status": "ok", "note": "new"}}}
    old = {"planted": {"superpos": {"status": "ok", "note": "old"}, sparsify: {"note": "old"}, dl: {"note": "dl"},
                       saelens: {"status": "failed", "note": "broke"}}}
    keep_other_peers(new, old, "2026-01-01")
    assert list(new["planted"]) == ["superpos", sparsify, saelens, dl]
    assert new["planted"][sparsify]["note"] == "new" and new["planted"]["superpos"] == {"status": "ok"}
    assert new["planted"][dl]["note"] == "dl; from the run of 2026-01-01"
    assert new["planted"][saelens]["status"] == "failed"
    again = {"planted": {"superpos": {"status": "ok"}}}
    keep_other_peers(again, new, "2026-02-01")  # kept twice: still the date of the run that measured it
    assert again["planted"][dl]["note"] == "dl; from the run of 2026-01-01"


def test_frontier_rows_survive_an_interrupted_run(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from frontier import RowCache

    calls = []

    def compute(v):
        calls.append(v)
        return {"fvu": v}
    path = tmp_path / "rows.jsonl"
    first = RowCache(path, version="t1")
    assert first.get("a", lambda: compute(0.5)) == {"fvu": 0.5} and first.get("a", lambda: compute(9)) == {"fvu": 0.5}
    with open(path, "a") as f:
        f.write('{"key": "t1/b", "val')  # a line cut short by a kill
    again = RowCache(path, version="t1")
    assert again.get("a", lambda: compute(9)) == {"fvu": 0.5} and calls == [0.5]  # read back, not measured again
    assert again.get("b", lambda: compute(0.7)) == {"fvu": 0.7}  # the cut line is measured again
    assert RowCache(path, version="t2").get("a", lambda: compute(0.1)) == {"fvu": 0.1}  # other code: measured again
    assert calls == [0.5, 0.7, 0.1]
    assert RowCache(path, version="t1").get("b", lambda: compute(5)) == {"fvu": 0.7} and calls == [0.5, 0.7, 0.1]


def test_typical_rows_leave_out_the_outliers_and_say_their_share():
    """The real stream's "typical rows": norm ≤ 5× the median; the share of variance the others carry, by hand."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import numpy as np
    from peers import time_to_reach, typical_rows

    ev = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [20.0, 0.0]])
    kept, share = typical_rows(ev)
    assert kept.tolist() == ev[:4].tolist()
    dev = ((ev - [4.0, 0.0]) ** 2).sum(1)  # the mean of all five rows is (4, 0)
    assert abs(share - dev[4] / dev.sum()) < 1e-12 and abs(share - 256 / 324) < 1e-12
    budgets = [{"train_s": 10, "fvu": 0.3, "fvu_typical": 0.2}, {"train_s": 20, "fvu": 0.1, "fvu_typical": 0.15}]
    assert time_to_reach(budgets, 0.2) == 20 and time_to_reach(budgets, 0.2, "fvu_typical") == 10
    assert time_to_reach(budgets, 0.05) is None

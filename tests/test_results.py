"""Typed results: every committed results.json reads back as its experiment's Result, judges again to the verdict
it stores word for word, and round-trips; bad files are refused in one line naming the field."""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from superpos.errors import SuperposError
from superpos.experiment.result import Result, to_jsonable
from superpos.hypotheses.donation.result import DonationResult
from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.protocol.registry import EXPERIMENTS
from superpos.stats import Band, Interval

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
COMMITTED = {folder.name: folder.name.split("_positive_control")[0]
             for folder in sorted(RESULTS.iterdir()) if (folder / "results.json").exists()}


def test_every_committed_result_is_covered():
    assert set(COMMITTED.values()) == set(EXPERIMENTS) - {"lenses"}  # lenses has no committed report


# the replication grid's cells too (RUN_ALL_FOLDER/EXPERIMENT), each named by its path under docs/results
CELLS = {str(f.parent.relative_to(RESULTS)): f.parent.name for f in sorted(RESULTS.glob("replication/*/*/results.json"))}


@pytest.mark.parametrize("folder", sorted(COMMITTED) + sorted(CELLS))
def test_committed_result_reads_back_and_judges_to_its_stored_verdict(folder):
    e = EXPERIMENTS[COMMITTED.get(folder) or CELLS[folder]]
    res = e.read(RESULTS / folder)
    assert isinstance(res, e.result) and isinstance(res.config, e.config)
    assert to_jsonable(e.verdict(res)) == to_jsonable(res.verdict)  # the verdict is a function of the numbers
    assert e.result.from_dict(json.loads(json.dumps(res.to_dict()))) == res


def _donation_dict():
    band = Band([0.5, 0.6], [0.4, 0.5], [0.6, 0.7])
    iv = Interval(1.0, 0.5, 1.5)
    law = {"exponent": {"mean": 1.0, "lo": 0.9, "hi": 1.1}, "prefactor": 1.0}
    res = DonationResult(config=EXPERIMENTS["donation"].config(), model="m", layers=[0, 1], lengths=[4],
                         share={4: band}, share_median={4: iv}, later_count=[2.0, 1.0], ratio_by_later=band,
                         ratio_fit=law, mean_ratio=iv, distance=[1, 2], decay=band, decay_fit=law,
                         sink={"share": iv, "ratio": iv})
    return json.loads(json.dumps(to_jsonable(res)))


def test_round_trip_restores_types_of_nested_fields_and_keys(tmp_path):
    data = _donation_dict()
    res = DonationResult.from_dict(data)
    assert list(res.share) == [4] and isinstance(res.share[4], Band)  # the JSON key "4" back to int
    assert res.ratio_fit.exponent == Interval(1.0, 0.9, 1.1) and res.sink.ratio.lo == 0.5
    res.save(tmp_path)
    assert DonationResult.read(tmp_path) == res
    scan = _Scan.from_dict({"config": {}, "model": "m", "by_alpha": {"0.5": {"mean": 0, "lo": -1, "hi": 1}}})
    assert list(scan.by_alpha) == [0.5] and isinstance(scan.by_alpha[0.5], Interval)  # "0.5" back to a float
    assert scan.config == EXPERIMENTS["reinject"].config()  # missing config fields take their defaults


@dataclass(kw_only=True)
class _Scan(Result):
    config: ReinjectConfig
    by_alpha: dict[float, Interval]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(extra=1), "unknown field 'extra' for DonationResult"),
    (lambda d: d.pop("layers"), "missing field 'layers'"),
    (lambda d: d["share"]["4"].update(mean="high"), "share['4'].mean: expected a list"),
    (lambda d: d["share"].update(four=d["share"]["4"]), "key 'four' is not a int"),
    (lambda d: d["ratio_fit"].update(prefactor=True), "ratio_fit.prefactor: expected a number"),
])
def test_a_damaged_results_file_is_refused_naming_the_field(tmp_path, edit, message):
    data = _donation_dict()
    edit(data)
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(SuperposError, match="does not hold a DonationResult") as err:
        DonationResult.read(tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_or_unparsable_results_are_one_line_errors(tmp_path):
    with pytest.raises(SuperposError, match="no results at"):
        DonationResult.read(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(SuperposError, match="not valid JSON"):
        DonationResult.read(tmp_path)


def test_replication_tables_put_runs_side_by_side(tmp_path):
    """Two `run all` folders (built from the committed results; the second lacks two experiments)."""
    import shutil

    from superpos.cli.main import main

    for label, skip in (("smollm2-pydoc", ()), ("other-run", ("donation", "probes"))):
        for folder, name in COMMITTED.items():
            if folder == name and name not in skip:
                (tmp_path / label / name).mkdir(parents=True)
                shutil.copy(RESULTS / folder / "results.json", tmp_path / label / name / "results.json")
        (tmp_path / label / "index.json").write_text("{}")
    out = tmp_path / "replication.md"
    assert main(["replicate", str(tmp_path / "smollm2-pydoc"), str(tmp_path / "other-run"), "--out", str(out)]) == 0
    text = out.read_text()
    rep = EXPERIMENTS["repurposing"].read(RESULTS / "repurposing")
    section = text.split("## repurposing\n")[1].split("\n## ")[0]
    assert "| | smollm2-pydoc | other-run |" in section and "| verdict | NOT SUPPORTED | NOT SUPPORTED |" in section
    assert f"| peak layer | {rep.verdict.peak_layer} | {rep.verdict.peak_layer} |" in section
    assert "FVU gain" in text.split("## orthogonality\n")[1] and "## lenses" not in text  # lenses: nothing committed
    assert "| not run |" in text.split("## donation\n")[1].split("\n## ")[0]
    with pytest.raises(SuperposError, match="not a `run all` output folder"):
        from superpos.protocol.replication import replication_markdown

        replication_markdown([RESULTS])


def test_replicate_runs_each_pair_and_tabulates_them(tmp_path, monkeypatch):
    """`replicate --models`: one resuming `run all` per model × corpus into MODEL+CORPUS, and a runs table that
    says who each column is."""
    import superpos.protocol.run_all as ra
    from superpos.cli.main import main

    calls = []

    def fake_run_all(names, out, model, corpus, device, seed, preset, resume=False):
        calls.append((model, corpus, preset, resume))
        rows = [{"name": n, "status": "ok", "seconds": 60.0, "headline": "h", "command": "c", "folder": n}
                for n in names]
        out.mkdir(parents=True, exist_ok=True)
        (out / "index.json").write_text(json.dumps({"experiments": rows, "pending": [], "model": model,
                                                    "corpus": corpus, "preset": preset}))
        return rows

    monkeypatch.setattr(ra, "run_all", fake_run_all)
    assert main(["replicate", "--models", "smollm2-135m,m2", "--corpora", "pydoc_data.topics,dir/c2.txt", "--runs-dir",
                 str(tmp_path / "r"), "--out", str(tmp_path / "rep.md")]) == 0
    # each pair goes as named; run_all itself takes the defaults as none (tests/test_run_all.py)
    assert calls == [(m, c, "replication", True) for m in ("smollm2-135m", "m2")
                     for c in ("pydoc_data.topics", "dir/c2.txt")]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["m2+c2.txt", "m2+pydoc_data.topics",
                                                                  "smollm2-135m+c2.txt",
                                                                  "smollm2-135m+pydoc_data.topics"]
    text = (tmp_path / "rep.md").read_text()
    assert "| m2+c2.txt | m2 | dir/c2.txt | replication | 7 min | 7 of 7 |" in text
    assert "python -m superpos replicate --models smollm2-135m,m2 --corpora pydoc_data.topics,dir/c2.txt --preset replication" in text


def test_run_all_resume_keeps_what_finished_with_the_same_command(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from superpos.experiment.spec import Experiment
    from superpos.protocol.run_all import run_all

    ran = []

    def fake_run(self, cfg):
        ran.append(self.name)
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "results.json").write_text("{}")
        return SimpleNamespace(verdict=SimpleNamespace(headline=f"{self.name} done"))

    monkeypatch.setattr(Experiment, "run", fake_run)
    names, out = ["donation", "reinject"], tmp_path / "all"
    run_all(names, out, "m", "c", "cpu", 0, "quick", resume=True)
    assert ran == names
    ran.clear()
    rows = run_all(names, out, "m", "c", "cpu", 0, "quick", resume=True)  # all finished: nothing runs again
    assert ran == [] and [r["headline"] for r in rows] == ["donation done", "reinject done"]
    assert json.loads((out / "index.json").read_text())["preset"] == "quick"
    (out / "reinject" / "results.json").unlink()  # its results lost: it runs again
    run_all(names, out, "m", "c", "cpu", 0, "quick", resume=True)
    assert ran == ["reinject"]
    ran.clear()
    run_all(["probes"], out, "m", "c", "cpu", 0, "quick", resume=True)  # an --only run into the same folder adds up
    index = json.loads((out / "index.json").read_text())
    assert ran == ["probes"] and [r["name"] for r in index["experiments"]] == ["probes", "donation", "reinject"]
    ran.clear()
    (out / "lookahead").mkdir()  # finished by another run with other settings; this one has not reached it yet
    (out / "lookahead" / "results.json").write_text("{}")
    index["experiments"].append({"name": "lookahead", "status": "ok", "command": "other", "folder": "lookahead",
                                 "headline": "h", "seconds": 1.0})
    (out / "index.json").write_text(json.dumps(index))
    seen = []
    monkeypatch.setattr(Experiment, "run", lambda self, cfg: (
        seen.append([r["name"] for r in json.loads((out / "index.json").read_text())["experiments"]]),
        fake_run(self, cfg))[1])
    run_all(["donation", "lookahead"], out, "m", "c", "cpu", 0, "quick", resume=True)
    assert ran == ["lookahead"] and seen == [["probes", "lookahead", "donation", "reinject"]]
    ran.clear()
    run_all(names, out, "m", "c", "cpu", 0, "replication", resume=True)  # other settings: every command differs
    assert ran == names
    ran.clear()
    run_all(names, out, "m", "c", "cpu", 0, "replication")  # without resume everything runs
    assert ran == names


def test_a_calibration_with_a_control_not_run_says_so(tmp_path):
    """The committed orthogonality run judged with its planted control left out: the calibration is 'not fully',
    naming the control that did not run, and the verdict is 'partly calibrated' — never a control that failed."""
    from superpos.protocol.calibration import judge_calibration

    e = EXPERIMENTS["orthogonality"]
    real = e.read(RESULTS / "orthogonality")
    gaussian = e.read(RESULTS / "orthogonality" / "controls" / "gaussian")
    cal = judge_calibration("orthogonality", real, {"gaussian": gaussian}, tmp_path)
    text = (tmp_path / "calibration.md").read_text()
    assert "not fully" in text and "planted superposition did not run" in text and "cannot be trusted" not in text
    assert not cal.calibrated and cal.verdict.supported is None and cal.verdict.headline.startswith("NOT CALIBRATED")


def test_a_cell_says_the_answer_of_a_question_headline_and_the_first_clause_otherwise():
    from superpos.experiment.result import Verdict
    from superpos.protocol.replication import _said

    def said(headline: str) -> str:
        return _said(Verdict(headline=headline, criteria=[]))

    assert said("Lookahead beyond n-grams and the input token: YES — adding it raises …") == "YES"
    assert said("Lookahead: NOT TESTED — this result predates it") == "NOT TESTED"
    assert said("The input token stays decodable (layer 15: 0.902). More.") == "The input token stays decodable"

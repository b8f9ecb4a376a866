"""The user guide: it builds with no broken links, its CLI reference matches the parser, its examples run."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from superpos.model.harvest import HarvestConfig, harvest

ROOT = Path(__file__).resolve().parent.parent


def test_docs_build_strictly(tmp_path):
    """mkdocs in strict mode: a missing page, a broken link or anchor, or a page left out of the nav fails."""
    pytest.importorskip("mkdocs", reason="mkdocs not installed (pip install -e '.[dev]')")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").exists()


def test_readme_links_resolve():
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", (ROOT / "README.md").read_text())
    local = [x for x in links if not re.match(r"[a-z]+://", x)]
    assert local and all((ROOT / x).exists() for x in local), [x for x in local if not (ROOT / x).exists()]


def test_cli_reference_matches_the_parser():
    from superpos.cli.reference import reference

    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == reference(), "docs/cli.md is stale: python -m superpos.cli.reference > docs/cli.md"
    assert "## browse" in page and "## run all" in page and "`--store STORE`" in page


def test_api_examples_run(tiny_models, tiny_corpus, tmp_path, monkeypatch, capsys):
    """docs/api.md's code blocks, in order, on a tiny model's store and SAE laid out as the demo leaves them."""
    demo = tmp_path / "runs" / "demo"
    demo.mkdir(parents=True)
    harvest(HarvestConfig(model=str(tiny_models["llama"]), corpus=str(tiny_corpus), layers="0,2", tokens=3072,
                          context_length=64, device="cpu"), demo / "acts.h5", progress=False)
    r = subprocess.run([sys.executable, "-m", "superpos", "fit", "--store", demo / "acts.h5", "--layer", "2",
                        "--expansion", "4", "--k", "4", "--tokens", "20000", "--no-progress", "--device", "cpu",
                        "--out", demo / "topk"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) >= 4
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "TopKSAE 128 atoms on layer 2" in out and "nearest atoms" in out
    assert ns["codes"].shape[1] == 128 and ns["x"].shape == (2048, 32)
    assert np.isclose(float(out.split("FVU ")[1].split()[0]), 1 - ns["sae"].score(ns["x"]), atol=1e-3)
    from superpos import load_dictionary

    assert load_dictionary(tmp_path / "runs" / "demo" / "topk-small").meta_["layer"] == 2

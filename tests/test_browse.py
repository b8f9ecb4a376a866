"""The feature browser: every number on its pages against an independent recomputation, and the site
itself in headless Chromium (sorting, search, a feature page with highlighted contexts, a screenshot).

The Chromium part needs Debian's chromium and chromium-driver (`.ci/run` installs them); without them it
is skipped with that reason. `python tests/test_browse.py SITE OUT` saves the committed screenshots of a
site (docs/results/browse/).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from superpos.model.harvest import HarvestConfig, harvest
from superpos.store import ActivationStore

CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("SUPERPOS_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
TOP, CHUNK, BEFORE, AFTER = 5, 16, 6, 2


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "superpos", *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def read_js(path: Path):
    """The JSON inside one of the site's data scripts (``SP.x = {...};`` or ``SP.chunk(c, lo, [...]);``)."""
    text = path.read_text(encoding="utf-8").strip()
    start = min(i for i in (text.find("{"), text.find("[")) if i >= 0)
    end = max(text.rfind("}"), text.rfind("]")) + 1
    return json.loads(text[start:end])


@pytest.fixture(scope="module")
def site(tiny_models, tiny_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    model = tiny_models["llama"]
    harvest(HarvestConfig(model=str(model), corpus=str(tiny_corpus), layers="0,2", tokens=3072, context_length=64,
                          device="cpu"), root / "acts.h5", progress=False)
    _cli("fit", "--store", root / "acts.h5", "--layer", 2, "--expansion", 4, "--k", 4, "--tokens", 30000,
         "--batch-size", 256, "--seed", 0, "--no-progress", "--device", "cpu", "--out", root / "sae")
    _cli("browse", root / "sae", "--store", root / "acts.h5", "--top", TOP, "--chunk", CHUNK, "--before", BEFORE,
         "--after", AFTER, "--device", "cpu", "--no-progress", "--out", root / "site")
    return root, model


def _features(site_dir: Path) -> list[dict]:
    chunks = sorted((site_dir / "data" / "f").glob("*.js"), key=lambda p: int(p.stem))
    return [f for c in chunks for f in read_js(c)]


def test_browse_numbers_match_an_independent_recomputation(site):
    from transformers import AutoModelForCausalLM

    from superpos import load_dictionary

    root, model_dir = site
    out = root / "site"
    meta, index, vocab = (read_js(out / "data" / f"{n}.js") for n in ("meta", "index", "vocab"))
    feats = _features(out)
    dic = load_dictionary(root / "sae", device="cpu")
    n_feat = dic.n_components_
    assert meta["n_features"] == len(feats) == len(index["freq"]) == n_feat == 4 * 32
    assert len(list((out / "data" / "f").glob("*.js"))) == -(-n_feat // CHUNK)

    with ActivationStore(root / "acts.h5") as store:
        keep = store.pos >= 1
        rows = np.flatnonzero(keep)
        codes = dic.transform(store.to_numpy(2)[keep])
        tokens, doc, pos = (store.row_field(n) for n in ("tokens", "doc", "pos"))
    assert meta["rows_scanned"] == len(rows)
    np.testing.assert_allclose(index["freq"], (codes > 0).mean(0), rtol=1e-3)
    np.testing.assert_allclose(index["max"], codes.max(0), rtol=1e-3)

    for f in range(n_feat):
        d, col = feats[f], codes[:, f]
        assert sum(d["hist"]) == int((col > 0).sum())  # every firing lands in one bin
        want = np.sort(col[col > 0])[::-1][:TOP]
        np.testing.assert_allclose([c["v"] for c in d["ctx"]], want, rtol=1e-3)
        for c in d["ctx"]:
            r = c["r"]  # the store row this context is centred on
            v = col[np.searchsorted(rows, r)]
            assert v == pytest.approx(c["v"], rel=1e-3)
            assert c["t"][BEFORE] == tokens[r] and abs(c["a"][BEFORE] - 100 * v / col.max()) <= 0.51
            for off, t in zip(range(-BEFORE, AFTER + 1), c["t"]):  # the window: same document, contiguous
                inside = 0 <= r + off < len(tokens) and doc[r + off] == doc[r] and pos[r + off] == pos[r] + off \
                    and pos[r + off] >= 1
                assert t == (tokens[r + off] if inside else -1), (f, off)

    # geometry and logit effects, brute force in numpy
    W = dic.components_.numpy() if isinstance(dic.components_, torch.Tensor) else np.asarray(dic.components_)
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    C = U @ U.T
    np.fill_diagonal(C, 0)
    np.testing.assert_allclose(index["maxcos"], np.abs(C).max(1), atol=1e-4)
    lm = AutoModelForCausalLM.from_pretrained(model_dir)
    W_E = lm.get_input_embeddings().weight.detach().numpy()
    W_U = lm.get_output_embeddings().weight.detach().numpy()
    gamma = lm.model.norm.weight.detach().numpy()
    logits = (W * gamma) @ W_U.T
    E = W_E / np.linalg.norm(W_E, axis=1, keepdims=True)
    T = U @ E.T
    for f in range(n_feat):
        d = feats[f]
        assert d["up"][0] == np.argsort(-logits[f])[:10].tolist()
        assert d["down"][0] == np.argsort(logits[f])[:10].tolist()
        np.testing.assert_allclose(d["up"][1], logits[f][d["up"][0]], atol=2e-3)
        near = np.argsort(-np.abs(C[f]))[:8]
        assert d["atoms"][0] == near.tolist() and f not in d["atoms"][0]
        np.testing.assert_allclose(d["atoms"][1], C[f, near], atol=1e-4)  # signed cos
        assert d["tokens"][0] == np.argsort(-np.abs(T[f]))[:10].tolist()


def test_browse_vocab_and_refusals(site, tmp_path):
    from transformers import AutoTokenizer

    root, model_dir = site
    vocab = read_js(root / "site" / "data" / "vocab.js")
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert len(vocab) == 384 and vocab[300] == tok.decode([300])
    # an --out folder that holds something else is refused, not overwritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = subprocess.run([sys.executable, "-m", "superpos", "browse", root / "sae", "--store", root / "acts.h5",
                        "--device", "cpu", "--out", tmp_path / "mine"], capture_output=True, text=True)
    assert r.returncode == 2 and "is not a superpos site" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------- Chromium
def chrome():
    """Headless Chromium through Selenium with the system chromedriver (no driver download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1280,1500"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _wait(driver, fn, hang_guard: float = 300.0):
    """``fn()``'s value once it is truthy (the page renders after events); selenium's WebDriverWait asks again until
    it is, and ``hang_guard`` seconds only stop a page that never gets there."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, hang_guard, poll_frequency=0.05).until(lambda _: fn(), "the page never got there")


def _texts(driver, css: str) -> list[str]:
    """Text of every element matching ``css``, read in one script (no stale handles while the page re-renders)."""
    return driver.execute_script("return Array.from(document.querySelectorAll(arguments[0]), e => e.textContent)", css)


def _column(driver, i: int) -> list[float]:
    return [float(t.rstrip("%")) for t in _texts(driver, f"#features tbody tr td:nth-child({i})")]


@pytest.fixture
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Chromium not installed (apt-get install chromium chromium-driver): browser test skipped")
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[dev]')")
    driver = chrome()
    yield driver
    driver.quit()


def test_site_in_headless_chromium(site, browser):
    from selenium.webdriver.common.by import By

    root, _ = site
    out = root / "site"
    index, vocab = read_js(out / "data" / "index.js"), read_js(out / "data" / "vocab.js")
    n_feat = len(index["freq"])
    browser.get((out / "index.html").as_uri())
    rows = _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#features tbody tr"))
    assert len(rows) == min(100, n_feat)
    assert browser.find_element(By.ID, "count").text == f"{n_feat} features"
    freq = _column(browser, 2)  # default: most frequent first
    assert freq == sorted(freq, reverse=True) and freq[0] == pytest.approx(100 * max(index["freq"]), abs=1e-3)

    head = browser.find_element(By.CSS_SELECTOR, "th[data-key=max]")
    head.click()
    vmax = _column(browser, 3)
    assert vmax == sorted(vmax, reverse=True) and vmax[0] == pytest.approx(max(index["max"]), rel=5e-3)
    head.click()  # again: ascending
    assert _column(browser, 3) == sorted(_column(browser, 3))
    browser.find_element(By.CSS_SELECTOR, "th[data-key=maxcos]").click()
    cos = _column(browser, 4)
    assert cos == sorted(cos, reverse=True) and cos[0] == pytest.approx(max(index["maxcos"]), abs=1e-3)

    # search by token: the features whose top tokens or promoted tokens read like it
    probe = next(t for row in index["top_tok"] for t in row if vocab[t].strip().isalpha() and len(vocab[t].strip()) > 2)
    q = vocab[probe].strip().lower()
    hit = {t for t, s in enumerate(vocab) if q in s.lower() or s.lower().strip() == q}
    want = sum(any(t in hit for t in index["top_tok"][i] + index["promo"][i]) for i in range(n_feat))
    browser.find_element(By.ID, "search").send_keys(q)
    _wait(browser, lambda: _texts(browser, "#count") == [f"{want} features"])
    assert 0 < want < n_feat

    # a feature page: highlighted contexts, histogram, token lists; the nearest-atom link moves to that feature
    browser.find_element(By.CSS_SELECTOR, "#features tbody tr td a").click()
    spans = _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#contexts .tok"))
    lit = [s for s in spans if s.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "transparent")]
    centres = browser.find_elements(By.CSS_SELECTOR, "#contexts .tok.centre")
    assert lit and centres and set(centres) <= set(lit)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.hist rect")
    f = int(browser.current_url.split("#")[1])
    nearest = read_js(out / "data" / "f" / f"{f // CHUNK}.js")[f % CHUNK]["atoms"][0][0]
    browser.find_element(By.CSS_SELECTOR, ".cols a").click()
    _wait(browser, lambda: _texts(browser, "#feature h1") == [f"Feature {nearest}"])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_feature_page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def screenshots(site_dir: Path, out: Path, feature: int) -> None:
    """The committed screenshots: the index and one feature page of ``site_dir``."""
    from selenium.webdriver.common.by import By

    out.mkdir(parents=True, exist_ok=True)
    driver = chrome()
    try:
        driver.get((site_dir / "index.html").as_uri())
        _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#features tbody tr"))
        driver.save_screenshot(str(out / "index.png"))
        driver.get((site_dir / "feature.html").as_uri() + f"#{feature}")
        _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#contexts .tok"))
        driver.save_screenshot(str(out / "feature.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    screenshots(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)


def test_feature_stats_on_a_hand_made_case():
    """Three rows, four features; features 1 and 3 (the last) never fire."""
    from scipy import sparse

    from superpos.browse import HIST_BINS, Activations, feature_stats

    dense = np.array([[2.0, 0, 1.0, 0], [0.5, 0, 0, 0], [4.0, 0, 3.0, 0]], np.float32)
    acts = Activations(sparse.csr_matrix(dense), np.array([10, 11, 12]), (dense > 0).sum(0))
    st = feature_stats(acts, top=2)
    np.testing.assert_allclose(st["freq"], [1, 0, 2 / 3, 0])
    np.testing.assert_allclose(st["max"], [4, 0, 3, 0])
    np.testing.assert_allclose(st["mean"], [6.5 / 3, 0, 2, 0])
    assert st["top_rows"].tolist() == [[2, 0], [-1, -1], [2, 0], [-1, -1]]  # scanned-row indices, best first
    np.testing.assert_allclose(st["top_vals"], [[4, 2], [0, 0], [3, 1], [0, 0]])
    assert st["hist"].sum(1).tolist() == [3, 0, 2, 0]
    assert st["hist"][0, HIST_BINS - 1] == 1 and st["hist"][0, int(0.5 / 4 * HIST_BINS)] == 1  # 4 → last bin, 0.5 → 1/8

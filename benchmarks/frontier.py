"""The quality frontier (the SAEBench way): every dictionary kind at several L0, on real activations and on a planted
stream.

* Real: SmolLM2-135M layer 15 over the default corpus (the benchmark's harvest). Each dictionary is fitted on the
  first ⅞ of the contexts and measured on the last ⅛: held-out FVU, L0, and CE-loss recovered by splicing its
  reconstruction into the model at layer 15 (``superpos.dictionaries.metrics.evaluate_dictionaries``).
* Planted: rows built from known atoms (``superpos.store.surrogates.planted_superposition``); the mean max |cos| of the
  planted atoms with each dictionary's atoms (MMCS) against L0.

Each kind is asked for an L0 the way it takes one: TopK/BatchTopK ``k``, JumpReLU/ReLU ``target_l0``, NMF/semi-NMF
``k`` (at most k non-zeros per code), PCA ``n_components`` (dense codes: L0 = the number of components).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from peers import recovery

from superpos.dictionaries import NMF, PCA, BatchTopKSAE, JumpReLUSAE, ReLUSAE, SemiNMF, TopKSAE
from superpos.dictionaries.metrics import fvu

KINDS = ("topk", "batchtopk", "jumprelu", "relu", "nmf", "seminmf", "pca")


def make(kind: str, l0: int, d: int, *, expansion: float, nmf_expansion: float, n_tokens: int | None,
         nmf_iter: int) -> object:
    """One dictionary of ``kind`` asked for ``l0`` active codes per row."""
    sae = dict(expansion=expansion, n_tokens=n_tokens, device="cpu", progress=False)
    nmf = dict(expansion=nmf_expansion, k=l0, max_iter=nmf_iter, transform_iter=40, device="cpu", progress=False)
    return {"topk": lambda: TopKSAE(k=l0, **sae), "batchtopk": lambda: BatchTopKSAE(k=l0, **sae),
            "jumprelu": lambda: JumpReLUSAE(target_l0=l0, **sae), "relu": lambda: ReLUSAE(target_l0=l0, **sae),
            "nmf": lambda: NMF(**nmf), "seminmf": lambda: SemiNMF(**nmf),
            "pca": lambda: PCA(n_components=min(l0, d), device="cpu")}[kind]()


def _fvu_l0(dic, x: np.ndarray) -> tuple[float, float]:
    with torch.no_grad():
        codes = dic.encode(torch.from_numpy(x))
        return fvu(x, dic.decode(codes)), float((codes != 0).sum(1).double().mean())


def planted_setup(quick: bool) -> dict:
    """The planted set: rows, d, atoms, active atoms per row (the test suite's set at full size)."""
    n, d, n_feat, k = (4000, 16, 32, 2) if quick else (60000, 64, 256, 5)
    return {"rows": n, "d": d, "atoms": n_feat, "k": k, "latents": 8 * d, "held_out": 5000}


class RowCache:
    """Rows already measured, kept in a JSON-lines file as each is made, so an interrupted frontier resumes where it
    stopped. A row's key names the settings it was made with, the git tree of ``superpos/dictionaries`` and a hash of
    the code here that sets each fit up (``make``, ``planted_frontier``, ``real_frontier``): a change to either measures
    everything again. Without git, or with ``path`` None, nothing is cached."""

    def __init__(self, path: Path | None, version: str | None = None):
        if version is None:
            tree = self._dictionaries_tree()
            version = tree and f"{tree}/{self._setup_hash()}"
        self.tree = version
        self.path = path if self.tree else None
        self.rows = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                self.rows[item["key"]] = item["value"]

    @staticmethod
    def _dictionaries_tree() -> str:
        """The git tree of superpos/dictionaries at HEAD; "" when git is missing or the folder has local changes."""
        root = Path(__file__).resolve().parents[1]
        try:
            tree = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD:superpos/dictionaries"], capture_output=True,
                                  text=True, timeout=30).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "superpos/dictionaries"],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return "" if dirty else tree

    @staticmethod
    def _setup_hash() -> str:
        """A short hash of the source of the functions that choose each fit's settings."""
        src = "".join(inspect.getsource(f) for f in (make, planted_frontier, real_frontier))
        return hashlib.sha1(src.encode()).hexdigest()[:12]

    def get(self, key: str, compute):
        key = f"{self.tree}/{key}"
        if key in self.rows:
            return self.rows[key]
        value = compute()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut = self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
            with open(self.path, "a") as f:  # after a line cut short by a kill, start a new one
                f.write(("\n" if cut else "") + json.dumps({"key": key, "value": value}, default=float) + "\n")
        self.rows[key] = value
        return value


def planted_frontier(l0s: list[int], quick: bool, cache: RowCache) -> list[dict]:
    """Every kind at each L0 on a planted set (``planted_setup``): held-out FVU, L0, MMCS."""
    from superpos.store.surrogates import planted_superposition

    setup = planted_setup(quick)
    n, d, n_feat, k = (setup[key] for key in ("rows", "d", "atoms", "k"))
    x, atoms = planted_superposition(n + 5000, d, n_feat, k, noise=0.01, seed=0)
    train, test = x[:n], x[n:]

    def measure(kind, l0):
        t0 = time.perf_counter()
        dic = make(kind, l0, d, expansion=512 / 64, nmf_expansion=512 / 64, n_tokens=20_000 if quick else None,
                   nmf_iter=10 if quick else 150)
        dic.fit(train)
        err, got = _fvu_l0(dic, test)
        rec = recovery(atoms, np.asarray(dic.components_))
        row = {"kind": kind, "target_l0": l0, "l0": got, "fvu": err, **rec, "seconds": time.perf_counter() - t0}
        print(f"[frontier] planted {kind} L0 {l0}: got {got:.1f}, FVU {err:.3f}, MMCS {rec['mmcs']:.3f} "
              f"({row['seconds']:.0f} s)", flush=True)
        return row
    return [cache.get(f"planted/{json.dumps(setup, sort_keys=True)}/{kind}/{l0}", lambda: measure(kind, l0))
            for kind in KINDS for l0 in l0s]


def real_frontier(store_path: Path, layer: int, l0s: list[int], quick: bool, ce_contexts: int,
                  cache: RowCache) -> list[dict]:
    """Every kind at each L0 on a store's layer: fitted on the first ⅞ of its contexts, measured on the rest."""
    from superpos.dictionaries.metrics import evaluate_dictionaries
    from superpos.model.load import load_model
    from superpos.store import ActivationStore

    out = []
    with ActivationStore(store_path) as store:
        split = store.split_row(7 / 8)
        train = store.restrict(0, split)
        rows = np.concatenate([x for _, x in train.iter_rows(layer, 8192, min_pos=1)]).astype(np.float32)
        d = rows.shape[1]
        nmf_rows = rows[np.random.default_rng(0).permutation(len(rows))[:4096 if quick else 16384]]
        held = store.restrict(split, store.n_rows)
        lm = None

        def measure(kind):
            nonlocal lm
            if lm is None and ce_contexts:
                lm = load_model(store.attrs.get("model_spec", "default"), device="cpu")
            dicts, secs, rows_out = {}, {}, []
            for l0 in l0s:
                t0 = time.perf_counter()
                dic = make(kind, l0, d, expansion=2 if quick else 8, nmf_expansion=1 if quick else 2,
                           n_tokens=len(rows) * (2 if quick else 10), nmf_iter=20 if quick else 50)
                dic.fit(nmf_rows if kind in ("nmf", "seminmf") else rows)
                dicts[f"{kind}@{l0}"], secs[l0] = dic, time.perf_counter() - t0
            for l0, r in zip(l0s, evaluate_dictionaries(dicts, held, layer, lm=lm, ce_contexts=ce_contexts,
                                                        progress=False)):
                rows_out.append({"kind": kind, "target_l0": l0, "l0": r.l0, "fvu": r.fvu,
                                 "ce_recovered": r.ce_loss_recovered, "n_components": r.n_components,
                                 "dead": r.dead_fraction, "seconds": secs[l0]})
                print(f"[frontier] real {kind} L0 {l0}: got {r.l0:.1f}, FVU {r.fvu:.3f}, CE recovered "
                      f"{r.ce_loss_recovered if r.ce_loss_recovered is not None else float('nan'):.3f} "
                      f"({secs[l0]:.0f} s)", flush=True)
            return rows_out
        setup = f"{store_path.name}/L{layer}/{quick}/{ce_contexts}/{l0s}"
        for kind in KINDS:
            out += cache.get(f"real/{setup}/{kind}", lambda: measure(kind))
    return out


def run_frontier(quick: bool, store_path: Path | None, layer: int = 15, cache_path: Path | None = None) -> dict:
    """The frontier section's numbers. With ``cache_path``, rows measured by an interrupted run are reused
    (``RowCache``)."""
    cache = RowCache(cache_path)
    l0s = [4, 8] if quick else [8, 16, 32, 64]
    res = {"planted_l0s": [2, 3] if quick else [3, 5, 10, 20], "real_l0s": l0s}
    res["planted_setup"] = planted_setup(quick)
    res["planted"] = planted_frontier(res["planted_l0s"], quick, cache)
    if store_path is not None:
        res["real"] = real_frontier(store_path, layer, l0s, quick, 0 if quick else 16, cache)
        res["layer"] = layer
    return res


def _figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("planted", "mmcs", "planted: mean max |cos| (MMCS)"), ("planted", "fvu", "planted: held-out FVU")]
    if "real" in res:
        panels = [("real", "fvu", f"SmolLM2 layer {res['layer']}: held-out FVU"),
                  ("real", "ce_recovered", f"SmolLM2 layer {res['layer']}: CE loss recovered")] + panels
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8))
    for ax, (part, key, title) in zip(np.atleast_1d(axes), panels):
        for kind in KINDS:
            pts = sorted((r["l0"], r[key]) for r in res[part] if r["kind"] == kind and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), "o-", label=kind)
        ax.set_xscale("log")
        if part == "real":  # a kind that failed (FVU > 1, CE recovered < 0) would squash the others' scale
            ax.set_ylim(0, 1.02)
            ax.set_xlim(5, 120)
            off = sorted({r["kind"] for r in res[part] if not 0 <= (r.get(key) or 0) <= 1.02 or not 5 <= r["l0"] <= 120})
            if off:
                ax.text(0.02, 0.02 if key == "ce_recovered" else 0.9, "off the chart: " + ", ".join(off),
                        transform=ax.transAxes, fontsize=7)
        ax.set_xlabel("L0 (measured)")
        ax.set_title(title, fontsize=9)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier_section(res: dict, folder: Path) -> list[str]:
    """RESULTS.md: the frontier figure and tables."""
    _figure(res, folder / "frontier.png")
    L = ["## The quality frontier: every kind at several L0", "",
         "Each kind asked for an L0 the way it takes one (TopK/BatchTopK `k`, JumpReLU/ReLU `target_l0`, NMF/semi-NMF "
         "`k`, PCA `n_components`); the tables give the L0 measured on held-out rows next to the one asked for "
         "(benchmarks/frontier.py).", "", "![frontier](frontier.png)", ""]
    if "real" in res:
        L += [f"**SmolLM2-135M layer {res['layer']}**, default corpus: fitted on the first ⅞ of the contexts, measured "
              "on the last ⅛; CE-loss recovered over 16 held-out contexts. SAEs: 8× (4,608 latents), 10 passes at "
              "batch 1024; NMF and semi-NMF: 2× (1,152 atoms), one pass over 16,384 rows in mini-batches of 4,096 (their "
              "default batch; `max_iter` applies only to in-memory fits of one batch).", "",
              "| kind | L0 asked | L0 measured | held-out FVU | CE loss recovered | dead | fit time |",
              "|---|---|---|---|---|---|---|"]
        L += [f"| {r['kind']} | {r['target_l0']} | {r['l0']:.1f} | {r['fvu']:.3f} | "
              + (f"{r['ce_recovered']:.3f}" if r.get("ce_recovered") is not None else "—")
              + f" | {r['dead']:.1%} | {r['seconds']:.0f} s |" for r in res["real"]]
        L.append("")
    p = res["planted_setup"]
    L += [f"**Planted set** ({p['rows']:,} rows, d {p['d']}, {p['atoms']} unit atoms, {p['k']} active per row, noise "
          f"0.01; {p['latents']} atoms for every kind but PCA; in-memory fits at their defaults, SAEs converging; "
          f"measured on {p['held_out']:,} more rows): MMCS = mean over planted atoms of the best |cos|; recovered = "
          "share above 0.9.", "",
          "| kind | L0 asked | L0 measured | within 20 % | held-out FVU | MMCS | recovered | fit time |",
          "|---|---|---|---|---|---|---|---|"]
    L += [f"| {r['kind']} | {r['target_l0']} | {r['l0']:.1f} | {'yes' if abs(r['l0'] - r['target_l0']) <= 0.2 * r['target_l0'] else 'no'} | "
          f"{r['fvu']:.3f} | {r['mmcs']:.3f} | {r['recovered']:.0%} | {r['seconds']:.0f} s |" for r in res["planted"]]
    L.append("")
    return L

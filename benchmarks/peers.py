"""Peer SAE toolkits at their own defaults, on one planted-feature stream and on real layer-15 activations.

Each peer gets a venv under ~/.cache/superpos/bench-venvs/NAME (``--system-site-packages`` and this process's
torch pinned, so that every toolkit runs on the same torch build), installs from PyPI, and trains a TopK SAE with
the same width, k and batch on the same rows (``.npy`` files, read through a memory map), each with **its own**
optimizer, learning rate, schedule and initialisation:

* EleutherAI sparsify: sign-SGD wrapped in schedule-free (momentum 0.95), lr 5e-3/√(latents/2¹⁴), b_dec from the
  first batch's mean, the averaged weights swapped in (``optimizer.eval()``) before every evaluation — what its
  ``Trainer`` does with its default ``optimizer="signum"``.
* SAELens: its ``TopKTrainingSAE`` stepped by its own ``SAETrainer`` through ``step()``, as its ``fit()`` does
  (Adam at its default lr 3e-4 and constant schedule, grad-norm clipping).
* saprmarks dictionary_learning: its ``TopKTrainer`` (Adam at its own lr rule, AuxK, grad clipping) called as its
  ``trainSAE`` loop calls it; its 1,000-step warm-up is cut to a tenth of the run when the run is shorter.

superpos trains with ``TopKSAE`` at its defaults, given the same token budget, and again with one setting changed,
``precision="bfloat16"`` (the encoder product in bfloat16, which this CPU runs natively; codes, decoder and backward
in float32). Every run reports tokens/s (the training steps only), held-out FVU on the same rows, and — on the
planted stream — the mean max cosine of each planted atom with the decoder (MMCS) and the share of atoms recovered
at cos > 0.9. Quality per second: superpos in bfloat16 at several budgets (each a whole run with its schedule)
against the schedule-free peer's averaged weights evaluated along one run (wall time of the training steps only).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from peer_scripts import SCRIPTS

VENVS = Path.home() / ".cache" / "superpos" / "bench-venvs"

SUPERPOS_BF16 = "superpos, bfloat16"
# Real held-out rows above this multiple of the median norm (SmolLM2's later attention sinks: one or two of 16,384
# rows carried 22–77 % of the variance in the runs measured) are left out of the "typical rows" FVU, which the real
# stream reports next to the FVU over all rows: how a run reconstructs those few rows swings the latter by 0.06–0.32.
TYPICAL_NORM = 5.0
PEERS = {
    "EleutherAI sparsify": ("eai-sparsify", "sparsify"),
    "SAELens": ("sae-lens", "sae_lens"),
    "saprmarks dictionary_learning": ("dictionary-learning", "dictionary_learning"),
}


def _venv(name: str, package: str, *extra: str) -> tuple[Path | None, str]:
    folder = VENVS / name
    py = folder / "bin" / "python"
    marker = folder / ".installed"
    if marker.exists():
        return py, ""
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(folder)], capture_output=True, text=True)
    if r.returncode:
        return None, f"venv failed: {r.stderr.strip()[-200:]}"
    # the torch this process runs, pinned: an unpinned resolve pulls a newer multi-GB CUDA build into the venv, and
    # the peer would then be timed on other kernels than superpos
    pins = folder / "constraints.txt"
    pins.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(pins), package, *extra],
                       capture_output=True, text=True, timeout=900)
    if r.returncode:
        return None, "pip install failed: " + " ".join(r.stderr.strip().splitlines()[-2:])[-300:]
    # a torchvision resolved for another torch build breaks `import transformers` (dictionary_learning pulls it in
    # through nnsight); none of these peers' SAE code uses it
    if subprocess.run([str(py), "-c", "import torchvision"], capture_output=True).returncode:
        subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], capture_output=True)
    marker.write_text(package)
    return py, ""


def planted_stream(n: int, d: int, n_features: int, k: int, noise: float, seed: int = 0,
                   chunk: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """``superpos.store.surrogates.planted_superposition`` in chunks (its n × n_features draw would not fit at 2M rows):
    k distinct atoms of ``n_features`` per row, coefficients uniform in [0.5, 1.5], Gaussian noise."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_features, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    for lo in range(0, n, chunk):
        c = min(chunk, n - lo)
        idx = np.argpartition(rng.random((c, n_features), dtype=np.float32), k, axis=1)[:, :k]
        coef = rng.uniform(0.5, 1.5, (c, k)).astype(np.float32)
        x[lo:lo + c] = np.einsum("nk,nkd->nd", coef, atoms[idx]) + noise * rng.standard_normal((c, d), dtype=np.float32)
    return x, atoms


def recovery(atoms_MD: np.ndarray, decoder_FD: np.ndarray) -> dict:
    """Mean over planted atoms of the best |cos| with a decoder row, and the share above 0.9."""
    dec = decoder_FD / np.maximum(np.linalg.norm(decoder_FD, axis=1, keepdims=True), 1e-12)
    best = np.abs(torch.from_numpy(atoms_MD) @ torch.from_numpy(dec.astype(np.float32)).T).max(1).values.numpy()
    return {"mmcs": float(best.mean()), "recovered": float((best > 0.9).mean())}


def typical_rows(ev: np.ndarray) -> tuple[np.ndarray, float]:
    """The rows of ``ev`` whose norm is at most ``TYPICAL_NORM`` × the median, and the share of ``ev``'s variance
    (Σ‖x − mean‖²) that the others carry."""
    norm = np.linalg.norm(ev, axis=1)
    keep = norm <= TYPICAL_NORM * np.median(norm)
    dev = ((ev - ev.mean(0)) ** 2).sum(1)
    return ev[keep], float(dev[~keep].sum() / dev.sum())


def _superpos(train: np.ndarray, ev: np.ndarray, n_latents: int, k: int, batch: int, tokens: int,
              precision: str = "float32", typical: np.ndarray | None = None) -> dict:
    """superpos's TopKSAE at its defaults (but ``precision``) for ``tokens``; tokens/s from the training steps'
    own timings; with ``typical``, the FVU on those rows as well."""
    from superpos.dictionaries import TopKSAE

    sae = TopKSAE(n_components=n_latents, k=k, batch_size=batch, n_tokens=tokens, device="cpu", progress=False,
                  precision=precision)
    t0 = time.perf_counter()
    sae.fit(train)
    wall = time.perf_counter() - t0
    steps_tok_s = [h["tok_s"] for h in sae.history_[1:]] or [sae.history_[-1]["tok_s"]]
    from superpos.dictionaries.metrics import fvu as fvu_of

    fvu = fvu_of(ev, sae.reconstruct(ev))
    train_s = tokens / float(np.median(steps_tok_s))
    extra = {} if typical is None else {"fvu_typical": fvu_of(typical, sae.reconstruct(typical))}
    return {"status": "ok", "tokens_per_s": tokens / train_s, "fvu": fvu, "train_s": train_s, "wall_s": wall,
            "tokens": tokens, "decoder": sae.components_.numpy(), **extra}


def _peer(label: str, tmp: Path, cfg: dict) -> dict:
    package, module = PEERS[label]
    t0 = time.perf_counter()
    try:
        py, why = _venv(module, package)
    except subprocess.TimeoutExpired:
        py, why = None, "pip install timed out (15 min)"
    if py is None:
        return {"status": "skipped", "note": why}
    cfg = {**cfg, "decoder_out": str(tmp / f"{module}_decoder.npy")}
    r = subprocess.run([str(py), "-c", SCRIPTS[module], json.dumps(cfg)], capture_output=True, text=True, timeout=7200)
    if r.returncode:
        return {"status": "failed", "note": "its training script failed: " + " ".join(r.stderr.strip().splitlines()[-1:])[-300:]}
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {"status": "ok", **out, "decoder": np.load(cfg["decoder_out"]),
            "note": f"{package} (installed and ran in {time.perf_counter() - t0:.0f} s)"}


def run_peers(quick: bool, real_rows: np.ndarray | None = None, labels: list[str] | None = None) -> dict:
    """Every peer (or those in ``labels``) and superpos on the planted stream; superpos and the fastest of them on
    ``real_rows`` too."""
    labels = list(PEERS) if labels is None else labels
    d, n_feat, k_planted = (64, 256, 4) if quick else (576, 2304, 8)
    n_latents, k, batch = (4 * d, 8, 512) if quick else (16 * d, 32, 4096)
    tokens = 64 * 512 if quick else 2_000_000
    n_eval = 4096 if quick else 16384
    res: dict = {"setup": {"d": d, "planted_atoms": n_feat, "planted_k": k_planted, "noise": 0.05, "n_latents": n_latents,
                           "k": k, "batch": batch, "tokens": tokens, "eval_rows": n_eval}}
    x, atoms = planted_stream(tokens + n_eval, d, n_feat, k_planted, noise=0.05, seed=3)
    train, ev = x[:tokens], x[tokens:]
    del x
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "train.npy", train)
        np.save(tmp / "eval.npy", ev)
        cfg = {"train": str(tmp / "train.npy"), "eval": str(tmp / "eval.npy"), "batch": batch, "n_latents": n_latents,
               "k": k, "tokens": tokens, "curve_points": 8}
        planted = {}
        for label, precision in (("superpos", "float32"), (SUPERPOS_BF16, "bfloat16")):
            ours = _superpos(train, ev, n_latents, k, batch, tokens, precision)
            rec = recovery(atoms, ours.pop("decoder"))
            planted[label] = {**ours, **rec, "note": "this run, TopKSAE defaults"
                              + ("" if precision == "float32" else ' but precision="bfloat16"')}
            print(f"[peers] {label}: {ours['tokens_per_s']:,.0f} tok/s, FVU {ours['fvu']:.3f}", flush=True)
        for label in labels:
            r = _peer(label, tmp, cfg)
            if r["status"] == "ok":
                r.update(recovery(atoms, r.pop("decoder")))
                print(f"[peers] {label}: {r['tokens_per_s']:,.0f} tok/s, FVU {r['fvu']:.3f}, MMCS {r['mmcs']:.3f}", flush=True)
            else:
                print(f"[peers] {label}: {r['status']} ({r['note']})", flush=True)
            planted[label] = r
        res["planted"] = planted
        fastest = max((lbl for lbl in labels if planted[lbl]["status"] == "ok"),
                      key=lambda lbl: planted[lbl]["tokens_per_s"], default=None)
        res["fastest_peer"] = fastest
        res["planted_quality_per_second"] = _superpos_budgets(train, ev, n_latents, k, batch, tokens,
                                                              planted[SUPERPOS_BF16])
        del train
        if real_rows is not None and fastest is not None:
            real_tokens = tokens // 2
            rtrain, rev = real_rows[:-n_eval], real_rows[-n_eval:]
            typical, left_out_var = typical_rows(rev)
            np.save(tmp / "train.npy", rtrain)
            np.save(tmp / "eval.npy", rev)
            np.save(tmp / "eval_typical.npy", typical)
            peer = _peer(fastest, tmp, {**cfg, "tokens": real_tokens, "eval_typical": str(tmp / "eval_typical.npy")})
            peer.pop("decoder", None)
            ours, ours16 = (_superpos(rtrain, rev, n_latents, k, batch, real_tokens, p, typical)
                            for p in ("float32", "bfloat16"))
            ours.pop("decoder"), ours16.pop("decoder")
            res["real"] = {"rows": len(rtrain), "eval_rows": len(rev), "tokens": real_tokens, "peer": peer,
                           "superpos": ours, "superpos_bf16": ours16,
                           "typical": {"rows": len(typical), "left_out_variance": left_out_var},
                           "budgets": _superpos_budgets(rtrain, rev, n_latents, k, batch, real_tokens, ours16, typical)}
    return res


def keep_other_peers(new: dict, old: dict, date: str) -> None:
    """Rows of peers that ``new`` did not rerun, taken from the earlier run ``old`` (marked with its date), in
    PEERS order. The ratios stay those of this run: the fastest peer is one this run measured."""
    mark = "; from the run of "  # a row kept before keeps the date of the run that measured it
    kept = {lbl: r if mark in r.get("note", "") else {**r, "note": f"{r.get('note', '')}{mark}{date}"}
            for lbl, r in old.get("planted", {}).items() if lbl not in new["planted"]}
    new["planted"] = {lbl: (new["planted"] | kept)[lbl] for lbl in ["superpos", SUPERPOS_BF16, *PEERS]
                      if lbl in new["planted"] | kept}


def _superpos_budgets(train, ev, n_latents, k, batch, tokens, full: dict, typical=None) -> list[dict]:
    """superpos's quality per second, in bfloat16: whole runs at ⅛, ¼ and ½ of ``tokens`` (each with its own warm-up
    and decay), and the full run already made."""
    keys = ("tokens", "train_s", "fvu", "fvu_typical")
    out = []
    for frac in (8, 4, 2):
        r = _superpos(train, ev, n_latents, k, batch, tokens // frac, "bfloat16", typical)
        out.append({key: r[key] for key in keys if key in r})
        print(f"[peers] superpos at {tokens // frac:,} tokens: FVU {r['fvu']:.3f} in {r['train_s']:.0f} s", flush=True)
    return out + [{key: full[key] for key in keys if key in full}]


def time_to_reach(budgets: list[dict], fvu: float, key: str = "fvu") -> float | None:
    """The training time of superpos's shortest run (of its budgets) whose FVU (``key``) is at most ``fvu``; None
    if none."""
    ok = [b["train_s"] for b in budgets if b[key] <= fvu]
    return min(ok) if ok else None


def _streams(res: dict) -> list[tuple[str, str, dict, list[dict], str]]:
    """Quality per second's streams: (short name, name, the fastest peer's run, superpos's budgets, the FVU key
    compared)."""
    out = [("planted", "planted", res["planted"][res["fastest_peer"]], res.get("planted_quality_per_second", []), "fvu")]
    if "real" in res:
        real = res["real"]  # its few distinct rows make the budget several passes over them
        name = (f"SmolLM2 layer 15 ({real['rows']:,} rows, {real['tokens']:,} tokens: "
                f"{real['tokens'] / real['rows']:.0f} passes)")
        out.append(("real layer 15, all rows", name + ", all held-out rows", real["peer"], real["budgets"], "fvu"))
        if "typical" in real:
            t = real["typical"]
            out.append(("real layer 15, typical rows",
                        f"same, the {t['rows']:,} held-out rows at ≤ {TYPICAL_NORM:g}× the median norm (left out: "
                        f"{real['eval_rows'] - t['rows']:,}, with {t['left_out_variance']:.0%} of the variance)",
                        real["peer"], real["budgets"], "fvu_typical"))
    return out


def _curve_figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [("planted stream", res["planted"], res.get("planted_quality_per_second"))]
    if "real" in res:
        parts.append(("SmolLM2 layer 15", {res["fastest_peer"]: res["real"]["peer"], "superpos": res["real"]["superpos"]},
                      res["real"]["budgets"]))
    sz = {"marker": "D", "color": "0.5", "linestyle": "none"}
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, (title, runs, budgets) in zip(axes[0], parts):
        for label, r in runs.items():
            if r.get("status", "ok") != "ok" or label.startswith("superpos"):
                if label == "superpos" and r.get("status", "ok") == "ok":
                    ax.plot([r["train_s"]], [r["fvu"]], **sz, label="superpos, float32 default (whole run)")
                continue
            pts = r.get("curve") or []
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{label} (one run, averaged weights)")
            else:
                ax.plot([r["train_s"]], [r["fvu"]], "s", label=f"{label} (end of run)")
        if budgets:
            ax.plot([b["train_s"] for b in budgets], [b["fvu"] for b in budgets], "o-", color="k",
                    label="superpos, bfloat16 (a whole run per budget)")
        ax.set_xscale("log")
        ax.set_xlabel("training time, s (steps only)")
        ax.set_ylabel("held-out FVU")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def peers_section(res: dict, folder: Path) -> list[str]:
    """RESULTS.md: the peer table, quality per second (table and figure)."""
    if "planted" not in res:
        return []
    st = res["setup"]
    L = [f"## Peers at their own defaults, {st['tokens']:,} planted tokens", "",
         f"One stream for all: d {st['d']}, {st['planted_atoms']:,} planted unit atoms, {st['planted_k']} active per row "
         f"(coefficients uniform in [0.5, 1.5]), noise SD {st['noise']}; each toolkit trains a TopK SAE with "
         f"{st['n_latents']:,} latents, k {st['k']}, batch {st['batch']:,}, on the same rows in the same order, with "
         f"its own optimizer, learning rate, schedule and initialisation (benchmarks/peers.py). FVU on "
         f"{st['eval_rows']:,} held-out rows; MMCS = mean over planted atoms of the best |cos| with a decoder row; "
         "recovered = share of atoms with a row at cos > 0.9. tokens/s counts the training steps only.", "",
         "| toolkit | status | tokens/s | held-out FVU | MMCS | atoms recovered | training time | note |",
         "|---|---|---|---|---|---|---|---|"]
    for name, r in res["planted"].items():
        if r.get("status") != "ok":
            L.append(f"| {name} | {r.get('status')} | | | | | | {r.get('note', '')} |")
            continue
        L.append(f"| {name} | ok | {r['tokens_per_s']:,.0f} | {r['fvu']:.3f} | {r['mmcs']:.3f} | "
                 f"{r['recovered']:.1%} | {r['train_s']:,.0f} s | {r.get('note', '')} |")
    L.append("")
    fastest = res.get("fastest_peer")
    if fastest:
        _curve_figure(res, folder / "quality_per_second.png")
        L += ["### Quality per second", "",
              f"Held-out FVU against training time: superpos with `precision=\"bfloat16\"` as whole runs at ⅛, ¼, ½ "
              f"and all of the budget (each with "
              f"its own warm-up and decay), against {fastest} (the fastest peer) along one run"
              + (" — its schedule-free averaged weights evaluated at 8 points" if res["planted"][fastest].get("curve") else "")
              + ".", "", "![quality per second](quality_per_second.png)", "",
              "| stream | superpos: tokens → FVU (training s) | " + fastest + ": final FVU (training s) | "
              "superpos's time to that FVU |", "|---|---|---|---|"]
        for _, name, peer, budgets, key in _streams(res):
            if peer.get("status") != "ok":
                L.append(f"| {name} | | {peer.get('status')}: {peer.get('note')} | |")
                continue
            reach = time_to_reach(budgets, peer[key], key)
            L.append(f"| {name} | " + "; ".join(f"{b['tokens']:,} → {b[key]:.3f} ({b['train_s']:.0f} s)" for b in budgets)
                     + f" | {peer[key]:.3f} ({peer['train_s']:.0f} s) | "
                     + (f"{reach:.0f} s = {reach / peer['train_s']:.2f}× its time" if reach else "not reached") + " |")
        if "real" in res and "superpos_bf16" in res["real"]:
            a, b = res["real"]["superpos"], res["real"]["superpos_bf16"]
            typ = "fvu_typical" in a  # "FVU 0.139 (typical rows 0.160)"
            f = [f"{r['fvu']:.3f}" + (f" (typical rows {r['fvu_typical']:.3f})" if typ else "") for r in (a, b)]
            L.append(f"On the real layer at the full budget, superpos's float32 default reaches FVU {f[0]} in "
                     f"{a['train_s']:.0f} s ({a['tokens_per_s']:,.0f} tok/s) and bfloat16 {f[1]} in {b['train_s']:.0f} s "
                     f"({b['tokens_per_s']:,.0f} tok/s).")
        L.append("")
    return L


def peer_targets(res: dict) -> list[list]:
    """The issue's peer targets: ≥ 2× the fastest peer's tokens/s at equal or better FVU and MMCS; its final FVU in
    ≤ 0.5× its training time on the planted and the real stream."""
    fastest = res.get("fastest_peer")
    if not fastest:
        return [["≥ 2× the fastest peer", "no peer ran", False]]
    peer, rows = res["planted"][fastest], []
    for label in ("superpos", SUPERPOS_BF16):
        ours = res["planted"].get(label, {})
        if ours.get("status") != "ok":
            continue
        ratio = ours["tokens_per_s"] / peer["tokens_per_s"]
        rows.append([f"≥ 2× the fastest peer's tokens/s ({fastest}) at ≥ its FVU and MMCS: {label}",
                     f"{ratio:.2f}×; FVU {ours['fvu']:.3f} vs {peer['fvu']:.3f}; MMCS {ours['mmcs']:.3f} vs {peer['mmcs']:.3f}",
                     ratio >= 2 and ours["fvu"] <= peer["fvu"] and ours["mmcs"] >= peer["mmcs"]])
    for name, _, p, budgets, key in _streams(res):
        if p.get("status") != "ok":
            continue
        reach = time_to_reach(budgets, p[key], key)
        rows.append([f"{fastest}'s final FVU in ≤ 0.5× its time ({name}; {SUPERPOS_BF16})",
                     f"{reach / p['train_s']:.2f}×" if reach else "not reached", bool(reach and reach <= 0.5 * p["train_s"])])
    return rows

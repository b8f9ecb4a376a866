"""True-token re-injection: add α × (embedding of the token at a position) into chosen late layers at
that position, and see whether the prediction of the *following* token improves.

The first block adds a vector ~15× the embedding's norm, so by the late layers the identity of the
current token is held only indirectly. Re-injecting its embedding tests whether the late layers can
use a fresh copy, and where: the claim is that it helps most where the token was surprising (the
model's own guess for it was poor, so the stream holds the "wrong" token's features).

* ``reinjection(lm, layers, alpha)``: a context manager; inside it every forward (teacher-forced or
  incremental generation with a KV cache) adds ``alpha * W_E[input id]`` to the residual at each layer.
* ``generate(lm, prompt, ...)``: sampling with the intervention; ``alpha = 0`` is bit-identical to plain
  generation (tested).
* ``run_reinject``: teacher-forced on real text, Δ loss on the following token, stratified by the
  surprisal of the re-injected token, for a sweep of α. Reading in docs/probes.md.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import SuperposError
from .configs import ReinjectConfig
from ..stats import cluster_bootstrap_mean


@contextlib.contextmanager
def reinjection(lm, layers, alpha: float):
    """Add ``alpha × embedding(input token)`` to the residual at ``layers`` (1..n_layers) at every position."""
    layers = lm.check_layers(layers)
    if 0 in layers:
        raise SuperposError("re-injection layers start at 1 (layer 0 already is the embedding)")
    emb = lm.model.get_input_embeddings()
    state: dict = {}

    def record(module, args, out):
        state["emb"] = out.detach()  # (B, T, D): the embeddings of this forward's input tokens

    def add(resid):
        return resid + alpha * state["emb"].to(resid.dtype)

    handle = emb.register_forward_hook(record)
    try:
        with contextlib.ExitStack() as stack:
            for layer in layers:
                stack.enter_context(lm.splice(layer, add))
            yield
    finally:
        handle.remove()


def generate(lm, prompt: str, max_new_tokens: int = 32, alpha: float = 0.0, layers=(), temperature: float = 1.0,
             seed: int = 0) -> str:
    """Sample a continuation of ``prompt`` while re-injecting each token's embedding at ``layers``."""
    ids = lm.tokenizer(prompt, return_tensors="pt")["input_ids"].to(lm.device)
    torch.manual_seed(seed)
    ctx = reinjection(lm, layers, alpha) if layers else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        out = lm.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
                                pad_token_id=lm.tokenizer.eos_token_id)
    return lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def teacher_forced_losses(lm, tokens_NC: np.ndarray, layers, alpha: float, batch_size: int = 8) -> np.ndarray:
    """(N, C-1) next-token losses with the intervention (alpha = 0 and no layers: the clean model)."""
    out = []
    with torch.inference_mode(), (reinjection(lm, layers, alpha) if layers else contextlib.nullcontext()):
        for i in range(0, len(tokens_NC), batch_size):
            tok = torch.from_numpy(tokens_NC[i:i + batch_size].astype(np.int64)).to(lm.device)
            logits = lm.model(tok).logits[:, :-1].float()
            out.append(F.cross_entropy(logits.transpose(1, 2), tok[:, 1:], reduction="none").cpu().numpy())
    return np.concatenate(out)


def run_reinject(cfg: ReinjectConfig) -> dict:
    """Δ loss on token p+1 when token p's embedding is re-injected at p, by surprisal of token p."""
    from ..dictionaries.io import write_json_atomic
    from ..models import load_model
    from ..residuals import contexts_from_corpus

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = load_model(cfg.model, device=cfg.device)
    n = lm.n_layers
    # not layer n: the final residual goes straight to the unembedding, where (with tied embeddings) adding the
    # current token's embedding just votes for repeating it
    layers = cfg.layers or list(range(max(1, (3 * n) // 4), n, 2))
    lm.check_layers(layers)
    tokens = contexts_from_corpus(lm, cfg.corpus, cfg.contexts, cfg.context_length)
    clean = teacher_forced_losses(lm, tokens, [], 0.0)  # clean[:, p] = loss predicting token p+1
    # token p's surprisal = clean loss at p-1; the following token's loss = loss at p; p from 1 (not BOS)
    surprisal = clean[:, :-1]
    ctx = np.repeat(np.arange(len(tokens)), surprisal.shape[1])
    edges = np.quantile(surprisal, np.linspace(0, 1, cfg.n_bins + 1))
    bins = np.clip(np.searchsorted(edges, surprisal.reshape(-1), side="right") - 1, 0, cfg.n_bins - 1)
    res: dict = {"config": asdict(cfg), "model": lm.name, "layers": layers, "clean_loss": float(clean[:, 1:].mean()),
                 "bin_edges": edges.tolist(), "alphas": {}}
    for alpha in tqdm(cfg.alphas, desc="alpha", file=sys.stderr):
        delta = (teacher_forced_losses(lm, tokens, layers, alpha) - clean)[:, 1:].reshape(-1)
        per_bin = []
        for b in range(cfg.n_bins):
            m = bins == b
            per_bin.append(dict(zip(("mean", "lo", "hi"), cluster_bootstrap_mean(delta[m], ctx[m], n_boot=cfg.n_boot,
                                                                                  seed=cfg.seed))))
        hi_m, lo_m = bins == cfg.n_bins - 1, bins == 0
        # most- minus least-surprising bin, paired by context (difference of per-context means)
        diff = _bin_difference(delta, ctx, hi_m, lo_m, cfg)
        res["alphas"][alpha] = {"overall": dict(zip(("mean", "lo", "hi"), cluster_bootstrap_mean(
            delta, ctx, n_boot=cfg.n_boot, seed=cfg.seed))), "bins": per_bin, "top_minus_bottom": diff}
    res["verdict"] = _verdict(res, cfg)
    res["timings"] = {"total_s": time.perf_counter() - t0}
    write_json_atomic(out / "results.json", res)
    _write_report(res, out)
    return res


def _bin_difference(delta, ctx, a_mask, b_mask, cfg) -> dict:
    ids = np.unique(ctx)
    va = np.array([delta[a_mask & (ctx == c)].mean() if (a_mask & (ctx == c)).any() else np.nan for c in ids])
    vb = np.array([delta[b_mask & (ctx == c)].mean() if (b_mask & (ctx == c)).any() else np.nan for c in ids])
    ok = ~np.isnan(va) & ~np.isnan(vb)
    m, lo, hi = cluster_bootstrap_mean(va[ok] - vb[ok], ids[ok], n_boot=cfg.n_boot, seed=cfg.seed)
    return {"mean": m, "lo": lo, "hi": hi}


def _verdict(res: dict, cfg) -> dict:
    best = min(res["alphas"], key=lambda a: res["alphas"][a]["bins"][-1]["mean"])
    r = res["alphas"][best]
    top, bottom, d = r["bins"][-1], r["bins"][0], r["top_minus_bottom"]
    helps = top["hi"] < 0
    most = d["hi"] < 0
    lines = [f"α = {a:g}: Δloss overall {v['overall']['mean']:+.4f} nats; most-surprising fifth "
             f"{v['bins'][-1]['mean']:+.4f} [{v['bins'][-1]['lo']:+.4f}, {v['bins'][-1]['hi']:+.4f}], least-surprising "
             f"fifth {v['bins'][0]['mean']:+.4f}" for a, v in res["alphas"].items()]
    if helps and most:
        head = (f"SUPPORTED: re-injecting the true token's embedding at layers {res['layers']} lowers the loss on the "
                f"following token most where that token was surprising (α = {best:g}: {top['mean']:+.4f} nats "
                f"[{top['lo']:+.4f}, {top['hi']:+.4f}] in the most-surprising fifth vs {bottom['mean']:+.4f} in the "
                f"least; difference {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]).")
    else:
        head = (f"NOT SUPPORTED: at the best α ({best:g}) re-injection changes the loss on the following token by "
                f"{top['mean']:+.4f} [{top['lo']:+.4f}, {top['hi']:+.4f}] nats where the token was most surprising "
                f"and {bottom['mean']:+.4f} where least (difference {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]).")
    return {"headline": head, "criteria": lines, "best_alpha": best, "supported": bool(helps and most)}


def _write_report(res: dict, out: Path) -> Path:
    import matplotlib.pyplot as plt

    from ..report import Report

    cfg = res["config"]
    rep = Report(f"True-token re-injection — {res['model']}")
    rep.heading("Verdict")
    rep.text(res["verdict"]["headline"])
    for line in res["verdict"]["criteria"]:
        rep.text(line)
    rep.text(f"Teacher-forced over {cfg['contexts']} contexts × {cfg['context_length']} tokens; the embedding of token p "
             f"is added (× α) to the residual at layers {res['layers']} at position p; Δ = loss on token p+1 with minus "
             f"without. Bins: fifths of token p's surprisal under the clean model (edges "
             f"{', '.join(f'{e:.2f}' for e in res['bin_edges'])} nats). Clean loss {res['clean_loss']:.3f} nats.")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    centers = np.arange(cfg["n_bins"])
    for a, v in res["alphas"].items():
        m = [b["mean"] for b in v["bins"]]
        err = np.array([[b["mean"] - b["lo"], b["hi"] - b["mean"]] for b in v["bins"]]).T
        ax.errorbar(centers, m, yerr=err, marker="o", capsize=3, label=f"α = {float(a):g}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xticks=centers, xticklabels=[f"Q{i + 1}" for i in centers], xlabel="surprisal of the re-injected token "
           "(fifths, low → high)", ylabel="Δ loss on the following token [nats]")
    ax.legend(fontsize=8)
    rep.figure(fig, "reinject.png", "Change in next-token loss from re-injecting the true token's embedding, by how "
               "surprising that token was (95% CIs over contexts)")
    rep.table(["α", "overall Δ", *[f"Q{i + 1}" for i in range(cfg["n_bins"])], "Q5 − Q1", "95% CI"],
              [[f"{float(a):g}", v["overall"]["mean"], *[b["mean"] for b in v["bins"]], v["top_minus_bottom"]["mean"],
                f"{v['top_minus_bottom']['lo']:+.4f} to {v['top_minus_bottom']['hi']:+.4f}"] for a, v in res["alphas"].items()])
    rep.reproduce("reinject", cfg)
    return rep.save(out)

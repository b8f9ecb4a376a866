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

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import SuperposError
from ..results import Interval
from ..stats import cluster_interval
from .configs import ReinjectConfig
from .results import AlphaEffect, ReinjectResult


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


def run_reinject(cfg: ReinjectConfig) -> ReinjectResult:
    """Δ loss on token p+1 when token p's embedding is re-injected at p, by surprisal of token p."""
    from .opening import open_experiment
    from .reports.reinject import write_report
    from .verdicts import reinject as verdict

    t0 = time.perf_counter()
    out, lm, tokens = open_experiment(cfg)
    n = lm.n_layers
    # not layer n: the final residual goes straight to the unembedding, where (with tied embeddings) adding the
    # current token's embedding just votes for repeating it
    layers = cfg.layers or list(range(max(1, (3 * n) // 4), n, 2))
    lm.check_layers(layers)
    clean = teacher_forced_losses(lm, tokens, [], 0.0)  # clean[:, p] = loss predicting token p+1
    # token p's surprisal = clean loss at p-1; the following token's loss = loss at p; p from 1 (not BOS)
    surprisal = clean[:, :-1]
    ctx = np.repeat(np.arange(len(tokens)), surprisal.shape[1])
    edges = np.quantile(surprisal, np.linspace(0, 1, cfg.n_bins + 1))
    bins = np.clip(np.searchsorted(edges, surprisal.reshape(-1), side="right") - 1, 0, cfg.n_bins - 1)
    res = ReinjectResult(config=cfg, model=lm.name, layers=layers, clean_loss=float(clean[:, 1:].mean()),
                         bin_edges=edges.tolist(), alphas={})
    for alpha in tqdm(cfg.alphas, desc="alpha", file=sys.stderr):
        delta = (teacher_forced_losses(lm, tokens, layers, alpha) - clean)[:, 1:].reshape(-1)
        per_bin = [cluster_interval(delta[bins == b], ctx[bins == b], n_boot=cfg.n_boot, seed=cfg.seed)
                   for b in range(cfg.n_bins)]
        # most- minus least-surprising bin, paired by context (difference of per-context means)
        diff = _bin_difference(delta, ctx, bins == cfg.n_bins - 1, bins == 0, cfg)
        res.alphas[alpha] = AlphaEffect(overall=cluster_interval(delta, ctx, n_boot=cfg.n_boot, seed=cfg.seed),
                                        bins=per_bin, top_minus_bottom=diff)
    res.verdict = verdict(res)
    res.timings["total_s"] = time.perf_counter() - t0
    res.save(out)
    write_report(res, out)
    return res


def _bin_difference(delta, ctx, a_mask, b_mask, cfg) -> Interval:
    ids = np.unique(ctx)
    va = np.array([delta[a_mask & (ctx == c)].mean() if (a_mask & (ctx == c)).any() else np.nan for c in ids])
    vb = np.array([delta[b_mask & (ctx == c)].mean() if (b_mask & (ctx == c)).any() else np.nan for c in ids])
    ok = ~np.isnan(va) & ~np.isnan(vb)
    return cluster_interval(va[ok] - vb[ok], ids[ok], n_boot=cfg.n_boot, seed=cfg.seed)

"""True-token re-injection, as the seed means it: late layers hold the model's guesses, so where the true token
was surprising they may have lost track of it; moving late residuals back toward the true token's own
representation might help the prediction that follows.

* **Premise test**: each token's representation at a layer is its mean residual there over separate reference
  contexts (``token_means``). A position's input token is *decodable* at a layer when the nearest representation
  (cosine, after removing the layer's mean) is its own. Decodability by surprisal fifths and layer: does it fall
  late for surprising tokens more than right after the first block? Layer 0 is the calibration point: there the
  representation is the embedding itself.
* **Interpolation** (``interpolation``): at the chosen layers, ``r ← (1−w)·r + w·‖r‖·t̂`` where t̂ is the unit
  target of the position's input token — its mean residual at that layer, or its input embedding. w = 0 leaves
  every forward bit-identical (tested); w = 1 replaces. It acts in every forward, teacher-forced or incremental
  with a KV cache (``generate``, ``cached_losses``).
* ``run_reinject``: the premise, then Δ loss on the following token by surprisal fifths for every target × w;
  the setting is chosen on half of the evaluation contexts and judged on the other half. Reading in docs/probes.md.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from superpos.errors import ConfigError, SuperposError
from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.hypotheses.reinject.result import AlphaEffect, CachedCheck, Premise, ReinjectResult, ReinjectSample
from superpos.hypotheses.token_table import decodable, token_means
from superpos.stats import Band, cluster_interval, per_context_difference


@contextlib.contextmanager
def interpolation(lm, layers, weight: float, targets_LRD: torch.Tensor, index_V: torch.Tensor):
    """Inside the block, every forward moves the residual at ``layers`` (1..n_layers) toward the norm-matched
    target of each position's input token: ``lerp(r, ‖r‖·t/‖t‖, weight)``; tokens without a target row are left
    alone. ``weight = 0`` changes nothing, bit for bit."""
    layers = lm.check_layers(layers)
    if 0 in layers:
        raise SuperposError("re-injection layers start at 1 (layer 0 already is the embedding)")
    targets = targets_LRD.to(lm.device)
    index = index_V.to(lm.device)
    state: dict = {}

    def record(module, args, out):
        state["rows"] = index[args[0]]  # (B, T): this forward's input tokens' target rows

    def move(resid, j):
        rows = state["rows"]
        t = targets[j][rows.clamp_min(0)].to(resid.dtype)
        t = t * (resid.norm(dim=-1, keepdim=True) / t.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return torch.lerp(resid, torch.where((rows >= 0)[..., None], t, resid), weight)

    handle = lm.model.get_input_embeddings().register_forward_hook(record)
    try:
        with contextlib.ExitStack() as stack:
            for j, layer in enumerate(layers):
                stack.enter_context(lm.splice(layer, lambda r, j=j: move(r, j)))
            yield
    finally:
        handle.remove()


def generate(lm, prompt_ids, max_new_tokens: int = 32, intervention=None, temperature: float = 0.0,
             seed: int = 0) -> list[int]:
    """Continue ``prompt_ids`` (KV-cached ``generate``) inside ``intervention`` (a context manager, or None)."""
    ids = torch.as_tensor(np.asarray(prompt_ids, dtype=np.int64))[None].to(lm.device)
    torch.manual_seed(seed)
    with torch.inference_mode(), intervention or contextlib.nullcontext():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                                top_k=None, top_p=None, pad_token_id=lm.tokenizer.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def teacher_forced_losses(lm, tokens_NC: np.ndarray, intervention=None, batch_size: int = 8) -> np.ndarray:
    """(N, C-1) next-token losses, whole windows at once, inside ``intervention`` (None: the clean model)."""
    out = []
    with torch.inference_mode(), intervention or contextlib.nullcontext():
        for i in range(0, len(tokens_NC), batch_size):
            tok = torch.from_numpy(tokens_NC[i:i + batch_size].astype(np.int64)).to(lm.device)
            logits = lm.model(tok).logits[:, :-1].float()
            out.append(F.cross_entropy(logits.transpose(1, 2), tok[:, 1:], reduction="none").cpu().numpy())
    return np.concatenate(out)


def cached_losses(lm, tokens_T: np.ndarray, intervention=None) -> np.ndarray:
    """(T-1,) next-token losses fed one token at a time with a KV cache — the sampler's loop, on known text."""
    import inspect

    tok = torch.from_numpy(np.asarray(tokens_T, dtype=np.int64)).to(lm.device)
    # transformers ≥ 5.2x names the KV cache ``cache`` (``past_key_values`` is deprecated); older ones only know the latter
    name = "cache" if "cache" in inspect.signature(lm.model.forward).parameters else "past_key_values"
    past, losses = None, []
    with torch.inference_mode(), intervention or contextlib.nullcontext():
        for p in range(len(tok) - 1):
            out = lm.model(tok[None, p:p + 1], **{name: past}, use_cache=True)
            past = getattr(out, name)
            losses.append(F.cross_entropy(out.logits[0, -1].float()[None], tok[p + 1:p + 2]).item())
    return np.array(losses)


def _effect(delta, ctx, bins, cfg) -> AlphaEffect:
    per_bin = [cluster_interval(delta[bins == b], ctx[bins == b], n_boot=cfg.n_boot, seed=cfg.seed)
               for b in range(cfg.n_bins)]
    diff, ids = per_context_difference(delta, ctx, bins == cfg.n_bins - 1, bins == 0)
    return AlphaEffect(overall=cluster_interval(delta, ctx, n_boot=cfg.n_boot, seed=cfg.seed), bins=per_bin,
                       top_minus_bottom=cluster_interval(diff, ids, n_boot=cfg.n_boot, seed=cfg.seed))


def _premise(lm, table, ev, layers, decode_layers, bins, ctx, cfg) -> Premise:
    """Decodability of the input token by layer and surprisal fifth, from the residuals of the evaluation
    contexts at positions 1..T-2 (those with a surprisal and a following token)."""
    N, T = ev.shape
    with torch.inference_mode(), lm.capture(decode_layers) as acts:
        parts: dict[int, list[np.ndarray]] = {layer: [] for layer in decode_layers}
        for i in range(0, N, 8):
            tok = torch.from_numpy(ev[i:i + 8].astype(np.int64))
            lm.model(tok.to(lm.device))
            for layer in decode_layers:
                x = acts[layer][:, 1:T - 1].reshape(-1, lm.d_model).cpu()
                parts[layer].append(decodable(table, x, tok[:, 1:T - 1].reshape(-1), layer))
    right = {layer: np.concatenate(v) for layer, v in parts.items()}
    scored = ~np.isnan(right[decode_layers[0]])
    by_bin, gaps, gap_per_ctx = {}, [], {}
    for layer in decode_layers:
        v = right[layer]
        by_bin[layer] = [cluster_interval(v[scored & (bins == b)], ctx[scored & (bins == b)], n_boot=cfg.n_boot,
                                          seed=cfg.seed) for b in range(cfg.n_bins)]
        d, ids = per_context_difference(v, ctx, scored & (bins == cfg.n_bins - 1), scored & (bins == 0))
        gap_per_ctx[layer] = dict(zip(ids.tolist(), d))
        gaps.append(cluster_interval(d, ids, n_boot=cfg.n_boot, seed=cfg.seed))
    # late gap minus the gap right after the first block, paired by context
    common = sorted(set.intersection(*(set(gap_per_ctx[layer]) for layer in [1, *layers])))
    dd = np.array([np.mean([gap_per_ctx[layer][c] for layer in layers]) - gap_per_ctx[1][c] for c in common])
    return Premise(layers=decode_layers, coverage=float(scored.mean()),
                   decodable={layer: Band.of(by_bin[layer]) for layer in decode_layers}, gap=Band.of(gaps),
                   late_minus_early=cluster_interval(dd, np.array(common), n_boot=cfg.n_boot, seed=cfg.seed))


def run(cfg: ReinjectConfig) -> ReinjectResult:
    """The premise test, then Δ loss on token p+1 when the residual at p moves toward token p's representation."""
    from superpos.hypotheses.common import open_experiment

    if cfg.contexts < 4:
        raise ConfigError("contexts", "{field} must be at least 4 (half choose the setting, half judge it)")
    out, lm, tokens = open_experiment(replace(cfg, contexts=cfg.contexts + cfg.reference_contexts))
    ref, ev = tokens[:cfg.reference_contexts], tokens[cfg.reference_contexts:]
    n = lm.n_layers
    # not layer n: the final residual goes straight to the unembedding
    layers = lm.check_layers(cfg.layers or list(range(max(1, (3 * n) // 4), n, 2)))
    if 0 in layers:
        raise ConfigError("layers", "{field} start at 1 (layer 0 already is the embedding)")
    decode_layers = sorted(set(range(0, n + 1, 2)) | set(layers) | {1})
    table = token_means(lm, ref, decode_layers, cfg.min_count)
    clean = teacher_forced_losses(lm, ev)  # clean[:, p] = loss predicting token p+1
    # token p's surprisal = clean loss at p-1; the following token's loss = loss at p; p = 1 .. T-2
    surprisal = clean[:, :-1].reshape(-1)
    ctx = np.repeat(np.arange(len(ev)), clean.shape[1] - 1)
    edges = np.quantile(surprisal, np.linspace(0, 1, cfg.n_bins + 1))
    bins = np.clip(np.searchsorted(edges, surprisal, side="right") - 1, 0, cfg.n_bins - 1)
    premise = _premise(lm, table, ev, layers, decode_layers, bins, ctx, cfg)

    select = np.isin(ctx, np.random.default_rng(cfg.seed).permutation(len(ev))[:len(ev) // 2])
    effects, deltas = {}, {}
    for target in cfg.targets:
        targets = table.targets(lm, target, layers)
        for w in tqdm(cfg.weights, desc=f"interpolate toward {target}", file=sys.stderr):
            with_w = teacher_forced_losses(lm, ev, interpolation(lm, layers, w, targets, table.index_V))
            key = f"{target} w={w:g}"
            deltas[key] = (with_w - clean)[:, 1:].reshape(-1)
            effects[key] = _effect(deltas[key], ctx, bins, cfg)
    chosen = min(deltas, key=lambda k: deltas[k][select & (bins == cfg.n_bins - 1)].mean())
    judged = _effect(deltas[chosen][~select], ctx[~select], bins[~select], cfg)

    target, w = chosen.split(" w=")
    # the null: the same move toward another token's representation (generic perturbation, no true token)
    null_targets = table.targets(lm, target, layers, shuffled=True)
    null = (teacher_forced_losses(lm, ev, interpolation(lm, layers, float(w), null_targets, table.index_V))
            - clean)[:, 1:].reshape(-1)
    effects[f"null: {chosen}"] = _effect(null, ctx, bins, cfg)
    top = ~select & (bins == cfg.n_bins - 1)
    vs_null = cluster_interval((deltas[chosen] - null)[top], ctx[top], n_boot=cfg.n_boot, seed=cfg.seed)

    def chosen_ctx():  # a fresh context manager for each use
        return interpolation(lm, layers, float(w), table.targets(lm, target, layers), table.index_V)

    short = ev[:4, :64]
    tf = teacher_forced_losses(lm, short, chosen_ctx())
    loop = np.stack([cached_losses(lm, row, chosen_ctx()) for row in short])
    cached = CachedCheck(contexts=len(short), tokens=int(short.shape[1]), max_abs_diff=float(np.abs(tf - loop).max()),
                         delta=float((loop - teacher_forced_losses(lm, short)).mean()))
    samples = []
    for row in ev[:cfg.samples]:
        prompt = row[:24]
        decode = lm.tokenizer.decode
        samples.append(ReinjectSample(prompt=decode(prompt), clean=decode(generate(lm, prompt)),
                                      intervened=decode(generate(lm, prompt, intervention=chosen_ctx()))))
    res = ReinjectResult(config=cfg, model=lm.name, layers=layers, clean_loss=float(clean[:, 1:].mean()),
                         bin_edges=edges.tolist(), premise=premise, effects=effects, chosen=chosen, judged=judged, vs_null=vs_null,
                         cached=cached, samples=samples)
    return res

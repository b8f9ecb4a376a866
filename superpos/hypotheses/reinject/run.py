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
* **Matched nulls**: any change that flattens the output lowers the loss where it was high and raises it where it
  was low, so each setting is set against two nulls that move the output distribution as much without the true
  token: the clean final logits divided by a temperature, and the same interpolation toward the layer's mean
  residual (``TokenTable.targets(averaged=True)``) with its final logits divided by a temperature. Each T is chosen
  within each surprisal fifth of each half so that the fifth's mean output entropy equals the setting's there
  (``temperature_sweep``, ``fifth_temperatures``): a setting that flattens mostly after surprising tokens meets a
  null that does the same. Both are compared with the true token within surprisal fifths and within token-frequency
  bands (``compare``).
* **Scored positions** (``split_positions``): positions 1..T-2 whose input token has a representation (the others
  are not moved, so they say nothing about the true token); surprisal fifths are fifths of them.
* ``run``: the premise (overall and within frequency bands), then Δ loss on the following token by surprisal
  fifths for every target × w and its matched nulls; the setting is chosen on half of the evaluation contexts and
  judged on the other half (``choose``, ``judge``: pure functions of per-position numbers, tested by hand); the
  KV-cached check is reconciled with the teacher-forced Δ position set by position set. Intervals resample
  contexts and are never narrower than the cluster t-interval (``interval``). Reading in docs/probes.md.
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from superpos.errors import ConfigError, SuperposError
from superpos.hypotheses.reinject.analysis import (
    TEMPERATURE_GRID,
    choose,
    context_interval,
    effect,
    fifth_temperatures,
    frequency_bands,
    interval,
    judge,
    late_minus_early,
    split_positions,
    within_bands,
)
from superpos.hypotheses.reinject.config import ReinjectConfig
from superpos.hypotheses.reinject.result import (
    CachedCheck,
    MatchedNull,
    Premise,
    Reconciliation,
    ReinjectResult,
    ReinjectSample,
)
from superpos.hypotheses.token_table import decodable, token_means
from superpos.stats import Band, per_context_difference


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


def next_token_stats(logits_BTV: torch.Tensor, targets_BT: torch.Tensor,
                     temperature_BT: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) loss on the next token and (B, T) entropy of the output distribution [nats]; with ``temperature_BT``
    each position's logits are divided by its temperature first (1 changes nothing, bit for bit)."""
    z = logits_BTV.float()
    if temperature_BT is not None:
        z = z / temperature_BT[..., None].to(z.dtype)
    logp = F.log_softmax(z, dim=-1)
    loss = -logp.gather(-1, targets_BT[..., None])[..., 0]
    return loss, -(logp.exp() * logp).sum(-1)


def _batches(tokens_NC: np.ndarray, batch_size: int, desc: str):
    """``tokens_NC`` in batches of ``batch_size`` contexts (int64 tensors on the CPU), behind a progress bar."""
    for i in tqdm(range(0, len(tokens_NC), batch_size), desc=desc, unit="batch", leave=False, file=sys.stderr):
        yield i, torch.from_numpy(tokens_NC[i:i + batch_size].astype(np.int64))


def teacher_forced(lm, tokens_NC: np.ndarray, intervention=None, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(N, C-1) next-token losses and (N, C-1) output entropies, whole windows at once, inside ``intervention``
    (None: the clean model)."""
    loss, ent = [], []
    with torch.inference_mode(), intervention or contextlib.nullcontext():
        for _, tok in _batches(tokens_NC, batch_size, "teacher-forced"):
            tok = tok.to(lm.device)
            l_BT, h_BT = next_token_stats(lm.model(tok).logits[:, :-1], tok[:, 1:])
            loss.append(l_BT.cpu().numpy())
            ent.append(h_BT.cpu().numpy())
    return np.concatenate(loss), np.concatenate(ent)


def teacher_forced_losses(lm, tokens_NC: np.ndarray, intervention=None, batch_size: int = 8) -> np.ndarray:
    """(N, C-1) next-token losses, whole windows at once, inside ``intervention`` (None: the clean model)."""
    return teacher_forced(lm, tokens_NC, intervention, batch_size)[0]


def temperature_sweep(lm, tokens_NC: np.ndarray, temperatures_K, intervention=None,
                      batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(K, N, C-1) losses and entropies with the final logits divided by each temperature — a number for every
    position, or an (N, C-1) array giving each position its own (1 leaves a position as it was, bit for bit) —
    inside ``intervention`` (None: the clean model). One forward per batch serves every temperature."""
    temps = [np.asarray(t, dtype=np.float32) for t in temperatures_K]
    loss, ent = [[] for _ in temps], [[] for _ in temps]
    with torch.inference_mode(), intervention or contextlib.nullcontext():
        for i, tok in _batches(tokens_NC, batch_size, f"{len(temps)} temperatures"):
            tok = tok.to(lm.device)
            logits = lm.model(tok).logits[:, :-1]
            for k, t in enumerate(temps):
                t_BT = torch.from_numpy(np.broadcast_to(t if t.ndim == 0 else t[i:i + batch_size],
                                                        tok[:, 1:].shape).copy()).to(lm.device)
                l_BT, h_BT = next_token_stats(logits, tok[:, 1:], t_BT)
                loss[k].append(l_BT.cpu().numpy())
                ent[k].append(h_BT.cpu().numpy())
    return np.stack([np.concatenate(v) for v in loss]), np.stack([np.concatenate(v) for v in ent])


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


def _premise(lm, table, ev, layers, decode_layers, bins, bands, ctx, cfg) -> Premise:
    """Decodability of the input token by layer and surprisal fifth, from the residuals of the evaluation
    contexts at positions 1..T-2 (those with a surprisal and a following token); the late-minus-early gap also
    within each token-frequency band ``bands``, and with the bands' means removed (``within_bands``)."""
    N, T = ev.shape
    with torch.inference_mode(), lm.capture(decode_layers) as acts:
        parts: dict[int, list[np.ndarray]] = {layer: [] for layer in decode_layers}
        for _, tok in _batches(ev, 8, "premise: decodability by layer"):
            lm.model(tok.to(lm.device))
            for layer in decode_layers:
                x = acts[layer][:, 1:T - 1].reshape(-1, lm.d_model).cpu()
                parts[layer].append(decodable(table, x, tok[:, 1:T - 1].reshape(-1), layer))
    right = {layer: np.concatenate(v) for layer, v in parts.items()}
    scored = ~np.isnan(right[decode_layers[0]])
    top, bottom = scored & (bins == cfg.n_bins - 1), scored & (bins == 0)
    by_bin, gaps = {}, []
    for layer in decode_layers:
        v = right[layer]
        by_bin[layer] = [interval(v[scored & (bins == b)], ctx[scored & (bins == b)], cfg) for b in range(cfg.n_bins)]
        d, ids = per_context_difference(v, ctx, top, bottom)
        gaps.append(interval(d, ids, cfg))
    within = [late_minus_early(right, ctx, top & (bands == k), bottom & (bands == k), layers, cfg)
              for k in range(cfg.n_bands)]
    return Premise(layers=decode_layers, coverage=float(scored.mean()),
                   decodable={layer: Band.of(by_bin[layer]) for layer in decode_layers}, gap=Band.of(gaps),
                   late_minus_early=late_minus_early(right, ctx, top, bottom, layers, cfg),
                   within_bands=Band.of(within),
                   within=late_minus_early(within_bands(right, scored, bands, cfg.n_bands), ctx, top, bottom,
                                            layers, cfg))


def split_reference(packed, contexts: int, reference: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Evaluation contexts (the first ``contexts`` of ``packed``) and ``reference`` later contexts that read none
    of their documents, so a token's representation cannot carry what follows it in the very document judged;
    where the packing holds too few such contexts, the first later ones fill up. Returns (reference, evaluation,
    how many evaluation documents the reference contexts read)."""
    ev, doc = packed.tokens_NC[:contexts], packed.doc_NC
    judged = np.unique(doc[:contexts])
    later = np.arange(contexts, len(doc))
    apart = later[~np.isin(doc[later], judged).any(1)]
    rows = np.concatenate([apart, later[~np.isin(later, apart)]])[:reference]
    return packed.tokens_NC[np.sort(rows)], ev, int(np.isin(judged, doc[rows]).sum())


def reference_and_evaluation(lm, cfg: ReinjectConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """``split_reference`` on the corpus, packed until enough reference contexts lie apart from the evaluation
    contexts' documents (doubling the packed length), until the corpus ends, or until its last document is one the
    evaluation contexts read (nothing later can lie apart: a one-document corpus stops at once)."""
    from superpos.model.corpus import default_bos_id, load_corpus, pack_contexts

    corpus, bos = load_corpus(cfg.corpus), default_bos_id(lm.tokenizer)
    n = cfg.contexts + cfg.reference_contexts
    while True:
        packed = pack_contexts(lm.tokenizer, corpus, cfg.context_length, bos, max_tokens=n * cfg.context_length)
        if len(packed.tokens_NC) < cfg.contexts + 1:
            raise ConfigError("contexts", f"{{field}} plus reference contexts need more than the corpus's "
                                          f"{len(packed.tokens_NC)} contexts")
        ref, ev, shared = split_reference(packed, cfg.contexts, cfg.reference_contexts)
        last_judged = int(packed.doc_NC[-1, -1]) == len(corpus.texts) - 1 and \
            int(packed.doc_NC[-1, -1]) in packed.doc_NC[:cfg.contexts]
        if (shared == 0 and len(ref) == cfg.reference_contexts) or len(packed.tokens_NC) < n or last_judged:
            return ref, ev, shared
        n *= 2


def run(cfg: ReinjectConfig) -> ReinjectResult:
    """The premise test, then Δ loss on token p+1 when the residual at p moves toward token p's representation,
    against the deranged and the two matched nulls; the cached check reconciled with the teacher-forced Δ."""
    if cfg.contexts < 4:
        raise ConfigError("contexts", "{field} must be at least 4 (half choose the setting, half judge it)")
    from superpos.hypotheses.common import open_model

    out, lm = open_model(cfg)
    ref, ev, shared = reference_and_evaluation(lm, cfg)
    n = lm.n_layers
    # not layer n: the final residual goes straight to the unembedding
    layers = lm.check_layers(cfg.layers or list(range(max(1, (3 * n) // 4), n, 2)))
    if 0 in layers:
        raise ConfigError("layers", "{field} start at 1 (layer 0 already is the embedding)")
    decode_layers = sorted(set(range(0, n + 1, 2)) | set(layers) | {1})
    table = token_means(lm, ref, decode_layers, cfg.min_count)
    clean, clean_H = teacher_forced(lm, ev)  # clean[:, p] = loss predicting token p+1

    bands_all, band_edges = frequency_bands(table, ev[:, 1:-1].reshape(-1), cfg.n_bands)
    pos = split_positions(clean, bands_all, cfg)
    bins_all = np.full(len(bands_all), -1)
    bins_all[pos.scored] = pos.bins
    ctx_all = np.repeat(np.arange(len(ev)), clean.shape[1] - 1)
    premise = _premise(lm, table, ev, layers, decode_layers, bins_all, bands_all, ctx_all, cfg)

    top = pos.bins == cfg.n_bins - 1

    def selection_mean(h_NC):
        return pos.selection_mean(h_NC)

    def judging_fifths(h_NC):
        return pos.judging_fifths(h_NC, cfg.n_bins)

    # the temperature null's scan: the clean logits at every scanned temperature (one forward per batch)
    _, grid_H = temperature_sweep(lm, ev, TEMPERATURE_GRID)
    entropy, entropy_fifths = {"clean": selection_mean(clean_H)}, {"clean": judging_fifths(clean_H)}
    effects, deltas, full, matched, nulls, temp_T = {}, {}, {}, {}, {}, {}
    for target in cfg.targets:
        targets = table.targets(lm, target, layers)
        averaged = table.targets(lm, target, layers, averaged=True)
        for w in tqdm(cfg.weights, desc=f"interpolate toward {target} (and the layer mean)", file=sys.stderr):
            with_w, with_H = teacher_forced(lm, ev, interpolation(lm, layers, w, targets, table.index_V))
            key = f"{target} w={w:g}"
            full[key] = with_w - clean
            deltas[key] = pos.flat(full[key])
            entropy[key], entropy_fifths[key] = selection_mean(with_H), judging_fifths(with_H)
            effects[key] = effect(deltas[key], pos.ctx, pos.bins, cfg)
            # the layer-mean null: the same move toward the layer's mean residual, its logits then tempered within
            # each fifth to the setting's entropy
            _, m_grid_H = temperature_sweep(lm, ev, TEMPERATURE_GRID,
                                            interpolation(lm, layers, w, averaged, table.index_V))
            m_T, m_table = fifth_temperatures(TEMPERATURE_GRID, m_grid_H, with_H, pos, cfg)
            m_loss, m_H = temperature_sweep(lm, ev, [m_T], interpolation(lm, layers, w, averaged, table.index_V))
            m_delta = pos.flat(m_loss[0] - clean)
            nulls[key] = {"layer mean": m_delta}
            matched[key] = {"layer mean": MatchedNull(parameter=w, entropy=selection_mean(m_H[0]),
                                                      effect=effect(m_delta, pos.ctx, pos.bins, cfg),
                                                      temperatures=m_table, entropy_fifths=judging_fifths(m_H[0]))}
            temp_T[key] = fifth_temperatures(TEMPERATURE_GRID, grid_H, with_H, pos, cfg)

    # the temperature null: the clean logits at each setting's per-fifth temperatures (one forward per batch)
    keys = list(deltas)
    t_loss, t_H = temperature_sweep(lm, ev, [temp_T[k][0] for k in keys])
    for i, key in enumerate(keys):
        t_delta, t_table = pos.flat(t_loss[i] - clean), temp_T[key][1]
        nulls[key] = {"temperature": t_delta, **nulls[key]}
        matched[key] = {"temperature": MatchedNull(parameter=t_table[1][-1], entropy=selection_mean(t_H[i]),
                                                   effect=effect(t_delta, pos.ctx, pos.bins, cfg),
                                                   temperatures=t_table, entropy_fifths=judging_fifths(t_H[i])),
                        **matched[key]}

    chosen = choose(deltas, nulls, pos.select, top)
    target, w = chosen.split(" w=")
    # the deranged null: the same move toward another token's representation (generic perturbation, no true token)
    null_targets = table.targets(lm, target, layers, shuffled=True)
    null = pos.flat(teacher_forced_losses(lm, ev, interpolation(lm, layers, float(w), null_targets, table.index_V))
                    - clean)
    effects[f"null: {chosen}"] = effect(null, pos.ctx, pos.bins, cfg)
    judged, vs_null, vs_matched = judge(pos, deltas[chosen], nulls[chosen], null, cfg)

    def chosen_ctx():  # a fresh context manager for each use
        return interpolation(lm, layers, float(w), table.targets(lm, target, layers), table.index_V)

    short = ev[:4, :64]
    k_short, t_short = short.shape
    tf = teacher_forced_losses(lm, short, chosen_ctx())
    loop = np.stack([cached_losses(lm, row, chosen_ctx()) for row in short])
    clean_short = teacher_forced_losses(lm, short)
    cached = CachedCheck(contexts=k_short, tokens=t_short, max_abs_diff=float(np.abs(tf - loop).max()),
                         delta=float((loop - clean_short).mean()))
    # from the cached check's windows to the headline's position set, one step at a time (full[:, p]: the Δ loss
    # at position p, predicting token p+1; a causal model's first t tokens read the same in a longer window)
    d, T = full[chosen], ev.shape[1]
    steps = {
        f"KV-cached loop: contexts 1–{k_short}, positions 0–{t_short - 2}": context_interval(loop - clean_short, cfg),
        "teacher-forced: the same windows and positions": context_interval(tf - clean_short, cfg),
        f"the same contexts, position 0 left out (1–{t_short - 2})": context_interval(d[:k_short, 1:t_short - 1], cfg),
        f"every evaluation context, positions 1–{t_short - 2}": context_interval(d[:, 1:t_short - 1], cfg)}
    if T > t_short:  # the windows are longer than the cached check's
        steps[f"every evaluation context, positions {t_short - 1}–{T - 2}"] = context_interval(d[:, t_short - 1:], cfg)
        steps[f"every evaluation context, positions 1–{T - 2}"] = context_interval(d[:, 1:], cfg)
    steps[f"positions 1–{T - 2} whose input token has a representation (the overall Δ)"] = context_interval(
        d[:, 1:], cfg, pos.scored.reshape(len(ev), -1))
    reconcile = Reconciliation(steps=steps)
    samples = []
    for row in ev[:cfg.samples]:
        prompt = row[:24]
        decode = lm.tokenizer.decode
        samples.append(ReinjectSample(prompt=decode(prompt), clean=decode(generate(lm, prompt)),
                                      intervened=decode(generate(lm, prompt, intervention=chosen_ctx()))))
    return ReinjectResult(config=cfg, model=lm.name, layers=layers, shared_documents=shared, reference_read=len(ref), clean_loss=float(clean[:, 1:].mean()),
                          bin_edges=pos.edges, premise=premise, effects=effects, chosen=chosen, judged=judged,
                          vs_null=vs_null, cached=cached, samples=samples, entropy=entropy, matched=matched,
                          vs_matched=vs_matched, band_edges=band_edges, reconcile=reconcile,
                          entropy_fifths=entropy_fifths)

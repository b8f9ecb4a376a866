"""An in-memory sample of residual-stream rows at every layer, taken straight from a model run.

Experiments that need *all* layers at a few thousand positions (lenses, repurposing, probes) use this
instead of a store: running the model costs less than writing 31 layers to disk.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from superpos.errors import SuperposError


@dataclass
class ResidualSample:
    """Residuals at ``layers`` for positions (ctx_P, pos_P) of ``tokens_NC``."""

    resid_LPD: torch.Tensor  # float32, (len(layers), P, D), on the CPU
    layers: list[int]
    tokens_NC: np.ndarray
    ctx_P: np.ndarray
    pos_P: np.ndarray

    @property
    def n_positions(self) -> int:
        """Number of sampled positions."""
        return len(self.ctx_P)

    def at(self, layer: int) -> torch.Tensor:
        """(P, D) residual at one residual layer."""
        return self.resid_LPD[self.layers.index(layer)]

    @property
    def token_P(self) -> np.ndarray:
        """The input token at each position."""
        return self.tokens_NC[self.ctx_P, self.pos_P]

    @property
    def next_P(self) -> np.ndarray:
        """The true next token (positions are drawn so that there always is one)."""
        return self.tokens_NC[self.ctx_P, self.pos_P + 1]

    def offset_tokens(self, offset: int) -> np.ndarray:
        """Token at pos + offset, or -1 where that falls outside the context."""
        p = self.pos_P + offset
        ok = (p >= 0) & (p < self.tokens_NC.shape[1])
        out = np.full(len(p), -1, dtype=np.int64)
        out[ok] = self.tokens_NC[self.ctx_P[ok], p[ok]]
        return out

    def recent_tokens(self, k: int) -> np.ndarray:
        """(P, k) tokens at positions pos-k+1 .. pos (-1 before the context start)."""
        return np.stack([self.offset_tokens(-i) for i in range(k)], axis=1)

    def subset(self, mask_P: np.ndarray) -> "ResidualSample":
        """The sample restricted to the positions ``idx``."""
        idx = np.flatnonzero(mask_P)
        return ResidualSample(self.resid_LPD[:, torch.from_numpy(idx)], self.layers, self.tokens_NC,
                              self.ctx_P[idx], self.pos_P[idx])

    def split_contexts(self, train_frac: float, seed: int = 0) -> tuple["ResidualSample", "ResidualSample"]:
        """Split by whole contexts (no context on both sides): (train, held-out)."""
        ctx = np.unique(self.ctx_P)
        rng = np.random.default_rng(seed)
        n_train = min(len(ctx) - 1, max(1, int(round(train_frac * len(ctx)))))
        if n_train < 1:
            raise SuperposError("need at least 2 contexts to split into train and held-out")
        train_ctx = rng.permutation(ctx)[:n_train]
        mask = np.isin(self.ctx_P, train_ctx)
        return self.subset(mask), self.subset(~mask)


def sample_residuals(lm, tokens_NC: np.ndarray, per_context: int, layers=None, seed: int = 0, batch_size: int = 8,
                     min_pos: int = 1, max_offset: int = 1, progress: bool = True) -> ResidualSample:
    """Run ``lm`` over ``tokens_NC`` and keep ``per_context`` random positions of every context at ``layers``.

    Positions are drawn from ``min_pos .. C-1-max_offset`` so that the next ``max_offset`` tokens exist
    (position 0, the attention sink, is left out by default). Hooks already installed on the model
    (``lm.splice``) act as usual, which is how the controls of the experiments are built.
    """
    tokens_NC = np.asarray(tokens_NC)
    N, C = tokens_NC.shape
    layers = lm.check_layers(range(lm.n_layers + 1) if layers is None else layers)
    lo, hi = min_pos, C - max_offset
    if hi - lo < 1:
        raise SuperposError(f"contexts of {C} tokens are too short to sample positions {lo}..{C - 1 - max_offset}")
    k = min(per_context, hi - lo)
    rng = np.random.default_rng(seed)
    pos_NK = np.stack([np.sort(rng.choice(np.arange(lo, hi), size=k, replace=False)) for _ in range(N)])
    out = torch.empty(len(layers), N * k, lm.d_model, dtype=torch.float32)
    bar = tqdm(total=N, desc="residuals", unit="ctx", file=sys.stderr, disable=not progress)
    with torch.inference_mode(), lm.capture(layers) as acts:
        for i in range(0, N, batch_size):
            tok = torch.from_numpy(tokens_NC[i:i + batch_size].astype(np.int64)).to(lm.device)
            lm.model(tok)
            rows = torch.arange(len(tok))[:, None].expand(-1, k).reshape(-1)
            cols = torch.from_numpy(pos_NK[i:i + len(tok)]).reshape(-1)
            for j, layer in enumerate(layers):
                out[j, i * k:(i + len(tok)) * k] = acts[layer][rows.to(lm.device), cols.to(lm.device)].float().cpu()
            bar.update(len(tok))
    bar.close()
    return ResidualSample(out, layers, tokens_NC, np.repeat(np.arange(N), k), pos_NK.reshape(-1))


def packed_from_corpus(lm, corpus: str | None, contexts: int, context_length: int):
    """``contexts`` packed contexts (BOS + text) of the corpus, as the experiments read them, with the document of
    every token (``PackedContexts``)."""
    from superpos.model.corpus import default_bos_id, load_corpus, pack_contexts

    packed = pack_contexts(lm.tokenizer, load_corpus(corpus), context_length, default_bos_id(lm.tokenizer),
                           max_tokens=contexts * context_length)
    if len(packed.tokens_NC) < 2:
        raise SuperposError("need at least 2 contexts (more --contexts or a larger corpus)")
    return packed


def contexts_from_corpus(lm, corpus: str | None, contexts: int, context_length: int) -> np.ndarray:
    """``contexts`` packed contexts (BOS + text) of the corpus, as the experiments read them."""
    return packed_from_corpus(lm, corpus, contexts, context_length).tokens_NC

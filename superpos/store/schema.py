"""The store's schema: its constants, dataset names and attribute checksum.

ActivationStore: residual-stream activations in one HDF5 file per harvest run.

Schema (version 1, documented in docs/store.md)::

    /acts/L{layer}   (n_rows, d_model) float16|float32, chunked by rows, compressed
    /tokens          (n_rows,) int32    token id at this position
    /doc             (n_rows,) int32    document index within the corpus
    /pos             (n_rows,) int32    position within the context (0 = BOS / attention sink)
    /next_logprob    (n_rows,) float32  model log-prob of the actual next token (NaN at the last position)
    /next_rank       (n_rows,) int32    rank of the actual next token (0 = top-1; -1 at the last position)
                                        (these two only in stores harvested with --token-stats)
    attrs: schema_version, superpos_version, model, model_revision, d_model, n_model_layers, layers,
           dtype, layer_dtypes, token_stats, corpus, corpus_sha256, context_length, bos_token_id, n_rows_total,
           n_rows_complete, attrs_sha256, content_sha256 (once complete)

Rows ``[0, n_rows_complete)`` are complete. The counter is advanced only after those rows are
flushed to disk, so a crash never exposes half-written rows and a resumed harvest continues from it.

Nothing is stored that the file cannot hold: ``write_rows`` takes float32 rows, refuses NaN/inf and values
beyond the layer's storage dtype before anything is written, and only then casts. Readers refuse a layer
that holds non-finite values anyway (a store from elsewhere, or older than this check) with one line.
``attrs_sha256`` covers every attribute but the row counter, so damaged metadata is refused, not read.
"""
from __future__ import annotations

import hashlib

import numpy as np

STORAGE_DTYPES = ("float16", "float32")

SCHEMA_VERSION = 1
ROW_FIELDS = {"tokens": np.int32, "doc": np.int32, "pos": np.int32, "next_logprob": np.float32, "next_rank": np.int32}
TOKEN_STATS = ("next_logprob", "next_rank")  # the row fields that need the LM head: only with token_stats


def present_fields(token_stats: bool) -> dict:
    """The row fields a store holds: all of ``ROW_FIELDS``, or all but ``TOKEN_STATS``."""
    return {k: v for k, v in ROW_FIELDS.items() if token_stats or k not in TOKEN_STATS}
REQUIRED_ATTRS = ("schema_version", "model", "d_model", "layers", "dtype", "context_length", "n_rows_total",
                  "n_rows_complete")
DEFAULT_CHUNK_BYTES = 1 << 20
LIVE_RETRIES = 40  # × 50 ms: how long a live reader waits out a writer's flush
DEFAULT_MIX_ROWS = 32768

AUTO_HEADROOM = 2  # --dtype auto: float16 only where the calibration batch peaks at most half float16's max


def layer_key(layer: int) -> str:
    """The HDF5 path of a layer's activations."""
    return f"acts/L{int(layer)}"


def attrs_digest(attrs) -> str:
    """sha256 over every attribute except the row counter and the digest itself (names and values)."""
    h = hashlib.sha256()
    for key in sorted(k for k in attrs.keys() if k not in ("n_rows_complete", "attrs_sha256")):
        v = attrs[key]
        v = v.tolist() if isinstance(v, np.ndarray) else v
        h.update(repr((key, v.decode() if isinstance(v, bytes) else v)).encode())
    return h.hexdigest()


def nonfinite_index(rows: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``rows`` (n × d) holding NaN or inf."""
    return np.flatnonzero(~np.isfinite(rows).all(axis=1))

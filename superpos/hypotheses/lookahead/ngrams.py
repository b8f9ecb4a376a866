"""N-gram counts for the lookahead baselines: how often each probed class came ``offset`` positions after each
history of the last m tokens (m = 0 .. order − 1), counted on whole token rows with numpy.

Two read-outs of one table:

* ``counts`` gives, per queried position and history length m, the counts over the classes ``(P, M, K)``: the
  n-gram *features* of the nested lookahead probe. ``exclude_own=True`` subtracts what the position's own row
  contributed (leave-one-context-out), or, given ``unit_NC``, what every token of the position's own unit (its
  document) contributed as a target, for positions whose rows were counted (the probe's training positions), so
  that no position's features have seen its own target.

Tokens written as -1 are left out of a count: never a target, and no history that holds one is counted (a table
that must not see some documents is counted on rows where their tokens are -1).
* ``predict`` is the back-off guess: the most frequent class after the longest history that was seen (ties go to
  the lower id), backing off to shorter histories and finally to the most frequent class; the floor a lookahead
  probe for i + k (k > 1) is shown against.
"""
from __future__ import annotations

import numpy as np

BASE = 2 ** 20  #: token ids are digits of this base in a history key (any vocabulary up to about a million)


def history_keys(tokens_NC: np.ndarray, m: int) -> np.ndarray:
    """(N, C) int64 key of the ``m`` tokens ending at each position (exact: base-``BASE`` digits, so keys of any two
    token arrays agree); -1 where the history would start before the row. ``m = 0`` is the empty history (key 0)."""
    tokens_NC = np.asarray(tokens_NC, dtype=np.int64)
    if m * 20 >= 63 or (tokens_NC.size and (tokens_NC.max() >= BASE or tokens_NC.min() < 0)):
        raise ValueError(f"histories of {m} tokens with ids in [0, {BASE}) are needed for 64-bit keys")
    key = np.zeros(tokens_NC.shape, dtype=np.int64)
    C = tokens_NC.shape[1]
    for j in range(m):  # add the token at pos - j
        key[:, j:] = key[:, j:] * BASE + tokens_NC[:, :C - j]
    key[:, :max(m - 1, 0)] = -1
    return key


class NgramCounts:
    """``fit(tokens_NC)`` counts, ``counts(...)`` and ``predict(...)`` read the counts at positions of other rows.

    Parameters
    ----------
    order:
        The longest history is ``order - 1`` tokens (an ``order``-gram).
    offset:
        The target is the token ``offset`` positions after the history's last token.
    classes:
        Sorted token ids; only targets among them are counted (every count vector has one entry per class).
    """

    def __init__(self, order: int, offset: int, classes: np.ndarray):
        if order < 1 or offset < 1:
            raise ValueError("order and offset must be at least 1")
        self.order, self.offset = order, offset
        self.classes = np.asarray(classes, dtype=np.int64)
        if len(self.classes) == 0 or np.any(np.diff(self.classes) <= 0):
            raise ValueError("classes must be sorted, distinct and not empty")

    @property
    def n_classes(self) -> int:
        """K, the length of every count vector."""
        return len(self.classes)

    def _pairs(self, tokens_NC: np.ndarray, m: int, target_ok_NC: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """(history keys, class columns) of every counted (history, target) pair of the rows (only targets where
        ``target_ok_NC`` is true, when given)."""
        tokens_NC = np.atleast_2d(np.asarray(tokens_NC, dtype=np.int64))
        C = tokens_NC.shape[1]
        if C <= self.offset:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys = self._keys(tokens_NC, m)[:, :C - self.offset].ravel()
        y = tokens_NC[:, self.offset:].ravel()
        col = np.minimum(np.searchsorted(self.classes, y), self.n_classes - 1)
        ok = (keys >= 0) & (self.classes[col] == y)
        if target_ok_NC is not None:
            ok &= np.atleast_2d(target_ok_NC)[:, self.offset:].ravel()
        return keys[ok], col[ok]

    def _keys(self, tokens_NC: np.ndarray, m: int) -> np.ndarray:
        """History keys; -1 where the history starts before the row or holds a left-out token (-1)."""
        if not m:
            return np.zeros(tokens_NC.shape, np.int64)
        keys = history_keys(np.where(tokens_NC >= 0, tokens_NC, 0), m)
        before = np.pad(np.cumsum(tokens_NC < 0, axis=1), ((0, 0), (1, 0)))  # left-out tokens before each position
        end = np.arange(tokens_NC.shape[1])
        held = before[:, end + 1] - before[:, np.maximum(end - m + 1, 0)]  # ... among the history's m tokens
        return np.where(held > 0, -1, keys)

    def fit(self, tokens_NC: np.ndarray, target_ok_NC: np.ndarray | None = None) -> "NgramCounts":
        """Count every (history, target) pair of the rows of ``tokens_NC`` (histories never cross a row start nor
        hold a left-out token; with ``target_ok_NC``, only targets where it is true)."""
        self.tables_ = []
        self.n_tokens_ = int((np.asarray(tokens_NC) >= 0).sum())
        for m in range(self.order):
            keys, col = self._pairs(tokens_NC, m, target_ok_NC)
            hist, inv = np.unique(keys, return_inverse=True)
            pair, n = np.unique(inv.astype(np.int64) * self.n_classes + col, return_counts=True)
            self.tables_.append((hist, pair // self.n_classes, pair % self.n_classes, n))
        if len(self.tables_[0][3]) == 0:
            raise ValueError("no training targets to count")
        return self

    def _lookup(self, table, q_keys: np.ndarray) -> np.ndarray:
        """(len(q_keys), K) counts after each queried history (0 for unseen ones)."""
        hist, h_idx, col, n = table
        out = np.zeros((len(q_keys), self.n_classes), dtype=np.float32)
        if len(hist) == 0 or len(q_keys) == 0:
            return out
        uq, inv = np.unique(q_keys, return_inverse=True)
        at = np.minimum(np.searchsorted(hist, uq), len(hist) - 1)
        seen_u = np.where(hist[at] == uq, at, -1)  # table index of each distinct queried history, or -1
        u_of_hist = np.full(len(hist), -1, dtype=np.int64)
        u_of_hist[seen_u[seen_u >= 0]] = np.flatnonzero(seen_u >= 0)
        u = u_of_hist[h_idx]
        keep = u >= 0
        dense = np.zeros((len(uq), self.n_classes), dtype=np.float32)
        np.add.at(dense, (u[keep], col[keep]), n[keep])
        return dense[inv]

    def counts(self, tokens_NC: np.ndarray, ctx_P: np.ndarray, pos_P: np.ndarray, exclude_own: bool = False,
               counted_NC: np.ndarray | None = None, unit_NC: np.ndarray | None = None) -> np.ndarray:
        """(P, order, K) counts over the classes after the last m tokens up to each position (m = 0 .. order−1).

        ``exclude_own``: subtract what the position's own unit contributed to the table as targets (those rows must
        have been among the fitted ones): without ``unit_NC`` the unit is the position's row of ``tokens_NC``
        (leave-one-context-out); with it (a unit id per token, e.g. its document), every token of the position's
        unit, in any row. ``counted_NC``: the rows as they were counted (left-out tokens -1; default
        ``tokens_NC``).
        """
        tokens_NC, ctx_P, pos_P = np.asarray(tokens_NC), np.asarray(ctx_P), np.asarray(pos_P)
        out = np.zeros((len(ctx_P), self.order, self.n_classes), dtype=np.float32)
        for m, table in enumerate(self.tables_):
            q = self._keys(tokens_NC, m)[ctx_P, pos_P]
            out[:, m] = self._lookup(table, q)
            out[q < 0, m] = 0
        if not exclude_own:
            return out
        counted = tokens_NC if counted_NC is None else np.asarray(counted_NC)
        unit = np.broadcast_to(np.arange(len(tokens_NC))[:, None], tokens_NC.shape) if unit_NC is None else unit_NC
        unit_P = unit[ctx_P, pos_P]
        for u in np.unique(unit_P):
            rows = np.flatnonzero(unit_P == u)
            ctxs = np.flatnonzero((unit == u).any(1))
            own = NgramCounts(self.order, self.offset, self.classes)
            if not len(own._pairs(counted[ctxs], 0, unit[ctxs] == u)[0]):
                continue
            own.fit(counted[ctxs], unit[ctxs] == u)
            out[rows] -= own.counts(tokens_NC, ctx_P[rows], pos_P[rows])
        return out

    def predict(self, tokens_NC: np.ndarray, ctx_P: np.ndarray, pos_P: np.ndarray,
                order: int | None = None) -> np.ndarray:
        """The back-off guess of the token ``offset`` after each position, with histories of at most
        ``order - 1`` tokens (default: this table's order)."""
        n = self.counts(tokens_NC, ctx_P, pos_P)
        return backoff_guess(n, self.classes, order or self.order)


def backoff_guess(counts_PMK: np.ndarray, classes: np.ndarray, order: int) -> np.ndarray:
    """The most frequent class after the longest seen history of at most ``order - 1`` tokens (ties: lower id)."""
    n = counts_PMK[:, :order]
    seen = n.sum(-1) > 0  # (P, M)
    longest = np.where(seen.any(1), n.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1), 0)
    return np.asarray(classes)[n[np.arange(len(n)), longest].argmax(-1)]

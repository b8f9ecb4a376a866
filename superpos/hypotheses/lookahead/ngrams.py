"""Back-off n-gram predictors: the most frequent token ``offset`` positions after the last ``order - 1`` tokens,
counted on training contexts, backing off to shorter histories (and finally to the most frequent token) when a
history was never seen. The context-aware baseline a lookahead probe has to beat."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


class BackoffNgram:
    """``fit(tokens_NC)`` counts, ``predict(tokens_NC, ctx_P, pos_P)`` guesses the token at pos + offset.

    ``classes``: only targets among these are counted (the guess is always one of them); ties go to the lower id.
    """

    def __init__(self, order: int, offset: int = 1, classes: np.ndarray | None = None):
        if order < 1 or offset < 1:
            raise ValueError("order and offset must be at least 1")
        self.order, self.offset, self.classes = order, offset, classes

    def fit(self, tokens_NC: np.ndarray) -> "BackoffNgram":
        tokens_NC = np.asarray(tokens_NC)
        keep = None if self.classes is None else set(np.asarray(self.classes).tolist())
        counts: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in range(self.order)]
        for row in tokens_NC.tolist():
            for pos in range(len(row) - self.offset):
                y = row[pos + self.offset]
                if keep is not None and y not in keep:
                    continue
                for m in range(min(self.order - 1, pos + 1) + 1):  # history length m: tokens pos-m+1 .. pos
                    counts[m][tuple(row[pos - m + 1:pos + 1])][y] += 1
        self.table_ = [{h: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for h, c in level.items()}
                       for level in counts]
        if not self.table_[0]:
            raise ValueError("no training targets to count")
        return self

    def predict(self, tokens_NC: np.ndarray, ctx_P: np.ndarray, pos_P: np.ndarray) -> np.ndarray:
        tokens_NC = np.asarray(tokens_NC)
        out = np.empty(len(ctx_P), dtype=np.int64)
        for p, (c, pos) in enumerate(zip(np.asarray(ctx_P).tolist(), np.asarray(pos_P).tolist())):
            row = tokens_NC[c]
            for m in range(min(self.order - 1, pos + 1), -1, -1):
                guess = self.table_[m].get(tuple(row[pos - m + 1:pos + 1].tolist()))
                if guess is not None:
                    out[p] = guess
                    break
        return out

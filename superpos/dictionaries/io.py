"""Save / load dictionaries: superpos folders (``folder``) of any registered kind, and other toolkits' folders
(``external``)."""
from __future__ import annotations

import os
from pathlib import Path

from superpos.dictionaries.folder import CONFIG, WEIGHTS, read_dictionary, save_dictionary
from superpos.errors import SuperposError

__all__ = ["CONFIG", "load_dictionary", "save_dictionary"]  # the folder format itself: ``folder``


def _kinds():
    from superpos.dictionaries.kinds import KINDS

    return KINDS


def load_dictionary(path: str | os.PathLike, device: str = "auto", hookpoint: str | None = None):
    """Load a dictionary folder as the right estimator class: a superpos folder, a SAELens folder, an EleutherAI
    sparsify folder (``cfg.json`` + ``sae.safetensors``) or a sparsify run's folder of hookpoint subfolders
    (``hookpoint`` names one; without it the folder must hold exactly one). Anything unexpected in the folder — a
    missing or extra key or tensor, a value of the wrong type, weights that do not fit the config, a folder of none
    of these formats — is refused in one line (``SuperposError``)."""
    from superpos.dictionaries.external import load_external

    path = Path(path)
    if not path.is_dir():
        raise SuperposError(f"dictionary folder {path} does not exist" if not path.exists() else
                            f"{path} is not a dictionary folder (not a folder)")
    if hookpoint is not None or not (path / CONFIG).exists():
        return load_external(path, device=device, hookpoint=hookpoint)
    if not (path / WEIGHTS).exists():
        raise SuperposError(f"{path} is missing its weights ({WEIGHTS})")
    return read_dictionary(path, _kinds(), device=device)

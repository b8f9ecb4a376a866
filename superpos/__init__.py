"""superpos: sparse dictionaries over transformer residual streams, and experiments on superposition.

The public names load lazily, so that ``python -m superpos --help`` (and a Ctrl-C during start-up)
does not wait for torch and transformers.
"""
__version__ = "0.1.0"

from superpos.errors import SuperposError

__all__ = ["ActivationStore", "LoadedModel", "SuperposError", "__version__", "load_dictionary", "load_model"]

_LAZY = {"ActivationStore": ".store", "LoadedModel": ".model.load", "load_model": ".model.load",
         "load_dictionary": ".dictionaries"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'superpos' has no attribute {name!r}")

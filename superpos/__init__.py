"""superpos: sparse dictionaries over transformer residual streams, and experiments on superposition."""
__version__ = "0.1.0"

from .errors import SuperposError  # noqa: E402
from .models import LoadedModel, load_model  # noqa: E402
from .store import ActivationStore  # noqa: E402

__all__ = ["__version__", "SuperposError", "LoadedModel", "load_model", "ActivationStore"]

"""ActivationStore: residual-stream activations in one HDF5 file per harvest run (schema in ``schema.py`` and
docs/store.md). ``reader`` opens and reads, ``writer`` lays out and appends, ``stream`` shuffles for training,
``check`` verifies contents."""
from superpos.store.reader import ActivationStore
from superpos.store.schema import (
                     AUTO_HEADROOM,
                     DEFAULT_MIX_ROWS,
                     ROW_FIELDS,
                     SCHEMA_VERSION,
                     STORAGE_DTYPES,
                     attrs_digest,
                     layer_key,
)
from superpos.store.stream import _to_device
from superpos.store.writer import check_representable, check_space, choose_dtypes, repair_eof, stored_eof

__all__ = ["ActivationStore", "AUTO_HEADROOM", "DEFAULT_MIX_ROWS", "ROW_FIELDS", "SCHEMA_VERSION", "STORAGE_DTYPES",
           "attrs_digest", "check_representable", "check_space", "choose_dtypes", "layer_key", "repair_eof",
           "stored_eof", "_to_device"]

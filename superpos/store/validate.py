"""Checking a store's contents: rows holding NaN/inf, and every dataset against its recorded sha256."""
from __future__ import annotations

import numpy as np

from superpos.errors import SuperposError
from superpos.store.schema import layer_key, nonfinite_index


class StoreChecker:
    """``ActivationStore``'s content checks (mixed into it)."""

    def _check_finite(self, rows: np.ndarray, layer: int, row_ids=None) -> np.ndarray:
        """Refuse (one line) rows of ``layer`` that hold NaN/inf; return them unchanged otherwise."""
        if rows.size and not np.isfinite(rows).all():
            bad = int(nonfinite_index(rows)[0])
            where = f"row {int(row_ids[bad]):,}" if row_ids is not None else "a row"
            raise SuperposError(f"{self.path}: layer {layer} holds NaN/inf values ({where}); they cannot be used for "
                                f"training or statistics — `superpos info {self.path}` lists them; re-harvest with "
                                f"--dtype auto")
        return rows

    def nonfinite_rows(self, layer: int, block_rows: int = 1 << 16) -> np.ndarray:
        """Indices of complete rows of ``layer`` holding NaN or inf (a full read of the layer)."""
        ds = self.file[layer_key(self.check_layer(layer))]
        self._check_live(ds)
        bad = [start + nonfinite_index(ds[start:min(start + block_rows, self.n_rows)])
               for start in range(0, self.n_rows, block_rows)]
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)

    def _scan(self, block_rows: int = 1 << 16) -> tuple[dict[str, str], dict[int, np.ndarray]]:
        """One pass over every dataset's complete rows: their sha256, and each layer's rows holding NaN/inf."""
        import hashlib

        digests, bad = {}, {}
        try:  # every object of the file, as plain h5py readers walk it, not only the datasets superpos reads
            if self.complete:  # (a partial store may have a writer moving its metadata under a live reader)
                self.file.visititems(lambda name, obj: None)
        except (KeyError, OSError, RuntimeError, ValueError) as e:
            raise SuperposError(f"{self.path}: its HDF5 structure is damaged ({' '.join(str(e).split())[:100]})") from None
        n = self.n_rows
        for layer, name in [*((x, layer_key(x)) for x in self.layers), *((None, f) for f in self.row_fields)]:
            ds = self.file[name]
            self._check_live(ds)
            h, rows = hashlib.sha256(), []
            try:
                for start in range(0, n, block_rows):
                    a = ds[start:min(start + block_rows, n)]
                    h.update(np.ascontiguousarray(a).tobytes())
                    if layer is not None:
                        rows.append(start + nonfinite_index(a))
            except OSError as e:
                raise SuperposError(f"{self.path}: dataset '/{name}' is unreadable (a damaged chunk: "
                                    f"{' '.join(str(e).split())[:100]})") from None
            digests[name] = h.hexdigest()
            if layer is not None and rows and sum(map(len, rows)):
                bad[layer] = np.concatenate(rows)
        return digests, bad

    def scan_text(self) -> str:
        """``info``'s full check: every chunk read (Fletcher-32 verified), the contents against ``content_sha256``
        when the harvest recorded it, and the non-finite rows of each layer."""
        import json

        digests, bad = self._scan() if self.n_rows else ({}, {})
        sealed = self.file.attrs.get("content_sha256")
        if sealed is not None and self.complete:
            damaged = sorted(k for k, v in json.loads(sealed).items() if digests.get(k) != v)
            if damaged:
                raise SuperposError(f"{self.path}: '/{damaged[0]}' does not match the checksum recorded when the store "
                                    f"was finished ({len(damaged)} dataset(s) damaged)")
        if not bad:
            check = ", contents match their checksums" if sealed is not None and self.complete else ""
            return f"non-finite     none (all {self.n_rows:,} rows × {len(self.layers)} layers read{check})"
        parts = [f"L{layer}: {len(rows):,} rows (first {int(rows[0]):,})" for layer, rows in bad.items()]
        return ("non-finite     " + "; ".join(parts) + " — NOT USABLE for training or statistics; re-harvest with "
                "--dtype auto")

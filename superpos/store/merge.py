"""Join the shard files of a sharded harvest into one store, with HDF5 virtual datasets (no copy).

Each dataset of the merged file is a virtual dataset that maps rows [o_i, o_i + n_i) onto shard i's
dataset. Readers (h5py, superpos) see one ordinary store; the shards must stay where they are (paths
are stored relative to the merged file when the shards sit beside it, absolute otherwise).
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from superpos.errors import SuperposError
from superpos.store import ROW_FIELDS, ActivationStore, attrs_digest, layer_key
from superpos.writelock import claim

SAME = ("model", "model_revision", "corpus_sha256", "context_length", "dtype", "bos_token_id", "d_model",
        "n_contexts_all", "token_stats", "model_dtype")


def merge_shards(shards, out) -> Path:
    """Write the merged store ``out`` from the shard files (one writer per output: claimed while merging)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise SuperposError(f"--out folder {out.parent} does not exist")
    with claim(out, "merge"):
        return _merge(shards, out)


def _merge(shards, out: Path) -> Path:
    if out.exists():
        raise SuperposError(f"--out {out} exists; merge writes a new file")
    if not out.parent.is_dir():
        raise SuperposError(f"--out folder {out.parent} does not exist")
    infos = []
    for path in map(Path, shards):
        with ActivationStore(path) as st:
            a = st.attrs
            if "shard" not in a:
                raise SuperposError(f"{path} is not a shard (harvest it with --shard I/N)")
            if not st.complete:
                raise SuperposError(f"shard {path} is incomplete ({st.n_rows:,} of {st.n_rows_total:,} rows); "
                                    f"finish it by re-running its harvest command")
            i, n = (int(v) for v in str(a["shard"]).split("/"))
            infos.append({"path": path.resolve(), "i": i, "n": n, "rows": st.n_rows, "attrs": a,
                          "layers": st.layers, "first": int(a["first_context"]), "dtypes": st.layer_dtypes})
    n = infos[0]["n"]
    got = sorted(info["i"] for info in infos)
    if any(info["n"] != n for info in infos) or got != list(range(n)):
        raise SuperposError(f"need each of the shards 0..{n - 1} exactly once, got {got} "
                            f"(of {sorted({info['n'] for info in infos})} shards)")
    infos.sort(key=lambda info: info["i"])
    ref = infos[0]
    for info in infos[1:]:
        for key in SAME:
            if str(info["attrs"].get(key)) != str(ref["attrs"].get(key)):
                raise SuperposError(f"{info['path']} and {ref['path']} are shards of different harvests ({key})")
        if info["layers"] != ref["layers"]:
            raise SuperposError(f"{info['path']} and {ref['path']} hold different layers")
        if info["dtypes"] != ref["dtypes"]:
            raise SuperposError(f"{info['path']} and {ref['path']} store layers in different dtypes "
                                f"({info['dtypes']} vs {ref['dtypes']})")
    C = int(ref["attrs"]["context_length"])
    expect = 0
    for info in infos:  # the shards must tile the contexts in order
        if info["first"] != expect:
            raise SuperposError(f"shard {info['i']} starts at context {info['first']}, expected {expect}")
        expect += info["rows"] // C
    total = sum(info["rows"] for info in infos)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with h5py.File(infos[0]["path"], "r") as f0, h5py.File(tmp, "w") as g:
            names = [layer_key(layer) for layer in ref["layers"]] + [f for f in ROW_FIELDS if f in f0]
            for name in names:
                ds = f0[name]
                layout = h5py.VirtualLayout(shape=(total, *ds.shape[1:]), dtype=ds.dtype)
                offset = 0
                for info in infos:
                    src = _source_name(info["path"], out)
                    layout[offset:offset + info["rows"]] = h5py.VirtualSource(src, name, shape=(info["rows"], *ds.shape[1:]))
                    offset += info["rows"]
                g.create_virtual_dataset(name, layout)
            for k, v in f0.attrs.items():
                if k not in ("shard", "first_context"):
                    g.attrs[k] = v
            g.attrs["n_rows_total"] = total
            g.attrs["merged_from"] = np.array([str(_source_name(info["path"], out)) for info in infos], dtype=h5py.string_dtype())
            g.attrs["attrs_sha256"] = attrs_digest(g.attrs)
            g.attrs["n_rows_complete"] = total
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SuperposError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def _source_name(shard: Path, out: Path) -> str:
    """Relative to the merged file's folder when the shard lives there or below, else absolute."""
    rel = os.path.relpath(shard, out.resolve().parent)
    return rel if not rel.startswith("..") else str(shard)

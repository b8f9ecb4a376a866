"""Check a store against an independent forward pass: every stored layer equals what plain `transformers` computes
on the stored tokens (no superpos code in the forward: the GGUF loaded with `from_pretrained(..., gguf_file=...)`,
residual layer l < n read from `output_hidden_states`, layer n from a hook on the last block, since Hugging Face's
last hidden state has the final norm applied).

    python -m superpos harvest --model gemma3-270m --tokens 4096 --out g.h5
    python scripts/check_harvest.py g.h5

Prints, per layer, the largest |stored − forward| relative to the largest |forward| over all stored contexts
(0 for float32 layers; float16 rounding, ≤ 2⁻¹¹ ≈ 4.9e-4, for float16 ones) and exits 1 if any layer is further off.
"""
import sys
import time

import h5py
import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main(path: str) -> int:
    from superpos.model.files import KNOWN_MODELS, known_gguf_path  # only to find the file the store was made from

    t0 = time.perf_counter()
    f = h5py.File(path, "r")
    spec = f.attrs["model_spec"]
    if spec not in KNOWN_MODELS and spec != "default":
        print(f"check_harvest: store made from {spec}; this check knows {', '.join(KNOWN_MODELS)}", file=sys.stderr)
        return 2
    gguf = known_gguf_path() if spec == "default" else known_gguf_path(spec)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32).eval()
    blocks = model.model.layers
    n = len(blocks)
    T = int(f.attrs["context_length"])
    tokens = f["tokens"][:int(f.attrs["n_rows_complete"])].astype(np.int64).reshape(-1, T)
    last = {}
    blocks[-1].register_forward_hook(lambda m, i, o: last.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    worst: dict[int, float] = {}
    with torch.no_grad():
        for c in range(len(tokens)):
            hs = model(torch.from_numpy(tokens[c:c + 1]), output_hidden_states=True).hidden_states
            for name in f["acts"]:
                layer = int(name[1:])
                ref = (last["x"] if layer == n else hs[layer])[0].numpy()
                got = f["acts"][name][c * T:(c + 1) * T].astype(np.float32)
                worst[layer] = max(worst.get(layer, 0.0), float(np.abs(got - ref).max() / np.abs(ref).max()))
    dtypes = dict(zip(map(int, f.attrs["layers"]), f.attrs["layer_dtypes"])) if "layer_dtypes" in f.attrs else {}
    for layer, err in sorted(worst.items()):
        print(f"layer {layer:>2} ({dtypes.get(layer, '?')}): max |stored - forward| / max |forward| = {err:.1e}")
    print(f"{len(tokens)} contexts of {T} tokens, {f.attrs['model']}, {time.perf_counter() - t0:.0f} s")
    return 0 if max(worst.values()) <= 2 ** -11 else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))

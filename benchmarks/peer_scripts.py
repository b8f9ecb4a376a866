"""The training script each peer toolkit runs in its own venv (``peers.py`` starts them): ``COMMON`` reads the
rows, batches them in the same order for every toolkit and times the training steps; ``SCRIPTS[module]`` trains
with that toolkit's own optimizer, schedule and initialisation, and prints one JSON line (tokens/s, held-out FVU,
training time, the FVU curve; with ``eval_typical``, the FVU on those rows too) after saving the decoder."""

COMMON = '''
import json, sys, time
import numpy as np, torch
torch.manual_seed(0)
cfg = json.loads(sys.argv[1])
x = np.load(cfg["train"], mmap_mode="r"); ev = torch.from_numpy(np.load(cfg["eval"]))
B, D, F, k = cfg["batch"], x.shape[1], cfg["n_latents"], cfg["k"]
steps = cfg["tokens"] // B
def batches():
    g = np.random.default_rng(0)
    while True:
        perm = g.permutation(len(x))
        for i in range(0, len(x) - B + 1, B):
            yield torch.from_numpy(np.ascontiguousarray(x[np.sort(perm[i:i + B])]))
ev_typical = torch.from_numpy(np.load(cfg["eval_typical"])) if cfg.get("eval_typical") else None
def fvu(recon, ev=ev):
    with torch.no_grad():
        return float(sum((ev[i:i + 4096] - recon(ev[i:i + 4096])).pow(2).sum() for i in range(0, len(ev), 4096))
                     / (ev - ev.mean(0)).pow(2).sum())
class Clock:
    """Wall time of the training steps only (data loading and evaluations left out)."""
    def __init__(self): self.train_s, self.curve = 0.0, []
    def step(self, fn, s):
        t0 = time.perf_counter(); fn(); dt = time.perf_counter() - t0
        if s >= 2: self.train_s += dt  # the first two steps pay for allocation
    def report(self, recon, decoder_FD):
        np.save(cfg["decoder_out"], decoder_FD.detach().float().cpu().numpy())
        typical = {} if ev_typical is None else {"fvu_typical": fvu(recon, ev_typical)}
        print(json.dumps({"tokens_per_s": B * (steps - 2) / self.train_s, "fvu": fvu(recon), "train_s": self.train_s,
                          "curve": self.curve, **typical}))
clock = Clock()
'''

SCRIPTS = {
    "sparsify": COMMON + '''
from schedulefree import ScheduleFreeWrapper
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.sign_sgd import SignSGD
sae = SparseCoder(D, SparseCoderConfig(num_latents=F, k=k), torch.device("cpu"), dtype=torch.float32)
opt = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=5e-3 / (F / 2**14) ** 0.5)]), momentum=0.95)
opt.train()
it = batches()
every = max(1, steps // cfg.get("curve_points", 1))
for s in range(steps):
    xb = next(it)
    if s == 0:
        sae.b_dec.data = xb.mean(0)
    def step():
        sae.set_decoder_norm_to_unit_norm()
        out = sae(xb)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step(); opt.zero_grad()
    clock.step(step, s)
    if (s + 1) % every == 0 or s + 1 == steps:
        opt.eval(); clock.curve.append([clock.train_s, fvu(lambda v: sae(v).sae_out), (s + 1) * B]); opt.train()
opt.eval()
clock.report(lambda v: sae(v).sae_out, sae.W_dec)
''',
    "dictionary_learning": COMMON + '''
from dictionary_learning.trainers.top_k import TopKTrainer
tr = TopKTrainer(steps=steps, activation_dim=D, dict_size=F, k=k, layer=0, lm_name="bench",
                 warmup_steps=min(1000, max(1, steps // 10)), device="cpu", seed=0)
it = batches()
for s in range(steps):
    xb = next(it)
    clock.step(lambda: tr.update(s, xb), s)
clock.report(lambda v: tr.ae(v), tr.ae.decoder.weight.T)
''',
    "sae_lens": COMMON + '''
import dataclasses
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens.config import SAETrainerConfig
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=F, k=k, device="cpu"))
lr = {f.name: f.default for f in dataclasses.fields(SAETrainerConfig)}["lr"]
# its defaults; lr_end is what its runner config's post-init sets (lr / 10)
tcfg = SAETrainerConfig(total_training_samples=steps * B, train_batch_size_samples=B, device="cpu", lr_end=lr / 10)
trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=batches())
it = batches()
for s in range(steps):
    xb = next(it)
    def step():  # what SAETrainer.fit does per step (no logging, no checkpoints)
        trainer.maybe_reset_sparsity()
        trainer.step(xb)
        trainer.n_training_steps += 1
    clock.step(step, s)
clock.report(lambda v: sae(v), sae.W_dec)
''',
}

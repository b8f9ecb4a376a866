"""Memory per rank for training a sparse autoencoder: ``superpos plan``.

Data parallelism replicates the whole model on every rank, so the per-rank memory does not shrink
with more ranks (only the batch per rank does). For a TopK SAE with D = d_model, F = latents, k
active, b = rows per rank, in bytes:

* parameters W_enc (D×F), W_dec (F×D), b_enc (F), b_dec (D): P = 2DF + F + D values, stored in fp32
  (mixed precision keeps fp32 master weights);
* gradients P and Adam's two moments 2P, fp32;
* activations: the encoder pre-activations b×F (compute dtype, kept for the backward), the selection's
  temporary of the same size, the top-k values and indices b×k×(4 + 8), the input, reconstruction and
  its gradient 3×b×D, and the dense gradient of W_enc's matmul F×D (fp32);
* the store's batch in pinned host memory (b×D, storage dtype) is host memory, reported apart.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class MemoryPlan:
    """Predicted memory per rank for one TopK SAE training setup, by part."""
    d_model: int
    n_latents: int
    k: int
    batch_per_rank: int
    compute_dtype: str
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    host_batch: int

    @property
    def total(self) -> int:
        """Bytes in all."""
        return self.parameters + self.gradients + self.optimizer + self.activations

    def table(self) -> str:
        """The plan as a text table."""
        gib = 2 ** 30
        rows = [("parameters (fp32)", self.parameters), ("gradients (fp32)", self.gradients),
                ("Adam moments (fp32)", self.optimizer), (f"activations ({self.compute_dtype})", self.activations),
                ("total per rank (device)", self.total), ("batch in pinned host memory", self.host_batch)]
        head = (f"TopK SAE  d_model {self.d_model:,} × {self.n_latents:,} latents, k {self.k}, "
                f"{self.batch_per_rank:,} rows per rank")
        return "\n".join([head] + [f"  {name:<28} {v / gib:10.2f} GiB" for name, v in rows])

    def as_dict(self) -> dict:
        """The plan as a plain dict."""
        return {**asdict(self), "total": self.total}


def plan_memory(d_model: int, n_latents: int, k: int, batch: int, world_size: int = 1,
                compute_dtype: str = "float32", store_dtype: str = "float16") -> MemoryPlan:
    """Predicted device memory per rank for TopK SAE training (see the module docstring)."""
    if batch % world_size:
        raise ValueError(f"global batch {batch} is not divisible by {world_size} ranks")
    D, F, b = d_model, n_latents, batch // world_size
    c = BYTES[compute_dtype]
    P = 2 * D * F + F + D
    acts = 2 * b * F * c + b * k * (4 + 8) + 3 * b * D * 4 + F * D * 4
    return MemoryPlan(D, F, k, b, compute_dtype, 4 * P, 4 * P, 8 * P, acts, b * D * BYTES[store_dtype])

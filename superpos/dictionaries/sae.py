"""Sparse autoencoders: TopK, BatchTopK, JumpReLU and ReLU-L1, with one shared trainer
(``trainer.py``); one module per kind (``topk.py``, ``relu.py``, ``jumprelu.py``), gathered here.

Training happens on inputs scaled so that E‖x‖² = d_model (``normalize=True``); the scale is folded
into the weights when training ends, so a fitted SAE takes raw activations and its ``components_``
(the decoder rows) stay unit-norm. Conventions: ``W_enc_FD`` (latents × d_model),
``W_dec_FD`` = ``components_``, ``pre = (x − b_dec) W_encᵀ + b_enc``, ``x̂ = codes W_dec + b_dec``.
"""
from superpos.dictionaries.jumprelu import JumpReLUSAE
from superpos.dictionaries.relu import ReLUSAE
from superpos.dictionaries.sparse_ops import SparseCodes
from superpos.dictionaries.topk import BatchTopKSAE, TopKSAE
from superpos.dictionaries.train_run import CHECKPOINT, DEFAULT_LR, DENSE_FRACTION, geometric_median
from superpos.dictionaries.trainer import SparseAutoencoder

__all__ = ["SparseAutoencoder", "TopKSAE", "BatchTopKSAE", "ReLUSAE", "JumpReLUSAE", "SparseCodes", "geometric_median",
           "CHECKPOINT", "DEFAULT_LR", "DENSE_FRACTION"]

"""The dictionary kinds by name (``fit --kind``, saved folders' ``config.json``)."""
from .nmf import NMF, SemiNMF
from .pca import PCA
from .sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE

KINDS = {
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "relu": ReLUSAE,
    "nmf": NMF,
    "seminmf": SemiNMF,
    "pca": PCA,
}

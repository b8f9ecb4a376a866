"""The dictionary kinds by name (``fit --kind``, saved folders' ``config.json``)."""
from superpos.dictionaries.nmf import NMF, SemiNMF
from superpos.dictionaries.pca import PCA
from superpos.dictionaries.sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE

KINDS = {
    "topk": TopKSAE,
    "batchtopk": BatchTopKSAE,
    "jumprelu": JumpReLUSAE,
    "relu": ReLUSAE,
    "nmf": NMF,
    "seminmf": SemiNMF,
    "pca": PCA,
}

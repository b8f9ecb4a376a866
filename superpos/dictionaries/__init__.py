"""Dictionaries over activations, all following the scikit-learn estimator contract."""
from .base import BaseDictionary
from .io import load_dictionary, save_dictionary
from .kinds import KINDS
from .nmf import NMF, SemiNMF
from .pca import PCA
from .sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE

__all__ = ["BaseDictionary", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "ReLUSAE", "NMF", "SemiNMF", "PCA",
           "KINDS", "load_dictionary", "save_dictionary"]

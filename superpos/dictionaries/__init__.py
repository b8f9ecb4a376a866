"""Dictionaries over activations, all following the scikit-learn estimator contract."""
from superpos.dictionaries.base import BaseDictionary
from superpos.dictionaries.io import load_dictionary, save_dictionary
from superpos.dictionaries.kinds import KINDS
from superpos.dictionaries.nmf import NMF, SemiNMF
from superpos.dictionaries.pca import PCA
from superpos.dictionaries.sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE

__all__ = ["BaseDictionary", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE", "ReLUSAE", "NMF", "SemiNMF", "PCA",
           "KINDS", "load_dictionary", "save_dictionary"]

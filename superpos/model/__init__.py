"""The model layer: load a causal LM (known names, GGUF, local HF folder) in ``load``, the model files it fetches in
``files``, named corpora (``known_corpora``) and text files (``corpus``), residual sampling (``residuals``), and the
harvest of residuals into an activation store (``harvest``). Nothing is imported here, so the command line's
``--help`` does not wait for torch."""

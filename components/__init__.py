"""KFP v2 components of the token-classification package (one sub-package per component)."""

"""Finetune-as-PyTorchJob component (see component.py)."""

"""Finetune component (see component.py)."""

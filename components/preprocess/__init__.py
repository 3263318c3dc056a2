"""Preprocess component: CoNLL / JSON Lines -> tokenized, label-aligned splits (see component.py)."""

"""Predict component: a fine-tuned model + unlabelled data -> predictions JSON Lines (see component.py)."""

"""Evaluate component (see component.py)."""

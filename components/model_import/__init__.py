"""Model import component: a local HF / MLflow model -> model_selector_output (see component.py)."""

"""Model import component: a model from the hub, an object store, a PVC or an artifact -> model_selector_output (see component.py)."""

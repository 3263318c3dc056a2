"""Data import component: labelled data from a PVC, an object store or the hub -> data_output (see component.py)."""

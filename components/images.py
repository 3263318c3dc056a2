"""The one place where the container images of every component are named.

Override at compile time with the environment variables below (then re-run
`python scripts/compile_components.py`), e.g. to point at your own registry.
"""

import os

REGISTRY = os.environ.get("TOKCLS_IMAGE_REGISTRY", "ghcr.io/kfp-token-classification")
VERSION = os.environ.get("TOKCLS_IMAGE_TAG", "0.1.0")

# CPU image: preprocess, model import, evaluation, small fine-tunes.
TRAINER_CPU_IMAGE = os.environ.get("TOKCLS_TRAINER_CPU_IMAGE", f"{REGISTRY}/trainer-cpu:{VERSION}")
# CUDA image: GPU fine-tunes and the PyTorchJob workers.
TRAINER_CUDA_IMAGE = os.environ.get("TOKCLS_TRAINER_CUDA_IMAGE", f"{REGISTRY}/trainer-cuda:{VERSION}")

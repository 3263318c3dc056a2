"""Run the fine-tune as a Kubeflow Training Operator PyTorchJob (DeepSpeed across GPU nodes).

`launcher.launch.run_pytorchjob` is the entry point; see docs/distributed.md.
"""

from launcher.launch import LaunchConfigError, LaunchResult, run_pytorchjob
from launcher.watch import PyTorchJobFailed, PyTorchJobTimeout

__all__ = ["LaunchConfigError", "LaunchResult", "PyTorchJobFailed", "PyTorchJobTimeout", "run_pytorchjob"]

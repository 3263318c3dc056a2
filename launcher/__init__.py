"""Run the fine-tune as a distributed job: a Kubeflow Training Operator PyTorchJob or a Kubeflow Trainer v2 TrainJob.

`launcher.launch.launch(LaunchConfig, FinetuneConfig)` is the entry point; see docs/distributed.md.
"""

from launcher.cancel import Cancelled
from launcher.config import LaunchConfig
from launcher.launch import LaunchConfigError, LaunchOptions, LaunchResult
from launcher.watch import JobFailed, JobTimeout, PyTorchJobFailed, PyTorchJobTimeout

__all__ = ["Cancelled", "JobFailed", "JobTimeout", "LaunchConfig", "LaunchConfigError", "LaunchOptions",
           "LaunchResult", "PyTorchJobFailed", "PyTorchJobTimeout"]

"""Token-classification fine-tuning program: the code that runs inside the trainer container."""

from trainer.config import EvaluateConfig, FinetuneConfig, ModelImportConfig, PredictConfig, PreprocessConfig
from trainer.errors import ConfigError, InputError

__all__ = ["ConfigError", "EvaluateConfig", "FinetuneConfig", "InputError", "ModelImportConfig", "PredictConfig",
           "PreprocessConfig", "finetune"]


def finetune(config: FinetuneConfig, **kwargs):
    """Run one fine-tune (lazy import keeps `import trainer` light for KFP compile-time use)."""
    from trainer.finetune import finetune as _finetune

    return _finetune(config, **kwargs)

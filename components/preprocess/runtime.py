"""Body of the `preprocess` component."""

from __future__ import annotations

from collections import namedtuple


def run(**args):
    from components.runtime import config_from_args
    from trainer.config import PreprocessConfig
    from trainer.preprocess import preprocess

    config = config_from_args(PreprocessConfig, args)
    summary = preprocess(config)
    artifact = args["preprocess_output"]
    for key in ("train_size", "validation_size", "test_size", "num_labels", "model_name", "class_names", "tag_scheme",
                "rows", "split_sentences", "data_formats", "labels_not_in_train"):
        artifact.metadata[key] = summary[key]
    outputs = namedtuple("PreprocessOutputs", ["num_labels", "class_names", "train_size", "tag_scheme"])
    return outputs(summary["num_labels"], summary["class_names"], summary["train_size"], summary["tag_scheme"])

"""Data import: bring the labelled data from where it lives (a PVC, an object store, the hub) into a Dataset folder.

The output is what `preprocess` reads as `train_data`: a source folder's files as they are (train.*, optionally
validation.*/dev.* and test.*), or a single source file saved as `train<its suffix>` (preprocess then splits it).
Symbolic links are followed only inside the source (`trainer.input_tree`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from trainer.config import DataImportConfig
from trainer.errors import InputError
from trainer.input_tree import check_file, copy_tree
from trainer.publish import new_output_folder, publish_dir, staging_dir
from trainer.sources import Source, fetch, parse_source, workdir_beside
from trainer.validation import check_io

logger = logging.getLogger(__name__)


def data_import(config: DataImportConfig) -> dict:
    """Fetch `data_uri` into `data_output`; returns what was imported (files, provenance)."""
    check_io(config)  # inputs exist, outputs are writable and never inside an input or each other
    source = parse_source(config.data_uri, "data_uri", revision=config.data_revision,
                          s3_endpoint_url=config.s3_endpoint_url)
    out = Path(config.data_output)
    with new_output_folder(out, "data_output"):
        return _import(config, source, out)


def _import(config: DataImportConfig, source: Source, out: Path) -> dict:
    workdir = workdir_beside(out) if source.kind != "path" else None
    try:
        fetched = fetch(source, workdir or out.parent, hf_endpoint=config.hf_endpoint)
        stage = staging_dir(out)
        try:
            if fetched.path.is_file():
                real = check_file(fetched.path)
                name = f"train{fetched.path.suffix}"
                shutil.copy2(real, stage / name)
                files = [name]
            else:
                files = copy_tree(fetched.path, stage)
                if not files:
                    raise InputError(f"data_uri {config.data_uri} holds no files")
            publish_dir(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    logger.info("imported %s into %s: %s", config.data_uri, out, files)
    return {"files": files, **fetched.provenance}

"""Data import: bring the labelled data from where it lives (a PVC, an object store, the hub) into a Dataset folder.

The output is what `preprocess` reads as `train_data`: a source folder's files as they are (train.*, optionally
validation.*/dev.* and test.*; a hub dataset's `data/` folder, as `push_to_hub` writes it, is lifted to the top), or
a single source file saved as `train<its suffix>` (preprocess then splits it), `train.<detected format>` when its
suffix is not a data suffix preprocess looks for. A result in which preprocess would find no training file is refused
before it is published (what the files hold, preprocess checks). Symbolic links inside a source folder are followed
only inside it (`trainer.input_tree`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from trainer.config import DataImportConfig
from trainer.errors import InputError, preview
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
                name = f"train{_suffix(fetched.path, real, config.data_uri)}"
                shutil.copy2(real, stage / name)
            elif not copy_tree(fetched.path, stage):
                raise InputError(f"data_uri {config.data_uri} holds no files")
            _lift_hub_data_folder(stage)
            files = _check_train_split(stage, config.data_uri)
            publish_dir(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    logger.info("imported %s into %s: %s", config.data_uri, out, files)
    return {"files": files, **fetched.provenance}


def _suffix(shown: Path, real: Path, data_uri: str) -> str:
    """The suffix a single data file is saved with: its own when preprocess looks for it in a folder, else that of
    the format `trainer.readers` detects in its content (an extensionless `ner_train` holding CoNLL: `.conll`)."""
    from trainer.readers import DATA_SUFFIXES, detect_format

    if shown.suffix.lower() in DATA_SUFFIXES:
        return shown.suffix
    try:
        fmt = detect_format(real)
    except InputError as err:
        raise InputError(f"data_uri {data_uri}: {str(err).replace(str(real), 'the file')}") from None
    return ".arrow" if fmt == "hf" else f".{fmt}"


def _lift_hub_data_folder(stage: Path) -> None:
    """A hub dataset as `push_to_hub` writes it (README.md, data/train-00000-of-00001.parquet, ...): the files of
    `data/` move to the top, where preprocess looks, when the top holds no data file of its own."""
    from trainer.readers import DATA_SUFFIXES

    data = stage / "data"
    if not data.is_dir() or any(p.is_file() and p.suffix.lower() in DATA_SUFFIXES for p in stage.iterdir()):
        return
    if any((stage / p.name).exists() for p in data.iterdir()):
        return
    for item in data.iterdir():
        os.replace(item, stage / item.name)
    data.rmdir()


def _check_train_split(stage: Path, data_uri: str) -> list[str]:
    """The files of `stage`, once preprocess's own lookup (`trainer.readers.resolve_sources`) finds a train split in
    it; InputError naming what it found otherwise."""
    from trainer.readers import resolve_sources

    files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    try:
        resolve_sources(str(stage))
    except InputError as err:  # its message names our staging folder: name the source instead
        reason = str(err).replace(f" {stage}", "").replace(str(stage), "it")
        raise InputError(f"data_uri {data_uri} holds no training data preprocess can read: {reason}") from None
    return files

"""Reading JSON and JSON Lines input files; every error names the file (and line) and raises InputError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from trainer.errors import InputError


def read_json(path: str | Path) -> Any:
    """A JSON input file, or an InputError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text: {err}") from None


def iter_jsonl(path: str | Path, *, objects: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line; with `objects`, each value must be a JSON object."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as handle:  # a byte-order mark (Windows editors write one) is not data
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path} line {line_no}: not valid JSON ({err})") from None
                if objects and not isinstance(value, dict):
                    raise InputError(f"{path} line {line_no}: expected a JSON object, got {type(value).__name__}")
                yield line_no, value
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text: {err}") from None


def int_lists(row: dict, keys: Iterable[str], where: str) -> None:
    """Each of `keys` present in `row` is a list of integers (JSON numbers without a fraction, not booleans)."""
    for key in keys:
        value = row.get(key)
        if key in row and not (isinstance(value, list) and all(type(x) is int for x in value)):
            shown = type(value).__name__ if not isinstance(value, list) else \
                repr(next(x for x in value if type(x) is not int))
            raise InputError(f"{where}: {key} must be a list of integer ids, got {shown}; re-run preprocess")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write one JSON value per line (UTF-8, not ASCII-escaped); returns the number of rows."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count

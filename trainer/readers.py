"""Readers of labelled token-classification data: every format in, sentences of (words, tags) out.

- `conll`: one word per line, columns split by tabs (else spaces), a blank line between sentences, `-DOCSTART-`
  lines skipped; token and tag columns by index (auto: 0 and -1, the last), or by name when the first line names
  the columns (`# columns = word pos chunk ner`, or CoNLL-U Plus `# global.columns = ...` without an ID column).
- `conllu`: CoNLL-U, and CoNLL-U Plus (`# global.columns = ...` names the columns); comments, multi-word token
  ranges (`1-2`) and empty nodes (`1.1`) are skipped: the syntactic words carry the tags, as the format intends.
  Columns by name (auto: FORM and UPOS; XPOS, DEPREL, a `global.columns` name...), by index, or `misc:KEY` (the
  value of KEY=... in MISC, "O" where absent, e.g. `misc:NER`).
- `jsonl` (one object per line), `json` (an array of objects, or an object holding one), `csv`/`tsv` (a header
  row), `parquet` and `hf` (a `datasets` save_to_disk folder, Dataset or DatasetDict, or one of its Arrow files):
  one sentence per row with list cells (CSV cells: a JSON or Python list, or words separated by spaces), or one
  word per row with a sentence column (an empty sentence cell continues the sentence above). Columns by name,
  without case (auto: the first present of TOKEN_COLUMNS, TAG_COLUMNS, SENTENCE_COLUMNS). Parquet and Arrow are
  read with `datasets`; integer tags of a `ClassLabel` feature become its names.

The format is detected from the content (`detect_format`) unless given. Every malformed input raises one
InputError line naming the file, the line (or row) and what was expected.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from trainer.errors import InputError, preview
from trainer.jsonio import iter_jsonl, read_json

AUTO = "auto"
FORMATS = ("conll", "conllu", "jsonl", "json", "csv", "tsv", "parquet", "hf")
DATA_SUFFIXES = (".conll", ".conllu", ".conllup", ".txt", ".tsv", ".csv", ".iob", ".bio", ".iob2", ".bioes",
                 ".jsonl", ".ndjson", ".json", ".parquet", ".arrow")
TOKEN_COLUMNS = ("tokens", "words", "token", "word", "form")
TAG_COLUMNS = ("ner_tags", "tags", "labels", "ner", "tag", "label", "ner_tag", "pos_tags", "upos", "pos")
SENTENCE_COLUMNS = ("sentence_id", "sentence #", "sentence_idx", "sentence_index", "sentence_no", "sent_id")
CONLLU_COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
HF_MARKERS = ("dataset_dict.json", "state.json")
SPLIT_NAMES = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
               "test": ("test",)}
SHOWN = 80  # characters of an offending line shown in an error

Sentence = tuple[list[str], list[str]]


@dataclass(frozen=True)
class ReadOptions:
    """How to read a data set: its format and which columns hold the words, the tags and (one word per row) the
    sentence; "auto" everywhere by default."""

    data_format: str = AUTO
    token_column: str = AUTO
    tag_column: str = AUTO
    sentence_column: str = AUTO


@dataclass(frozen=True)
class Source:
    """Where one split comes from: data files (shards of one split are read in order), or a `datasets` folder and
    the split inside it."""

    paths: tuple[Path, ...]
    split: Optional[str] = None

    def __str__(self) -> str:
        names = ", ".join(p.name for p in self.paths)
        text = str(self.paths[0]) if len(self.paths) == 1 else f"{self.paths[0].parent}/{{{names}}}"
        return text + (f" [{self.split}]" if self.split else "")


@dataclass
class Corpus:
    """The sentences of one split, their tags as strings; `label_names`: the ClassLabel names (id order) when the
    data declared them; `format`, `columns`: what was read (for the record)."""

    sentences: list[Sentence]
    format: str
    columns: dict = field(default_factory=dict)
    label_names: Optional[list[str]] = None


# --------------------------------------------------------------------------------------------------
# Which files, which format
# --------------------------------------------------------------------------------------------------
def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in HF_MARKERS)


def hf_split_names(path: Path) -> list[str]:
    """The splits of a DatasetDict folder ([] for a single Dataset)."""
    marker = path / "dataset_dict.json"
    return list(read_json(marker).get("splits", [])) if marker.exists() else []


def _split_of(name: str, role: str) -> bool:
    """Whether a file stem names a split: train.conll, en_ewt-ud-train.conllu, train-00000-of-00002.parquet."""
    return any(part in SPLIT_NAMES[role] for part in re.split(r"[-_.]", name.lower()))


def _data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                  and ((p.is_file() and p.suffix.lower() in DATA_SUFFIXES) or is_hf_folder(p)))


def _folder_source(folder: Path, role: str) -> Source:
    """A validation/test input given as a folder: a `datasets` folder, or a folder holding one data file (as a KFP
    artifact may be)."""
    if is_hf_folder(folder):
        splits = hf_split_names(folder)
        if not splits:
            return Source((folder,))
        named = [s for s in splits if s.lower() in SPLIT_NAMES.get(role, ())] or (splits if len(splits) == 1 else [])
        if not named:
            raise InputError(f"{role} data {folder} is a DatasetDict with splits {splits}: none is a {role} split")
        return Source((folder,), named[0])
    files = _data_files(folder)
    if len(files) != 1:
        others = sorted(p.name for p in folder.iterdir())
        raise InputError(f"{role} folder {folder} must hold one data file ({', '.join(DATA_SUFFIXES)}) or a datasets "
                         f"folder; found {preview(others, 8)}")
    return _folder_source(files[0], role) if files[0].is_dir() else Source((files[0],))


def _role_files(folder: Path, role: str) -> Optional[Source]:
    matches = [p for p in _data_files(folder) if p.is_file() and _split_of(p.stem, role)]
    if not matches:
        return None
    if len({p.suffix.lower() for p in matches}) > 1:
        raise InputError(f"{folder} holds {role} data in several formats {preview([p.name for p in matches])}: "
                         f"keep one")
    return Source(tuple(matches))


def resolve_sources(train_data: str, validation_data: Optional[str] = None,
                    test_data: Optional[str] = None) -> dict[str, Optional[Source]]:
    """The source of each split. `train_data` may be a file, a `datasets` folder (a DatasetDict gives its train,
    validation/dev and test splits), or a folder holding train.* (and validation.*/dev.*, test.*; sharded and
    UD-style names such as en_ewt-ud-train.conllu too). Explicit validation/test data win."""
    given = {"validation": validation_data, "test": test_data}
    for role, value in {"train": train_data, **given}.items():
        if value and not Path(value).exists():
            raise InputError(f"{role} data not found: {value}")
    root = Path(train_data)
    sources: dict[str, Optional[Source]] = {"train": None, "validation": None, "test": None}
    if root.is_dir() and is_hf_folder(root) and hf_split_names(root):
        splits = hf_split_names(root)
        for role in sources:
            named = [s for s in splits if s.lower() in SPLIT_NAMES[role]]
            sources[role] = Source((root,), named[0]) if named else None
        if sources["train"] is None:
            raise InputError(f"train data {root} is a DatasetDict with splits {splits} and no train split")
    elif root.is_dir() and not is_hf_folder(root):
        for role in sources:
            sources[role] = _role_files(root, role)
        if sources["train"] is None:
            files = _data_files(root)
            if len(files) != 1:
                raise InputError(f"train data folder {root} has no train.* file and not exactly one data file "
                                 f"({', '.join(DATA_SUFFIXES)}, or a datasets folder); found "
                                 f"{preview(sorted(p.name for p in root.iterdir()), 8)}")
            sources = {"train": _folder_source(files[0], "train") if files[0].is_dir() else Source((files[0],)),
                       "validation": None, "test": None}
    else:
        sources["train"] = Source((root,))
    for role, value in given.items():
        if value:
            path = Path(value)
            sources[role] = _folder_source(path, role) if path.is_dir() else Source((path,))
    return sources


def _text_head(path: Path, size: int = 1 << 16) -> Optional[str]:
    """The first bytes of a file as text; None when they are not UTF-8."""
    with path.open("rb") as handle:
        head = handle.read(size)
    for cut in range(4):  # a multi-byte character may straddle the end of the sample
        try:
            return head[:len(head) - cut].decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError:
            continue
    return None


def _json_kind(path: Path) -> str:
    """jsonl when the first line is a whole JSON object, unless it is the file's only line and holds the records
    (a JSON object with an array of objects, written on one line)."""
    with _open_text(path) as handle:
        lines = (line for line in handle if line.strip())
        try:
            value = json.loads(next(lines))
        except json.JSONDecodeError:
            return "json"  # an object written over several lines
        alone = next(lines, None) is None
    holds_records = any(isinstance(v, list) and v and all(isinstance(x, dict) for x in v) for v in value.values())
    return "json" if alone and holds_records else "jsonl"


def _header_fields(line: str) -> tuple[str, list[str]]:
    delimiter = "\t" if "\t" in line else ("," if "," in line else (";" if ";" in line else "\t"))
    return delimiter, [f.strip().lower() for f in next(csv.reader([line], delimiter=delimiter))]


def detect_format(path: Path, options: ReadOptions = ReadOptions()) -> str:
    """The format of a file or folder, from its content (the suffix only settles .conllu and .csv)."""
    if path.is_dir():
        if is_hf_folder(path):
            return "hf"
        raise InputError(f"{path} is a folder but not a datasets save_to_disk folder (no {' or '.join(HF_MARKERS)})")
    with path.open("rb") as handle:
        magic = handle.read(6)
    if magic[:4] == b"PAR1":
        return "parquet"
    if magic == b"ARROW1" or magic[:4] == b"\xff\xff\xff\xff":
        return "hf"
    suffix = path.suffix.lower()
    head = _text_head(path)
    if suffix in (".conllu", ".conllup"):  # CoNLL-U, unless its first line declares columns without an ID
        first = next((line.strip() for line in (head or "").splitlines() if line.strip()), "")
        declared = declared_columns(first)
        return "conll" if declared is not None and "id" not in declared else "conllu"
    if head is None:
        raise InputError(f"{path} is neither UTF-8 text nor Parquet/Arrow: supported formats are "
                         f"{', '.join(FORMATS)}")
    lines = [line for line in head.splitlines() if line.strip()]
    if not lines:
        return "conll"
    first = lines[0].strip()
    if first.startswith("{"):
        return _json_kind(path)
    if first.startswith("["):
        return "json"
    declared = declared_columns(first)
    if declared is not None:
        return "conllu" if "id" in declared else "conll"
    token_lines = [line for line in lines[:50] if not (line.startswith("#") and "\t" not in line)]
    if token_lines:
        fields = token_lines[0].split("\t")
        if len(fields) == len(CONLLU_COLUMNS) and re.fullmatch(r"\d+(-\d+|\.\d+)?", fields[0]):
            return "conllu"
    delimiter, names = _header_fields(lines[0])
    wanted = {c.lower() for c in (options.token_column, options.tag_column) if c != AUTO}
    known = wanted | set(TOKEN_COLUMNS) | set(TAG_COLUMNS) | set(SENTENCE_COLUMNS)
    if suffix == ".csv" or (len(names) >= 2 and known & set(names)):
        return "tsv" if delimiter == "\t" else "csv"
    return "conll"


# --------------------------------------------------------------------------------------------------
# CoNLL and CoNLL-U
# --------------------------------------------------------------------------------------------------
_COLUMNS_HEADER = re.compile(r"#\s*(?:global\.)?columns\s*=(.*)", re.IGNORECASE)


def declared_columns(line: str) -> Optional[list[str]]:
    """The column names (lower case) a first line declares: CoNLL-U Plus `# global.columns = ID FORM ...` or
    `# columns = word pos chunk ner`; None for any other line."""
    match = _COLUMNS_HEADER.fullmatch(line.strip())
    return [c.lower() for c in match.group(1).split()] if match else None


def _conll_column(value: str, default: int, header: Optional[list[str]], name: str,
                  path: Path) -> tuple[int, Optional[str]]:
    """(column index, MISC key or None) of a CoNLL column: an index, or a name of the file's header line."""
    if value == AUTO:
        return default, None
    if header is not None:
        return _conllu_column(value, value, header, name, path)
    try:
        return int(value), None
    except ValueError:
        raise InputError(f"{name}={value!r}: CoNLL columns are picked by index (0 = first, -1 = last); names need a "
                         f"first line that names the columns, e.g. '# columns = word pos chunk ner'") from None


def _misc_value(cell: str, key: Optional[str]) -> str:
    """The cell itself, or the value of KEY=... in a MISC cell ("O" where absent)."""
    if key is None:
        return cell
    return dict(item.split("=", 1) for item in cell.split("|") if "=" in item).get(key, "O")


def read_conll(path: str | Path, token_column: str = AUTO, tag_column: str = AUTO) -> list[Sentence]:
    """Sentences of a CoNLL file: word columns split by tabs (or whitespace when a line has no tab), the token
    column (default the first) and the tag column (default the last) picked by index, or by name when the first line
    names the columns (`declared_columns`; every word line then has that many columns)."""
    path = Path(path)
    with _open_text(path) as handle:
        header = declared_columns(handle.readline())
    if header == []:
        raise InputError(f"{path} line 1 declares columns but names none: write e.g. '# columns = word pos chunk ner'")
    (token_at, _), (tag_at, misc_key) = (_conll_column(token_column, 0, header, "token_column", path),
                                         _conll_column(tag_column, -1, header, "tag_column", path))
    need = max(token_at + 1 if token_at >= 0 else -token_at, tag_at + 1 if tag_at >= 0 else -tag_at, 2)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    first_word: Optional[tuple[int, int]] = None  # (line, columns) of the first word line
    with _open_text(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if line_no == 1 and header is not None:
                continue
            if not line.strip() or line.lstrip().startswith("-DOCSTART-"):
                if tokens:
                    sentences.append((tokens, tags))
                tokens, tags = [], []
                continue
            parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
            if header is not None and len(parts) != len(header):
                raise InputError(f"{path} line {line_no} (sentence {len(sentences) + 1}): expected the {len(header)} "
                                 f"columns of line 1 ({' '.join(header)}), got {len(parts)}: {line[:SHOWN]!r}")
            if len(parts) < need or not parts[token_at] or not parts[tag_at]:
                raise InputError(f"{path} line {line_no} (sentence {len(sentences) + 1}): expected a word and its tag "
                                 f"in {need}+ columns separated by tabs or spaces (token column {token_at}, tag column "
                                 f"{tag_at}), got {line[:SHOWN]!r}")
            first_word = first_word or (line_no, len(parts))
            if len(parts) != first_word[1]:  # else the last column of a shorter line would be read as its tag
                raise InputError(f"{path} line {line_no} (sentence {len(sentences) + 1}) has {len(parts)} columns, "
                                 f"the first word line (line {first_word[0]}) {first_word[1]}: every word line needs "
                                 f"the same columns, got {line[:SHOWN]!r}")
            tokens.append(parts[token_at])
            tags.append(_misc_value(parts[tag_at], misc_key))
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def _conllu_column(value: str, default: str, columns: list[str], name: str, path: Path) -> tuple[int, Optional[str]]:
    """(column index, MISC key or None) of a CoNLL-U column given by name, index or misc:KEY."""
    value = default if value == AUTO else value
    key = None
    if value.lower().startswith("misc:"):
        value, key = "misc", value.split(":", 1)[1]
    if re.fullmatch(r"-?\d+", value):
        index = int(value)
        if not -len(columns) <= index < len(columns):
            raise InputError(f"{name}={value}: {path} has {len(columns)} columns")
        return index % len(columns), key
    if value.lower() not in columns:
        raise InputError(f"{name}={value!r} is not a column of {path}: one of {', '.join(columns)}, an index, or "
                         f"misc:KEY")
    return columns.index(value.lower()), key


def read_conllu(path: str | Path, token_column: str = AUTO, tag_column: str = AUTO) -> list[Sentence]:
    """Sentences of a CoNLL-U file: FORM and (by default) UPOS of each syntactic word."""
    path = Path(path)
    columns = list(CONLLU_COLUMNS)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    positions = None
    with _open_text(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if line.startswith("#"):
                declared = declared_columns(line) if line_no == 1 else None
                columns = declared or columns
                continue
            if positions is None:
                id_at = columns.index("id") if "id" in columns else 0
                token_at, _ = _conllu_column(token_column, "form", columns, "token_column", path)
                tag_at, misc_key = _conllu_column(tag_column, "upos", columns, "tag_column", path)
                positions = (id_at, token_at, tag_at, misc_key)
            if not line.strip():
                if tokens:
                    sentences.append((tokens, tags))
                tokens, tags = [], []
                continue
            parts = line.split("\t")
            if len(parts) != len(columns):
                raise InputError(f"{path} line {line_no}: expected {len(columns)} tab-separated CoNLL-U columns "
                                 f"({' '.join(c.upper() for c in columns)}), got {len(parts)}: {line[:SHOWN]!r}")
            id_at, token_at, tag_at, misc_key = positions
            word_id = parts[id_at]
            if re.fullmatch(r"\d+-\d+|\d+\.\d+", word_id):
                continue  # a multi-word token's range (its words follow) or an empty node
            if not re.fullmatch(r"\d+", word_id):
                raise InputError(f"{path} line {line_no}: the ID column must be a word index (1), a multi-word range "
                                 f"(1-2) or an empty node (1.1), got {word_id[:SHOWN]!r}")
            tokens.append(parts[token_at])
            tags.append(_misc_value(parts[tag_at], misc_key))
    if tokens:
        sentences.append((tokens, tags))
    return sentences


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            yield handle
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text: {err}") from None


# --------------------------------------------------------------------------------------------------
# Tables: JSON Lines, JSON, CSV/TSV, Parquet, datasets
# --------------------------------------------------------------------------------------------------
def _pick_column(columns: list[str], wanted: str, candidates: tuple[str, ...], what: str, source: str,
                 required: bool = True) -> Optional[str]:
    lower = {c.lower(): c for c in reversed(columns)}
    if wanted != AUTO:
        if wanted in columns or wanted.lower() in lower:
            return wanted if wanted in columns else lower[wanted.lower()]
        raise InputError(f"{source} has no {what} column {wanted!r} ({what}_column); columns present: "
                         f"{preview(columns, 12)}")
    found = next((lower[c] for c in candidates if c in lower), None)
    if found is None and required:
        raise InputError(f"{source}: no {what} column among {preview(columns, 12)}; name it with {what}_column "
                         f"(auto looks for {', '.join(candidates)})")
    return found


def _records_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    for line_no, row in iter_jsonl(path):
        yield f"{path} line {line_no}", row


def _records_json(path: Path) -> Iterator[tuple[str, dict]]:
    data = read_json(path)
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) != 1:
            raise InputError(f"{path}: expected a JSON array of objects, or an object holding one such array; found "
                             f"keys {preview(sorted(data), 8)}")
        data = data[lists[0]]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise InputError(f"{path} item {number}: expected a JSON object, got {type(row).__name__}")
        yield f"{path} item {number}", row


def _records_csv(path: Path, delimiter: str) -> tuple[list[str], list[tuple[str, dict]]]:
    limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # one sentence per row: a long document is one (large) cell
    try:
        with _open_text(path) as stream:
            reader = csv.DictReader(stream, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            if len(set(columns)) != len(columns):
                raise InputError(f"{path}: the header repeats a column name: {preview(columns, 12)}")
            return columns, [(f"{path} line {reader.line_num}", row) for row in reader]
    except csv.Error as err:
        raise InputError(f"{path} line {reader.line_num}: not valid {delimiter!r}-separated text ({err})") from None
    finally:
        csv.field_size_limit(limit)


def _as_list(value: Any, where: str, column: str, split_text: bool) -> list:
    """A list cell; CSV cells are text: a JSON or Python list, else words separated by whitespace."""
    if isinstance(value, str) and split_text:
        text = value.strip()
        if text.startswith("["):
            for parse in (json.loads, ast.literal_eval):
                try:
                    value = parse(text)
                    break
                except (ValueError, SyntaxError):
                    continue
            else:
                raise InputError(f"{where}: column {column!r} starts with '[' but is not a JSON or Python list: "
                                 f"{text[:SHOWN]!r}")
        else:
            value = text.split()
    if hasattr(value, "tolist"):  # numpy arrays from Arrow / pandas
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{where}: column {column!r} must hold a list (one sentence per row), got "
                         f"{type(value).__name__} {str(value)[:SHOWN]!r}; for one word per row name the column that "
                         f"numbers the sentences with sentence_column")
    return list(value)


def _tag_value(value: Any, where: str) -> Any:
    """A tag: a string, or an integer (label id); floats that are integers (pandas) count as integers."""
    if isinstance(value, bool) or value is None or (isinstance(value, float) and math.isnan(value)):
        raise InputError(f"{where}: missing or invalid tag {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (int, str)):
        return value
    raise InputError(f"{where}: a tag must be a string or an integer, got {type(value).__name__} "
                     f"{str(value)[:SHOWN]!r}")


def _token_value(value: Any, where: str) -> str:
    if value is None or isinstance(value, (list, dict)) or (isinstance(value, float) and math.isnan(value)):
        raise InputError(f"{where}: missing or invalid word {value!r}")
    return str(value)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str)
                                                                               and not value.strip())


def _table_sentences(columns: list[str], records: Iterable[tuple[str, dict]], options: ReadOptions, source: str,
                     text_cells: bool) -> tuple[list[tuple[list[str], list]], dict]:
    """Sentences of table records: one sentence per row (list cells) or one word per row grouped by the sentence
    column (an empty sentence cell continues the sentence above, as in exported spreadsheets)."""
    token_col = _pick_column(columns, options.token_column, TOKEN_COLUMNS, "token", source)
    tag_col = _pick_column(columns, options.tag_column, TAG_COLUMNS, "tag", source)
    if token_col == tag_col:
        raise InputError(f"{source}: the token and tag columns are both {token_col!r}; set token_column/tag_column")
    sentence_col = _pick_column(columns, options.sentence_column, SENTENCE_COLUMNS, "sentence", source,
                                required=False)
    sentences: list[tuple[list[str], list]] = []
    word_per_row = None
    current = None
    for where, row in records:
        missing = [c for c in (token_col, tag_col) if c not in row]
        if missing:
            raise InputError(f"{where}: missing column(s) {missing}; columns present: {preview(sorted(row), 12)}")
        token, tag = row[token_col], row[tag_col]
        if word_per_row is None:
            listy = isinstance(token, (list, tuple)) or hasattr(token, "tolist") or (
                text_cells and isinstance(token, str) and (token.strip().startswith("[") or len(token.split()) > 1))
            word_per_row = sentence_col is not None and not listy
        if word_per_row:
            key = row.get(sentence_col)
            if current is None and _empty(key):
                raise InputError(f"{where}: the first row has no sentence ({sentence_col!r} is empty)")
            if not _empty(key) and key != current:
                current = key
                sentences.append(([], []))
            sentences[-1][0].append(_token_value(token, where))
            sentences[-1][1].append(_tag_value(tag, where))
            continue
        tokens = [_token_value(t, where) for t in _as_list(token, where, token_col, text_cells)]
        tags = [_tag_value(t, where) for t in _as_list(tag, where, tag_col, text_cells)]
        if len(tokens) != len(tags):
            raise InputError(f"{where}: token and tag counts differ ({len(tokens)} tokens in {token_col!r}, "
                             f"{len(tags)} tags in {tag_col!r})")
        if tokens:
            sentences.append((tokens, tags))
    if not word_per_row and len(sentences) > 1 and all(len(t) == 1 for t, _ in sentences):
        raise InputError(f"{source}: every row holds one word; for one word per row name the column that numbers "
                         f"the sentences with sentence_column (columns present: {preview(columns, 12)})")
    used = {"token": token_col, "tag": tag_col}
    if word_per_row:
        used["sentence"] = sentence_col
    return sentences, used


@contextlib.contextmanager
def _quiet_datasets():
    """datasets' progress bars off for one read (restored after)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _load_dataset(path: Path, split: Optional[str], data_format: str):
    """A `datasets.Dataset` of a save_to_disk folder (a DatasetDict's `split`), an Arrow file or a Parquet file."""
    import datasets

    try:
        with _quiet_datasets():
            if path.is_dir():
                loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
                return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
            if data_format == "parquet":
                with tempfile.TemporaryDirectory() as cache:
                    return datasets.Dataset.from_parquet(str(path), cache_dir=cache, keep_in_memory=True)
            return datasets.Dataset.from_file(str(path), in_memory=True)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - pyarrow / datasets errors become one line naming the file
        kind = "Parquet file" if data_format == "parquet" else "datasets folder or Arrow file"
        raise InputError(f"{path}: not a readable {kind} ({type(err).__name__}: {str(err)[:200]})") from None


def _class_label_names(dataset, column: str) -> Optional[list[str]]:
    from datasets import ClassLabel

    feature = dataset.features.get(column)
    inner = getattr(feature, "feature", feature)
    return list(inner.names) if isinstance(inner, ClassLabel) else None


def _dataset_records(dataset, path: Path) -> Iterator[tuple[str, dict]]:
    columns = dataset.to_dict()
    names = list(columns)
    for number, values in enumerate(zip(*columns.values()), start=1):
        yield f"{path} row {number}", dict(zip(names, values))


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def _name_tags(sentences: list[tuple[list[str], list]], names: Optional[list[str]], source: str) -> list[Sentence]:
    """Tags as strings: ClassLabel ids become their names."""
    out = []
    for number, (tokens, tags) in enumerate(sentences, start=1):
        if names is not None:
            bad = [t for t in tags if not (isinstance(t, int) and 0 <= t < len(names))]
            if bad:
                raise InputError(f"{source} sentence {number}: tag(s) {preview(bad, 3)} are not ids of the ClassLabel "
                                 f"names {preview(names)}")
            tags = [names[t] for t in tags]
        out.append((tokens, [str(t) for t in tags]))
    return out


def read_file(path: Path, options: ReadOptions = ReadOptions(), split: Optional[str] = None) -> Corpus:
    """One file (or datasets folder) as a Corpus."""
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path} is empty")
    data_format = options.data_format if options.data_format != AUTO else detect_format(path, options)
    if data_format not in FORMATS:
        raise InputError(f"unknown data_format {data_format!r}: one of {', '.join(FORMATS)} or auto")
    if path.is_dir() and data_format != "hf":
        raise InputError(f"{path} is a folder: data_format={data_format} reads a file")
    if data_format in ("conll", "conllu"):
        reader, defaults = (read_conll, ("0", "-1")) if data_format == "conll" else (read_conllu, ("form", "upos"))
        columns = [value if value != AUTO else default
                   for value, default in zip((options.token_column, options.tag_column), defaults)]
        return Corpus(reader(path, *columns), data_format, {"token": columns[0], "tag": columns[1]})
    names = None
    source = str(path) + (f" [{split}]" if split else "")
    if data_format in ("jsonl", "json"):
        records = list((_records_jsonl if data_format == "jsonl" else _records_json)(path))
        columns = sorted({c for _, row in records for c in row})
        raw, used = _table_sentences(columns, records, options, source, text_cells=False)
    elif data_format in ("csv", "tsv"):
        columns, records = _records_csv(path, "\t" if data_format == "tsv" else ",")
        raw, used = _table_sentences(columns, records, options, source, text_cells=True)
    else:
        dataset = _load_dataset(path, split, data_format)
        raw, used = _table_sentences(list(dataset.column_names), _dataset_records(dataset, path), options, source,
                                     text_cells=False)
        names = _class_label_names(dataset, used["tag"])
    return Corpus(_name_tags(raw, names, source), data_format, used, names)


def read(source: Source, role: str, options: ReadOptions = ReadOptions()) -> Corpus:
    """Every file of a split's source, as one Corpus; InputError when it holds no sentence."""
    parts = [read_file(path, options, source.split) for path in source.paths]
    corpus = parts[0]
    for part in parts[1:]:
        if part.label_names != corpus.label_names:
            raise InputError(f"{role} data {source}: the shards declare different ClassLabel names")
        corpus.sentences += part.sentences
    if not corpus.sentences:
        raise InputError(f"{role} data {source} holds no sentences")
    return corpus

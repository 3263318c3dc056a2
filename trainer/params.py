"""Typed parameter surfaces: one dataclass per program is the single source of its CLI, Python API and KFP component.

A surface is a `@dataclass(kw_only=True)` subclass of `Params` whose fields are declared with `param(...)`
(a value: bool, int, float or str, with help, choices, range, group) or `path(...)` (a folder or file: an
artifact in KFP, a path on the command line). From the fields:

- `Params.__post_init__` coerces every value (the spec's "true"/"false" strings become booleans, "5" becomes
  5), checks choices and ranges, then runs the class's own `validate()`: a bad value is a ConfigError
  naming the parameter, raised before anything is created or loaded.
- `cli_parser()` / `from_cli()` build the command line (`--name` and `--name-with-dashes`, `--config FILE.json`).
- `components/codegen.py` renders the KFP component signature and docstring, and the pipelines take their
  pass-through parameters from the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

from trainer.booleans import bool_text, parse_bool
from trainer.errors import ConfigError

SCALARS = {"bool": bool, "int": int, "float": float, "str": str}


def param(default: Any, help: str, *, choices: Optional[tuple] = None, group: str = "options", spec: bool = False,
          minimum: Optional[float] = None, maximum: Optional[float] = None, above: Optional[float] = None,
          below: Optional[float] = None) -> Any:
    """A value field. `minimum`/`maximum` are inclusive bounds, `above`/`below` exclusive; `spec` marks the
    parameters of the reference spec (their names and defaults are a contract)."""
    return field(default=default, metadata={
        "help": help, "choices": choices, "group": group, "spec": spec,
        "range": {k: v for k, v in (("minimum", minimum), ("maximum", maximum), ("above", above), ("below", below))
                  if v is not None}})


def path(help: str, *, output: bool = False, artifact: str = "Dataset", optional: bool = False, group: str = "io",
         spec: bool = True) -> Any:
    """A folder or file field: a KFP input (or output) artifact of type `artifact`, a path on the command line."""
    metadata = {"help": help, "group": group, "spec": spec, "artifact": artifact, "output": output,
                "choices": None, "range": {}}
    return field(default=None, metadata=metadata) if optional else field(metadata=metadata)


def is_path(f: dataclasses.Field) -> bool:
    return "artifact" in f.metadata


def base_type(f: dataclasses.Field) -> type:
    """The scalar type of a field, with Optional[...] unwrapped (string annotations or real types)."""
    kind = f.type
    if isinstance(kind, str):
        kind = SCALARS.get(kind.replace("Optional[", "").rstrip("]").strip(), kind)
    else:
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    if kind not in SCALARS.values():
        raise TypeError(f"field {f.name}: unsupported type {f.type!r} (use bool, int, float, str)")
    return kind


def is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def default_text(f: dataclasses.Field) -> Any:
    """A field's default as the spec writes it: booleans as "true"/"false", None for no default."""
    if is_required(f) or f.default is None:
        return None
    return bool_text(f.default) if base_type(f) is bool else f.default


def range_text(f: dataclasses.Field) -> str:
    bounds = f.metadata.get("range") or {}
    words = {"minimum": ">=", "maximum": "<=", "above": ">", "below": "<"}
    return " and ".join(f"{words[k]} {_number(v)}" for k, v in bounds.items())


def describe(f: dataclasses.Field, note_extensions: bool = False) -> str:
    """The field's help, with its choices or range: the text of its CLI help and KFP docstring entry.
    `note_extensions` marks the value fields that are not in the reference spec (for spec surfaces)."""
    text = f.metadata["help"]
    if f.metadata.get("choices"):
        text += f" One of {', '.join(str(c) for c in f.metadata['choices'])}."
    elif base_type(f) is bool and not is_path(f):
        text += " One of true, false."
    if range_text(f):
        text += f" Must be {range_text(f)}."
    if note_extensions and not f.metadata.get("spec", False) and not is_path(f):
        text += " (Extension, not in the reference spec.)"
    return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """A raw value (CLI string, JSON value, KFP parameter) as the field's type; ConfigError if it cannot be."""
    if value is None:
        if is_required(f):
            raise ConfigError(f"{f.name} is required")
        return None
    if is_path(f):
        text = str(value)
        if not text.strip():
            if is_required(f):
                raise ConfigError(f"{f.name} is required (got an empty path)")
            return None
        return text
    kind = base_type(f)
    if kind is bool:
        return parse_bool(value, f.name)
    if kind is str:
        if isinstance(value, (list, dict)):
            raise ConfigError(f"{f.name}={value!r} is not a string")
        value = bool_text(value)  # a real boolean given for a "true"/"false"/"auto" string stays the spec's word
        return None if (value == "" and f.default is None) else value
    if isinstance(value, bool):
        raise ConfigError(f"{f.name}={value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{f.name}={value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{f.name}={value!r} is not finite")
    if kind is int:
        if number != int(number):
            raise ConfigError(f"{f.name}={value!r} is not an integer")
        return int(number)
    return number


def check_range(f: dataclasses.Field, value: Any) -> None:
    bounds = f.metadata.get("range") or {}
    if value is None or not bounds:
        return
    ok = all((k != "minimum" or value >= v) and (k != "maximum" or value <= v) and (k != "above" or value > v)
             and (k != "below" or value < v) for k, v in bounds.items())
    if not ok:
        raise ConfigError(f"{f.name} must be {range_text(f)}, got {value}")


class Params:
    """Base of the typed surfaces (see the module docstring). Subclasses are `@dataclass(kw_only=True)`."""

    GROUPS: ClassVar[dict[str, str]] = {}  # group key -> CLI section title, in display order
    INPUT_VALUES: ClassVar[tuple[str, ...]] = ()  # value fields that may name a local input path (not artifacts)
    SPEC: ClassVar[bool] = False  # True: the fields marked spec=True follow the reference spec (others are noted)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # types first: a value that is not even of its type is named first
            setattr(self, f.name, coerce(f, getattr(self, f.name)))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is not one of {list(choices)}")
            check_range(f, value)
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields; raise ConfigError."""

    # --- Conversions --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            hints = [f"{name!r} -> {close[0]!r}" for name in unknown
                     if (close := difflib.get_close_matches(name, known, n=1))]
            raise ConfigError(f"unknown parameter(s): {unknown}" + (f" (did you mean {', '.join(hints)}?)"
                                                                    if hints else ""))
        missing = [f.name for f in dataclasses.fields(cls) if is_required(f) and values.get(f.name) in (None, "")]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
        return cls(**values)

    @classmethod
    def spec_fields(cls) -> list[dataclasses.Field]:
        """The fields the reference spec defines (their names and defaults are a contract)."""
        return [f for f in dataclasses.fields(cls) if cls.SPEC and f.metadata.get("spec")]

    @classmethod
    def describe(cls, f: dataclasses.Field) -> str:
        return describe(f, cls.SPEC)

    @classmethod
    def parameter_fields(cls) -> list[dataclasses.Field]:
        """The value fields (KFP parameters), in declaration order."""
        return [f for f in dataclasses.fields(cls) if not is_path(f)]

    @classmethod
    def path_fields(cls) -> list[dataclasses.Field]:
        """The folder/file fields (KFP artifacts), in declaration order."""
        return [f for f in dataclasses.fields(cls) if is_path(f)]

    # --- Command line -------------------------------------------------------------------------------
    @classmethod
    def cli_parser(cls, prog: str, description: str = "") -> argparse.ArgumentParser:
        required = " ".join(f"--{f.name} {'PATH' if is_path(f) else 'VALUE'}" for f in dataclasses.fields(cls)
                            if is_required(f))
        parser = OneLineErrorParser(prog=prog, description=description,
                                    usage=f"%(prog)s {required} [options] [--config FILE.json]")
        parser.add_argument("--config", help="JSON file of parameters (flags override it)")
        groups: dict[str, Any] = {}
        for key, title in cls.GROUPS.items():
            groups[key] = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            group = f.metadata.get("group", "options")
            if group not in groups:
                groups[group] = parser.add_argument_group(group)
            flags = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
            default = default_text(f)
            shown = default not in (None, "")
            suffix = " (required)" if is_required(f) else (f" (default: {default})" if shown else "")
            metavar = "PATH" if is_path(f) else ({bool: "{true,false}", int: "N", float: "X", str: "TEXT"}[base_type(f)]
                                                 if not f.metadata.get("choices") else None)
            groups[group].add_argument(*flags, dest=f.name, default=None,
                                       help=(describe(f, cls.SPEC) + suffix).replace("%", "%%"),  # argparse formats
                                       choices=f.metadata.get("choices"), metavar=metavar)
        return parser

    @classmethod
    def from_cli(cls, argv: Optional[Sequence[str]] = None, prog: str = "", description: str = ""):
        args = vars(cls.cli_parser(prog or cls.__name__, description).parse_args(argv))
        values: dict[str, Any] = {}
        config_file = args.pop("config")
        if config_file:
            try:
                with open(config_file, encoding="utf-8") as handle:
                    loaded = json.load(handle)
            except OSError as err:
                raise ConfigError(f"--config {config_file}: {err.strerror}") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ConfigError(f"--config {config_file} is not valid JSON: {err}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"--config {config_file} must hold a JSON object of parameters")
            values.update(loaded)
        values.update({k: v for k, v in args.items() if v is not None})
        return cls.from_dict(values)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def surface(cls):
    """Class decorator: `@dataclass(kw_only=True)` for a Params subclass."""
    return dataclass(kw_only=True)(cls)

"""Booleans as the reference spec passes them: the strings "true" / "false" (any case), or real booleans."""

from __future__ import annotations

from typing import Any, Optional

from trainer.errors import ConfigError

AUTO = "auto"


def parse_bool(value: Any, name: str = "value") -> bool:
    """True/False from a bool or the spec's "true"/"false"; anything else is a ConfigError naming `name`."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    raise ConfigError(f"{name}={value!r} is not one of ['true', 'false']")


def parse_auto_bool(value: Any, name: str = "value") -> Optional[bool]:
    """Like parse_bool, plus "auto" (or None / "") for "decide from the data": returns None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO)):
        return None
    try:
        return parse_bool(value, name)
    except ConfigError:
        raise ConfigError(f"{name}={value!r} is not one of ['true', 'false', 'auto']") from None


def bool_text(value: Any) -> str:
    """The spec's string for a boolean ("true"/"false"); other values as str()."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

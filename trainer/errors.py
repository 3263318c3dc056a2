"""The two kinds of user error: both end a command with exit code 2 and one line, before any work starts."""


class ConfigError(ValueError):
    """A parameter value that can never work."""


class InputError(ValueError):
    """An input folder or file that does not satisfy its contract."""


class TransferError(ConnectionError):
    """A download that failed part-way (connection lost, read timed out, the store failed): a run failure (exit 1,
    one line: `trainer.failures`), not bad input."""


def preview(values, limit: int = 5, width: int = 60) -> str:
    """A bounded, one-line view of many values for an error message: the first few, then how many more."""
    values = list(values)
    shown = ", ".join(repr(v if len(str(v)) <= width else f"{str(v)[:width]}...") for v in values[:limit])
    more = len(values) - limit
    return f"[{shown}{f', ... {more} more' if more > 0 else ''}]"

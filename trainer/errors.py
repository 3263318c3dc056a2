"""The two kinds of user error: both end a command with exit code 2 and one line, before any work starts."""


class ConfigError(ValueError):
    """A parameter value that can never work."""


class InputError(ValueError):
    """An input folder or file that does not satisfy its contract."""
